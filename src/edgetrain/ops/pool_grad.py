"""Gradients of the pooling ops: MaxPoolGrad, AveragePoolGrad, GlobalAveragePoolGrad,
GlobalMaxPoolGrad (domain ai.edgetrain).

Like the forward, windows are walked one kernel tap at a time over blocks of (n, c) planes: each
tap's share of dy is added into the tap's strided slice of a padded gradient buffer, which is then
cropped to the input (what lands on padding is dropped).
* MaxPool: dy goes to the first maximum of each window (ties: first in tap order, padding never
  wins, as the forward's Indices). With the forward's Indices output, the backward keeps only
  Indices and scatters dy by them; otherwise it keeps X and finds the arg max again.
* AveragePool: dy / count spread over each window's taps (same counts as the forward:
  count_include_pad, pads, ceil_mode, dilations). Keeps nothing but X's shape.
* GlobalAveragePool: dy / plane size everywhere (keeps X's shape); GlobalMaxPool: dy to the first
  maximum of each plane (keeps X).
The geometry is the forward's own (pool._pool_window), with the forward's schema version passed
to the backward node as the attribute ``of_version`` (ceil_mode, dilations and
count_include_pad depend on it).
"""
from __future__ import annotations

import math

import numpy as np

from . import _window as W
from . import pool as P
from .registry import ET_DOMAIN, OpContext, TensorType, gradient, lookup, register
from .rules import constant


def _version(g, node) -> int:
    return lookup(node.op_type, node.domain, g.graph.opset(node.domain), node.name)[1]


def _shape_of(g, x: str) -> str:
    return g.op("Shape", [x])  # folded while planning: the backward does not keep x


@gradient("MaxPool")
def _max_pool_grad(g, node, dys):
    if dys[0] is None or not g.needs(node, 0):
        return [None]
    x = node.inputs[0]
    if len(node.outputs) > 1 and node.outputs[1]:  # the forward's Indices: keep them, not x
        inputs = [dys[0], "", node.outputs[1], _shape_of(g, x)]
    else:
        inputs = [dys[0], x]
    return [g.et("MaxPoolGrad", inputs, of_version=_version(g, node), **node.attrs)]


@gradient("AveragePool")
def _average_pool_grad(g, node, dys):
    if dys[0] is None or not g.needs(node, 0):
        return [None]
    return [g.et("AveragePoolGrad", [dys[0], _shape_of(g, node.inputs[0])],
                 of_version=_version(g, node), **node.attrs)]


@gradient("GlobalAveragePool")
def _global_average_pool_grad(g, node, dys):
    if dys[0] is None or not g.needs(node, 0):
        return [None]
    return [g.et("GlobalAveragePoolGrad", [dys[0], _shape_of(g, node.inputs[0])])]


@gradient("GlobalMaxPool")
def _global_max_pool_grad(g, node, dys):
    if dys[0] is None or not g.needs(node, 0):
        return [None]
    return [g.et("GlobalMaxPoolGrad", [dys[0], node.inputs[0]])]


# --- shared ------------------------------------------------------------------------------------

def _from_shape(ctx: OpContext, dy: TensorType, *rest: TensorType | None):
    """dx has x's shape, given as the last input (int64, known while planning)."""
    shape = constant(ctx, rest[-1], "X_shape")
    return [TensorType(dy.dtype, tuple(int(v) for v in np.asarray(shape).reshape(-1)))]


def _like_x(ctx: OpContext, dy: TensorType, x: TensorType):
    return [TensorType(dy.dtype, x.shape)]


def _max_pool_infer(ctx: OpContext, dy: TensorType, x: TensorType | None = None, *rest):
    return _like_x(ctx, dy, x) if x is not None else _from_shape(ctx, dy, *rest)


def _window(ctx: OpContext, forward: str, x_shape) -> tuple[W.Window, OpContext]:
    """The forward node's window, computed by the forward's own code at its schema version."""
    fctx = ctx.extra.get("forward")
    if fctx is None:
        v = int(ctx.attr("of_version"))
        fctx = ctx.extra["forward"] = OpContext(forward, "", ctx.name, v, v, ctx.attrs, 1, 1)
    return P._pool_window(fctx, tuple(x_shape)), fctx


def _row_blocks(rows: int, win: W.Window, itemsize: int):
    row_bytes = math.prod(win.reach) * itemsize
    step = max(1, P.BLOCK_BUDGET // max(row_bytes, 1))
    return [(r0, min(rows, r0 + step)) for r0 in range(0, rows, step)]


def _x_shape(a) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(a).reshape(-1))


# --- MaxPoolGrad -------------------------------------------------------------------------------

def _scatter_by_indices(dy, idx, xs, column_major: bool):
    """dy, idx (N, C, *out) flat input indices -> dx (xs): dy added at each index."""
    plane = math.prod(xs[2:])
    idx = idx.reshape(-1)
    if column_major:  # the spatial part is column-major; the (n, c) part is not
        row, pos = np.divmod(idx, plane)
        idx = row * plane + np.ravel_multi_index(np.unravel_index(pos, xs[2:], order="F"),
                                                 xs[2:])
    total = math.prod(xs)
    dx = np.bincount(idx, weights=dy.reshape(-1), minlength=total)
    return dx.reshape(xs)


@register("MaxPoolGrad", versions=(1,), infer=_max_pool_infer, domain=ET_DOMAIN)
def max_pool_grad(ctx, dy, x=None, idx=None, x_shape=None):
    # dy (N, C, *out), and either x (N, C, *in) or the forward's Indices and x's shape
    # -> dx (N, C, *in)
    if idx is not None:
        return _scatter_by_indices(dy, idx, _x_shape(x_shape),
                                   bool(ctx.attr("storage_order", 0))).astype(dy.dtype)
    win, _ = _window(ctx, "MaxPool", x.shape)
    n, c = x.shape[:2]
    rows_dy = dy.reshape((n * c, 1) + win.out)
    dx = np.empty((n * c, 1) + win.in_shape, dtype=dy.dtype)
    taps = list(W.taps(win))
    slices = [W.tap_slices(win, t) for t in taps]
    low = P._lowest(x.dtype)
    crop = [-b for b in win.pads_begin]
    valid = None
    rows = x.reshape((n * c, 1) + x.shape[2:])
    for r0, r1 in _row_blocks(n * c, win, x.dtype.itemsize):
        xp = W.pad_input(rows[r0:r1], win, low)
        y = xp[slices[0]].copy()
        best = np.zeros(y.shape, dtype=np.uint8 if len(slices) < 256 else np.int32)
        take = np.empty(y.shape, dtype=bool)
        for i, sl in enumerate(slices[1:], 1):  # first strict maximum in tap order
            v = xp[sl]
            np.greater(v, y, out=take)
            np.maximum(y, v, out=y)
            np.copyto(best, best.dtype.type(i), where=take)
        if not win.trivial_padding:  # a padding tap may "win" only where all real values are
            sus = np.nonzero(~(y > low))  # the lowest value: the first real tap takes it
            if sus[0].size:
                if valid is None:
                    valid = np.stack([P._tap_valid(win, t) for t in taps])   # (K, *out)
                pos = sus[2:]
                chosen = best[sus].astype(np.intp)
                best[sus] = np.where(valid[(chosen,) + pos], chosen,
                                     np.argmax(valid, axis=0)[pos])
        dyb = rows_dy[r0:r1]
        buf = np.zeros(xp.shape, dtype=dy.dtype)
        tmp = np.empty(dyb.shape, dtype=dy.dtype)
        for i, sl in enumerate(slices):
            np.equal(best, i, out=take)
            np.multiply(dyb, take, out=tmp)
            buf[sl] += tmp
        dx[r0:r1] = W.place(buf, crop, win.in_shape)
    return dx.reshape(x.shape)


# --- AveragePoolGrad ---------------------------------------------------------------------------

@register("AveragePoolGrad", versions=(1,), infer=_from_shape, domain=ET_DOMAIN)
def average_pool_grad(ctx, dy, x_shape):  # dy (N, C, *out), x's shape -> dx (N, C, *in)
    xs = _x_shape(x_shape)
    win, fctx = _window(ctx, "AveragePool", xs)
    dt = np.dtype(np.float32) if dy.dtype == np.float16 else dy.dtype
    include = bool(fctx.attr("count_include_pad", 0)) if fctx.version >= 7 else False
    n, c = xs[:2]
    share = (dy.astype(dt) / W.inside_counts(win, include).astype(dt)).reshape(
        (n * c, 1) + win.out)
    dx = np.empty((n * c, 1) + win.in_shape, dtype=dt)
    slices = [W.tap_slices(win, t) for t in W.taps(win)]
    crop = [-b for b in win.pads_begin]
    for r0, r1 in _row_blocks(n * c, win, dt.itemsize):
        buf = np.zeros((r1 - r0, 1) + win.reach, dtype=dt)
        sb = share[r0:r1]
        for sl in slices:
            buf[sl] += sb
        dx[r0:r1] = W.place(buf, crop, win.in_shape)
    return dx.reshape(xs).astype(dy.dtype, copy=False)


# --- global pools ------------------------------------------------------------------------------

@register("GlobalAveragePoolGrad", versions=(1,), infer=_from_shape, domain=ET_DOMAIN)
def global_average_pool_grad(ctx, dy, x_shape):  # dy (N, C, 1, ...), x's shape -> dx (N, C, *in)
    xs = _x_shape(x_shape)
    plane = math.prod(xs[2:])
    dt = np.dtype(np.float32) if dy.dtype == np.float16 else dy.dtype
    share = dy.astype(dt) / dt.type(plane)
    return np.broadcast_to(share, xs).astype(dy.dtype)


@register("GlobalMaxPoolGrad", versions=(1,), infer=_like_x, domain=ET_DOMAIN)
def global_max_pool_grad(ctx, dy, x):  # dy (N, C, 1, ...), x (N, C, *in) -> dx (N, C, *in)
    flat = x.reshape(x.shape[:2] + (-1,))
    dx = np.zeros(flat.shape, dtype=dy.dtype)
    np.put_along_axis(dx, np.argmax(flat, axis=-1)[..., None], dy.reshape(flat.shape[:2] + (1,)),
                      axis=-1)
    return dx.reshape(x.shape)
