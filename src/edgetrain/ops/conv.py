"""Convolutions: Conv and ConvTranspose (1-D, 2-D, 3-D; groups, depthwise, dilations, padding).

Kernel strategy:
* 1x1 kernels: a (strided) subsample and one batched matmul.
* depthwise (group == C_in, one input channel per group): no im2col; channels-last blocks and
  one einsum over the taps, or flat rows per (image, channel) (ops/_depthwise.py).
* otherwise: im2col (a window view copied once into (N, group, C/group * taps, pixels)) and one
  batched GEMM over (batch, group).
* ConvTranspose is the adjoint: a GEMM to columns (N, M, *taps, *in), then col2im by adding each
  tap's columns into a strided slice of the output, then a crop.
float16 is computed in float32 (numpy has no float16 GEMM) and rounded once at the end.
"""
from __future__ import annotations

import math

import numpy as np

from . import _depthwise as D
from . import _window as W
from .registry import OpContext, TensorType, planned, register
from .rules import shape_error

VERSIONS = (1, 11, 22)


def _compute_dtype(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def _check_common(ctx: OpContext, x: TensorType, w: TensorType, b: TensorType | None,
                  transpose: bool) -> tuple[int, int]:
    """Validate ranks/channels; returns (group, output channels)."""
    if x.rank < 3 or w.rank != x.rank:
        raise shape_error(ctx, "X must be (N, C, *spatial) and W of the same rank (at least 3)",
                          x, w)
    group = int(ctx.attr("group", 1))
    if group < 1:
        raise ctx.error(f"group={group} must be positive")
    c = x.shape[1]
    if transpose:
        if w.shape[0] != c or c % group:
            raise shape_error(ctx, f"W must be (C, M/group, *kernel) with C divisible by "
                              f"group={group}", x, w)
        m = w.shape[1] * group
    else:
        if w.shape[1] * group != c or w.shape[0] % group:
            raise shape_error(ctx, f"W must be (M, C/group, *kernel) with M divisible by "
                              f"group={group}", x, w)
        m = w.shape[0]
    ks = ctx.attr("kernel_shape")
    if ks is not None and len(ks) and tuple(int(k) for k in ks) != w.shape[2:]:
        raise shape_error(ctx, f"kernel_shape={list(ks)} does not match the weights", x, w)
    if b is not None and b.shape != (m,):
        raise shape_error(ctx, f"bias B must have shape ({m},)", x, w, b)
    return group, m


# --- Conv --------------------------------------------------------------------------------------

def _conv_window(ctx: OpContext, x_shape, w_shape) -> W.Window:
    key = ("conv", tuple(x_shape), tuple(w_shape))
    win = ctx.extra.get(key)
    if win is None:
        win = ctx.extra[key] = W.window(ctx, x_shape[2:], w_shape[2:])
    return win


def _conv_infer(ctx: OpContext, x: TensorType, w: TensorType, b: TensorType | None = None):
    _, m = _check_common(ctx, x, w, b, transpose=False)
    win = _conv_window(ctx, x.shape, w.shape)
    if any(o < 1 for o in win.out):
        raise shape_error(ctx, f"the output would have spatial shape {list(win.out)}: kernel "
                          "(with dilations) larger than the padded input", x, w)
    return [TensorType(x.dtype, (x.shape[0], m) + win.out)]


def _add_bias(y: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    if b is not None:
        y += b.astype(y.dtype, copy=False).reshape((-1,) + (1,) * (y.ndim - 2))
    return y


COLS_BUDGET = 1 << 22   # bytes of im2col columns built at once (images are done in chunks):
# outside the planned arena, so small (64 MiB here made MobileNetV2-224's step 100 MB over plan)
BLOCK_BUDGET = 1 << 20  # bytes of scratch per block of the depthwise kernels (stays in cache)


def _chunks(n: int, item_bytes: int, budget: int):
    step = max(1, budget // max(item_bytes, 1))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def conv_nd(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, win: W.Window,
            group: int, out: np.ndarray | None = None) -> np.ndarray:
    """x (N, C, *in), w (M, C/group, *k), b (M,) -> (N, M, *out), in x's (compute) dtype;
    written into ``out`` (contiguous, that shape and dtype) when given."""
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    p = math.prod(win.out)
    if cg == 1 and group == c and win.n_taps > 1:  # depthwise: no im2col
        return _add_bias(D.forward(x, w, win, BLOCK_BUDGET, out), b)
    wg = w.reshape(group, m // group, cg * win.n_taps)
    shape = (n, group, m // group, p)
    y = np.empty(shape, dtype=x.dtype) if out is None else out.reshape(shape)
    item = c * win.n_taps * p * x.dtype.itemsize
    for b0, b1 in _chunks(n, item, COLS_BUDGET):   # one batched GEMM per chunk of images
        xp = W.pad_input(x[b0:b1], win, 0)          # padded a chunk at a time, not the batch
        if win.n_taps == 1:  # 1x1: the (strided) input is the column matrix
            cols = xp[W.tap_slices(win, (0,) * win.ndim)]
        else:
            cols = W.im2col_view(xp, win)                            # (n', C, *k, *out) view
        np.matmul(wg, cols.reshape(b1 - b0, group, cg * win.n_taps, p), out=y[b0:b1])
    return _add_bias(y.reshape((n, m) + win.out), b)


@register("Conv", versions=VERSIONS, infer=_conv_infer)
def conv(ctx, x, w, b=None):  # x (N, C, *in), w (M, C/g, *k), b (M,) -> (N, M, *out)
    win = _conv_window(ctx, x.shape, w.shape)
    dt = _compute_dtype(x.dtype)
    out = planned(ctx)
    y = conv_nd(x.astype(dt, copy=False), w.astype(dt, copy=False), b, win,
                int(ctx.attr("group", 1)), out if out is not None and out.dtype == dt else None)
    return y.astype(x.dtype, copy=False)


# --- ConvTranspose -----------------------------------------------------------------------------

def _convt_geometry(ctx: OpContext, x_shape, w_shape):
    """(strides, dilations, pads_begin, out) for ConvTranspose; pads_begin may be negative."""
    key = ("convt", tuple(x_shape), tuple(w_shape))
    if key in ctx.extra:
        return ctx.extra[key]
    nd = len(x_shape) - 2
    ins, ks = x_shape[2:], w_shape[2:]
    s = W.int_list(ctx, "strides", nd, 1)
    d = W.int_list(ctx, "dilations", nd, 1)
    if any(v < 1 for v in s + d):
        raise ctx.error(f"strides {list(s)} and dilations {list(d)} must be positive")
    op = W.int_list(ctx, "output_padding", nd, 0)
    full = [st * (i - 1) + o + (k - 1) * dl + 1 for st, i, o, k, dl in zip(s, ins, op, ks, d)]
    mode = W.auto_pad(ctx)
    out_shape = ctx.attr("output_shape")
    if out_shape is not None and len(out_shape):
        out = [int(v) for v in out_shape][-nd:]
        if len(out) != nd:
            raise ctx.error(f"output_shape={list(out_shape)} needs {nd} spatial sizes")
    elif mode in ("SAME_UPPER", "SAME_LOWER"):
        out = [i * st for i, st in zip(ins, s)]
    else:
        out = None
    if out is not None:  # pads follow from the wanted output size
        begin = [W.same_split("SAME_UPPER" if mode == "SAME_UPPER" else "SAME_LOWER",
                              f - o)[0] for f, o in zip(full, out)]
    elif mode == "VALID":
        begin, out = [0] * nd, full
    else:
        pb, pe = W.explicit_pads(ctx, nd)
        begin, out = list(pb), [f - a - e for f, a, e in zip(full, pb, pe)]
    geo = (s, d, tuple(begin), tuple(out))
    ctx.extra[key] = geo
    return geo


def _convt_infer(ctx: OpContext, x: TensorType, w: TensorType, b: TensorType | None = None):
    _, m = _check_common(ctx, x, w, b, transpose=True)
    out = _convt_geometry(ctx, x.shape, w.shape)[3]
    if any(o < 1 for o in out):
        raise shape_error(ctx, f"the output would have spatial shape {list(out)}", x, w)
    return [TensorType(x.dtype, (x.shape[0], m) + out)]


def conv_transpose_nd(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, group: int,
                      strides, dilations, begin, out) -> np.ndarray:
    """x (N, C, *in), w (C, M/group, *k), b (M,) -> (N, M, *out)."""
    n, c = x.shape[:2]
    mg = w.shape[1]
    m, ins, ks = mg * group, x.shape[2:], w.shape[2:]
    ntaps, p = math.prod(ks), math.prod(ins)
    cg = c // group
    wt = w.reshape(group, cg, mg * ntaps).transpose(0, 2, 1)       # (g, Mg*K, Cg)
    xg = x.reshape(n, group, cg, p)
    # the buffer covers both the full transposed output and the requested crop
    lo = [min(0, bg) for bg in begin]
    full = [st * (i - 1) + (k - 1) * dl + 1 for st, i, k, dl in zip(strides, ins, ks, dilations)]
    hi = [max(f, bg + o) for f, bg, o in zip(full, begin, out)]
    buf = np.zeros((n, m) + tuple(h - l for h, l in zip(hi, lo)), dtype=x.dtype)
    taps = [(tap, tuple(slice(t * dl - l, t * dl - l + (i - 1) * st + 1, st)
                        for t, dl, l, i, st in zip(tap, dilations, lo, ins, strides)))
            for tap in np.ndindex(*ks)]
    for b0, b1 in _chunks(n, m * ntaps * p * x.dtype.itemsize, COLS_BUDGET):
        cols = np.matmul(wt, xg[b0:b1])                             # (n', g, Mg*K, P)
        cols = cols.reshape((b1 - b0, m) + tuple(ks) + tuple(ins))
        for tap, idx in taps:                                       # col2im
            buf[(slice(b0, b1), slice(None)) + idx] += cols[(slice(None), slice(None)) + tap]
    crop = tuple(slice(bg - l, bg - l + o) for bg, l, o in zip(begin, lo, out))
    y = np.ascontiguousarray(buf[(slice(None), slice(None)) + crop])
    return _add_bias(y, b)


@register("ConvTranspose", versions=VERSIONS, infer=_convt_infer)
def conv_transpose(ctx, x, w, b=None):  # x (N, C, *in), w (C, M/g, *k) -> (N, M, *out)
    s, d, begin, out = _convt_geometry(ctx, x.shape, w.shape)
    dt = _compute_dtype(x.dtype)
    y = conv_transpose_nd(x.astype(dt, copy=False), w.astype(dt, copy=False), b,
                          int(ctx.attr("group", 1)), s, d, begin, out)
    return y.astype(x.dtype, copy=False)
