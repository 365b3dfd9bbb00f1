"""Pooling: MaxPool (with optional Indices), AveragePool, GlobalAveragePool, GlobalMaxPool.

Windows are reduced one kernel tap at a time: each tap is a strided slice of the padded input
covering every output position, combined with np.maximum / np.add. Padding never wins a max
(padded with the lowest value) and is counted in an average only with count_include_pad.
"""
from __future__ import annotations

import math

import numpy as np

from . import _window as W
from .registry import OpContext, TensorType, planned, register
from .rules import INT64, shape_error


def _pool_window(ctx: OpContext, x_shape) -> W.Window:
    key = ("pool", tuple(x_shape))
    win = ctx.extra.get(key)
    if win is not None:
        return win
    ks = ctx.attr("kernel_shape")
    if not ks:
        raise ctx.error("attribute kernel_shape is required")
    if len(ks) != len(x_shape) - 2:
        raise ctx.error(f"kernel_shape={list(ks)} needs one size per spatial axis of the "
                        f"input {list(x_shape)}")
    ceil_mode = bool(ctx.attr("ceil_mode", 0)) if ctx.version >= 10 else False
    dilations = (ctx.op_type == "MaxPool" and ctx.version >= 10) or ctx.version >= 19
    win = W.window(ctx, x_shape[2:], ks, ceil_mode=ceil_mode, dilations=dilations)
    ctx.extra[key] = win
    return win


def _pool_infer(ctx: OpContext, x: TensorType):
    if x.rank < 3:
        raise shape_error(ctx, "X must be (N, C, *spatial)", x)
    win = _pool_window(ctx, x.shape)
    if any(o < 1 for o in win.out):
        raise shape_error(ctx, f"the output would have spatial shape {list(win.out)}: the "
                          "window (with dilations) is larger than the padded input", x)
    shape = x.shape[:2] + win.out
    outs = [TensorType(x.dtype, shape)]
    if ctx.n_outputs > 1:
        outs.append(TensorType(INT64, shape))
    return outs


BLOCK_BUDGET = 1 << 19  # bytes of padded input per block of rows (one row = one (n, c) plane)


def _rows(out: np.ndarray | None, dtype: np.dtype, shape) -> np.ndarray:
    """The output as (N*C, 1, *out) rows: the planned view when it has the type, else new."""
    if out is not None and out.dtype == dtype:
        return out.reshape(shape)
    return np.empty(shape, dtype=dtype)


def _lowest(dtype: np.dtype):
    return -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _blocks(x: np.ndarray, win: W.Window, pad_value):
    """Yield (r0, r1, padded block (rows, 1, *reach)) over the N*C planes of x."""
    rows = x.reshape((-1, 1) + x.shape[2:])
    row_bytes = math.prod(win.reach) * x.dtype.itemsize
    step = max(1, BLOCK_BUDGET // max(row_bytes, 1))
    for r0 in range(0, rows.shape[0], step):
        r1 = min(rows.shape[0], r0 + step)
        yield r0, r1, W.pad_input(rows[r0:r1], win, pad_value)


def _tap_valid(win: W.Window, tap) -> np.ndarray:
    """(*out) bool: whether tap ``tap`` falls on the unpadded input, per output position."""
    ok = np.ones((), dtype=bool)
    for ax in range(win.ndim):
        pos = np.arange(win.out[ax]) * win.strides[ax] + tap[ax] * win.dilations[ax] \
            - win.pads_begin[ax]
        good = (pos >= 0) & (pos < win.in_shape[ax])
        ok = ok[..., None] & good.reshape((1,) * ax + (-1,))
    return np.broadcast_to(ok, win.out)


def _indices(win: W.Window, best: np.ndarray, y: np.ndarray, low, column_major: bool,
             plane: int) -> np.ndarray:
    """best (rows, 1, *out) winning tap numbers, y its maxima -> int64 flat input indices."""
    taps = list(W.taps(win))
    base = W.tap_flat_index(win, (0,) * win.ndim, column_major)     # (*out): tap 0's index
    first_out = (0,) * win.ndim
    offset = np.array([W.tap_flat_index(win, t, column_major)[first_out] - base[first_out]
                       for t in taps], dtype=np.int64)              # (K,): a tap's shift
    if not win.trivial_padding:
        # a padding tap wins only where every real value equals the padding value; the first
        # real tap holds that same maximum
        sus = np.nonzero(~(y > low))
        if sus[0].size:
            valid = np.stack([_tap_valid(win, t) for t in taps])    # (K, *out)
            pos = sus[2:]
            chosen = best[sus].astype(np.intp)
            first = np.argmax(valid, axis=0)[pos]
            best[sus] = np.where(valid[(chosen,) + pos], chosen, first)
    idx = np.take(offset, best) + base
    idx += (np.arange(best.shape[0], dtype=np.int64) * plane).reshape(
        (-1,) + (1,) * (idx.ndim - 1))
    return idx


@register("MaxPool", versions=(1, 8, 10, 11, 12, 22), infer=_pool_infer)
def max_pool(ctx, x):  # x (N, C, *in) -> y (N, C, *out) [, indices int64 (N, C, *out)]
    win = _pool_window(ctx, x.shape)
    n, c = x.shape[:2]
    y = _rows(planned(ctx), x.dtype, (n * c, 1) + win.out)
    with_indices = ctx.n_outputs > 1
    slices = [W.tap_slices(win, t) for t in W.taps(win)]
    low = _lowest(x.dtype)
    if with_indices:  # winning tap number; the last strict improvement has the largest number
        best = np.empty(y.shape, dtype=np.uint8 if len(slices) < 256 else np.int32)
    for r0, r1, xp in _blocks(x, win, low):
        yb = y[r0:r1]
        np.copyto(yb, xp[slices[0]])
        if not with_indices:
            for sl in slices[1:]:
                np.maximum(yb, xp[sl], out=yb)
            continue
        bb = best[r0:r1]
        bb[...] = 0
        take = np.empty(yb.shape, dtype=bool)
        tmp = np.empty_like(bb)
        for i, sl in enumerate(slices[1:], 1):  # first strict maximum in tap order
            v = xp[sl]
            np.greater(v, yb, out=take)
            np.maximum(yb, v, out=yb)
            np.multiply(take, bb.dtype.type(i), out=tmp)
            np.maximum(bb, tmp, out=bb)
    if not with_indices:
        return y.reshape(x.shape[:2] + win.out)
    plane = math.prod(x.shape[2:])
    idx = _indices(win, best, y, low, bool(ctx.attr("storage_order", 0)), plane)
    return y.reshape(x.shape[:2] + win.out), idx.reshape(x.shape[:2] + win.out)


@register("AveragePool", versions=(1, 7, 10, 11, 19, 22), infer=_pool_infer)
def average_pool(ctx, x):  # x (N, C, *in) -> (N, C, *out)
    win = _pool_window(ctx, x.shape)
    dt = np.dtype(np.float32) if x.dtype == np.float16 else x.dtype
    n, c = x.shape[:2]
    total = _rows(planned(ctx), dt, (n * c, 1) + win.out)
    slices = [W.tap_slices(win, t) for t in W.taps(win)]
    for r0, r1, xp in _blocks(x.astype(dt, copy=False), win, 0):
        tb = total[r0:r1]
        np.copyto(tb, xp[slices[0]])
        for sl in slices[1:]:
            np.add(tb, xp[sl], out=tb)
    include = bool(ctx.attr("count_include_pad", 0)) if ctx.version >= 7 else False
    total /= W.inside_counts(win, include).astype(dt)
    return total.reshape(x.shape[:2] + win.out).astype(x.dtype, copy=False)


def _global_infer(ctx: OpContext, x: TensorType):
    if x.rank < 2:
        raise shape_error(ctx, "X must be (N, C, *spatial)", x)
    return [TensorType(x.dtype, x.shape[:2] + (1,) * (x.rank - 2))]


@register("GlobalAveragePool", versions=(1, 22), infer=_global_infer)
def global_average_pool(ctx, x):  # x (N, C, *in) -> (N, C, 1, ...)
    axes = tuple(range(2, x.ndim))
    dt = np.float32 if x.dtype == np.float16 else x.dtype
    out = planned(ctx)
    out = out if out is not None and out.dtype == dt else None
    return np.mean(x, axis=axes, keepdims=True, dtype=dt, out=out).astype(x.dtype, copy=False)


@register("GlobalMaxPool", versions=(1, 22), infer=_global_infer)
def global_max_pool(ctx, x):  # x (N, C, *in) -> (N, C, 1, ...)
    return np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)
