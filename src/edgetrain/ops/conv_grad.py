"""Gradients of Conv and ConvTranspose: one fused backward op each (ConvGrad, ConvTransposeGrad).

Conv, y = conv(x, w) + b, same strategy as the forward:
* dB: dy summed over the batch and the spatial axes.
* dX: the adjoint of conv in x, which is ConvTranspose of dy with the same w: a transposed GEMM
  to columns, col2im by adding each tap's columns into a strided slice, a crop to the input.
  Depthwise: no columns (ops/_depthwise.py).
* dW: dy @ im2col(x)^T per group, one GEMM per chunk of images (batch and pixels contracted
  together); 1x1: the (strided) input is the column matrix; depthwise: one einsum of dy with the
  windows of channels-last blocks of the input, no columns.
ConvTranspose is conv's adjoint in x: its dX is a conv of dy (with w), and its dW is conv's dW
with the roles of x and dy swapped.

What the backward keeps for training: dY and W always (W is a parameter or kept anyway); X only
when dW is needed, otherwise just X's shape (a Shape node, folded while planning).
Only the gradients asked for are computed: the backward node's other outputs are "" and its
``need`` attribute (three 0/1 flags for dX, dW, dB) tells the kernel.
float16 is computed in float32, like the forward.
"""
from __future__ import annotations

import math

import numpy as np

from . import _depthwise as D
from . import _window as W
from . import conv as C
from .registry import ET_DOMAIN, OpContext, TensorType, gradient, planned, register
from .rules import constant


def emit_grad(g, op_type: str, inputs, need, **attrs) -> list:
    """A backward node with one output per flag in ``need``; unneeded outputs are left ""."""
    outs = g.et(op_type, inputs, len(need), need=[int(bool(k)) for k in need], **attrs)
    g.nodes[-1].outputs = [o if k else "" for o, k in zip(outs, need)]
    return [o if k else None for o, k in zip(outs, need)]


def _conv_like_grad(g, node, dys):
    if dys[0] is None:
        return [None] * len(node.inputs)
    x, w = node.inputs[:2]
    need = [g.needs(node, i) for i in range(3)]
    if not any(need):
        return [None] * len(node.inputs)
    # X is read (kept) only for dW; dX needs its shape alone
    inputs = [dys[0], x, w] if need[1] else [dys[0], "", w, g.op("Shape", [x])]
    return emit_grad(g, node.op_type + "Grad", inputs, need, **node.attrs)[:len(node.inputs)]


gradient("Conv")(_conv_like_grad)
gradient("ConvTranspose")(_conv_like_grad)


def _x_shape(x, x_shape) -> tuple[int, ...]:
    return tuple(x.shape) if x is not None else tuple(int(v) for v in np.asarray(x_shape))


def _grad_infer(ctx: OpContext, dy: TensorType, x: TensorType | None, w: TensorType,
                x_shape: TensorType | None = None):
    if x is not None:
        xs = x.shape
    else:
        xs = tuple(int(v) for v in np.asarray(constant(ctx, x_shape, "X_shape")).reshape(-1))
    m = w.shape[0] if ctx.op_type == "ConvGrad" else w.shape[1] * int(ctx.attr("group", 1))
    return [TensorType(dy.dtype, xs), TensorType(dy.dtype, w.shape), TensorType(dy.dtype, (m,))]


# --- shared kernels ----------------------------------------------------------------------------

SHORT_PLANE = 32  # 1x1 dX: shorter planes make a poor GEMM per image (the images go together)
LONG_PLANE = 100  # 1x1 dW: output planes at least this long make a good GEMM per image


def conv_dx(dy: np.ndarray, w: np.ndarray, win: W.Window, group: int,
            out: np.ndarray | None = None) -> np.ndarray:
    """dy (N, M, *out), w (M, C/group, *k) -> dx (N, C, *in): the adjoint of conv_nd in x.
    Written into ``out`` (contiguous, that shape and dtype) when given, except in the general
    case (a ConvTranspose), whose result the caller copies."""
    c = w.shape[1] * group
    if w.shape[1] == 1 and group == c and win.n_taps > 1:
        return D.grad_x(dy, w, win, c, C.BLOCK_BUDGET, out)
    if win.n_taps == 1 and win.trivial_padding and all(s == 1 for s in win.strides):
        n, m, cg = dy.shape[0], w.shape[0], w.shape[1]  # 1x1, stride 1: dx = W^T dy per image
        p = math.prod(win.out)
        shape = (n, group, cg, p)
        dx = np.empty(shape, dtype=dy.dtype) if out is None else out.reshape(shape)
        wt = w.reshape(group, m // group, cg).transpose(0, 2, 1)
        dyg = dy.reshape(n, group, m // group, p)
        if p >= SHORT_PLANE or n == 1:
            np.matmul(wt, dyg, out=dx)
        else:  # tiny planes: the images side by side, one GEMM per chunk of images
            for b0, b1 in C._chunks(n, (m + cg) * p * dy.dtype.itemsize, C.COLS_BUDGET):
                dyt = np.ascontiguousarray(dyg[b0:b1].transpose(1, 2, 0, 3))
                dxt = np.matmul(wt, dyt.reshape(group, m // group, (b1 - b0) * p))
                dx[b0:b1] = dxt.reshape(group, cg, b1 - b0, p).transpose(2, 0, 1, 3)
        return dx.reshape((n, c) + win.in_shape)
    return C.conv_transpose_nd(dy, w, None, group, win.strides, win.dilations, win.pads_begin,
                               win.in_shape)


def conv_dw(x: np.ndarray, dy: np.ndarray, win: W.Window, group: int,
            w_shape: tuple[int, ...]) -> np.ndarray:
    """x (N, C, *in), dy (N, M, *out) -> dw (M, C/group, *k)."""
    n, c = x.shape[:2]
    m, cg = w_shape[:2]
    mg, nd = m // group, win.ndim
    k, p = win.n_taps, math.prod(win.out)
    if cg == 1 and group == c and k > 1:
        return D.grad_w(x, dy, win, C.BLOCK_BUDGET)
    if k == 1 and p >= LONG_PLANE:  # 1x1, long planes: one GEMM per image, summed in place
        xp = W.pad_input(x, win, 0)
        xs = xp[W.tap_slices(win, (0,) * nd)].reshape(n, group, cg, p)
        dyg = dy.reshape(n, group, mg, p)
        dw, part = np.zeros((group, mg, cg), dtype=dy.dtype), np.empty((group, mg, cg), dy.dtype)
        for i in range(n):
            dw += np.matmul(dyg[i], xs[i].transpose(0, 2, 1), out=part)
        return dw.reshape(w_shape)
    # otherwise (1x1 too): the images' columns side by side, one GEMM per chunk of images
    perm = (1, 2) + tuple(range(3, 3 + nd)) + (0,) + tuple(range(3 + nd, 3 + 2 * nd))
    dw = np.zeros((group, mg, cg * k), dtype=dy.dtype)
    for b0, b1 in C._chunks(n, c * k * p * dy.dtype.itemsize, C.COLS_BUDGET):
        nb = b1 - b0                                                 # columns: (g, Cg*K, n'P)
        cols = W.im2col_view(W.pad_input(x[b0:b1], win, 0), win)    # a chunk, padded: a view
        v = cols.reshape((nb, group, cg) + win.kernel + win.out)
        colst = np.ascontiguousarray(v.transpose(perm)).reshape(group, cg * k, nb * p)
        dyc = np.ascontiguousarray(dy[b0:b1].reshape(nb, group, mg, p).transpose(1, 2, 0, 3))
        dw += np.matmul(dyc.reshape(group, mg, nb * p), colst.transpose(0, 2, 1))
    return dw.reshape(w_shape)


def _bias_grad(dy: np.ndarray) -> np.ndarray:
    return dy.sum(axis=(0,) + tuple(range(2, dy.ndim)))


def _results(dtype, *grads):
    return tuple(None if a is None else np.asarray(a).astype(dtype, copy=False) for a in grads)


# --- ConvGrad ----------------------------------------------------------------------------------

@register("ConvGrad", versions=(1,), infer=_grad_infer, domain=ET_DOMAIN)
def conv_grad(ctx, dy, x, w, x_shape=None):
    # dy (N, M, *out), x (N, C, *in) or absent, w (M, C/g, *k), x_shape (rank,) when x is absent
    # -> dx (N, C, *in), dw (M, C/g, *k), db (M,); unneeded ones are None
    xs = _x_shape(x, x_shape)
    need_x, need_w, need_b = ctx.attr("need", (1, 1, 1))
    win = C._conv_window(ctx, xs, w.shape)
    group = int(ctx.attr("group", 1))
    dt = C._compute_dtype(dy.dtype)
    dyc, wc = dy.astype(dt, copy=False), w.astype(dt, copy=False)
    out = planned(ctx)
    out = out if out is not None and out.dtype == dt else None
    dx = conv_dx(dyc, wc, win, group, out) if need_x else None
    dw = conv_dw(x.astype(dt, copy=False), dyc, win, group, w.shape) if need_w else None
    return _results(dy.dtype, dx, dw, _bias_grad(dyc) if need_b else None)


# --- ConvTransposeGrad -------------------------------------------------------------------------

@register("ConvTransposeGrad", versions=(1,), infer=_grad_infer, domain=ET_DOMAIN)
def conv_transpose_grad(ctx, dy, x, w, x_shape=None):
    # dy (N, M, *out), x (N, C, *in) or absent, w (C, M/g, *k), x_shape (rank,) when x is absent
    # -> dx (N, C, *in), dw (C, M/g, *k), db (M,); unneeded ones are None
    xs = _x_shape(x, x_shape)
    need_x, need_w, need_b = ctx.attr("need", (1, 1, 1))
    s, d, begin, out = C._convt_geometry(ctx, xs, w.shape)
    group = int(ctx.attr("group", 1))
    ins, ks = xs[2:], w.shape[2:]
    # the conv that is ConvTranspose's adjoint reads dy shifted by begin (dyp[p] = dy[p - begin])
    # in a buffer that every window reaches, and gives one output per ConvTranspose input pixel
    reach = tuple((i - 1) * st + (k - 1) * dl + 1 for i, st, k, dl in zip(ins, s, ks, d))
    win = W.Window(reach, tuple(ks), tuple(s), tuple(d), (0,) * len(ks), (0,) * len(ks),
                   tuple(ins))
    dt = C._compute_dtype(dy.dtype)
    dyc = dy.astype(dt, copy=False)
    dyp = W.place(dyc, begin, reach)
    dx = C.conv_nd(dyp, w.astype(dt, copy=False), None, win, group) if need_x else None
    dw = conv_dw(dyp, x.astype(dt, copy=False), win, group, w.shape) if need_w else None
    return _results(dy.dtype, dx, dw, _bias_grad(dyc) if need_b else None)
