"""Indexing and filling ops: Gather, GatherElements, Expand, Tile, Pad, Trilu, CumSum."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .registry import ET_DOMAIN, OpContext, TensorType, gradient, planned, register
from .rules import constant, normalize_axes, normalize_axis, shape_error
from .tensor import forward_ctx, forward_version, shape_of


def _ints(v) -> list[int]:
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _index(ctx: OpContext, idx: np.ndarray, dim: int) -> np.ndarray:
    """Indices as int64 in [0, dim): negative ones count from the end; out of range is an error."""
    idx = np.asarray(idx).astype(np.int64, copy=False)
    bad = (idx < -dim) | (idx >= dim)
    if bad.any():
        raise ctx.error(f"index {int(idx[bad].reshape(-1)[0])} is out of range for an axis of "
                        f"size {dim}")
    return np.where(idx < 0, idx + dim, idx)


# --- Gather / GatherElements -------------------------------------------------------------------

def _gather_infer(ctx, x, indices):
    axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), x.rank)
    if indices.value is not None:
        _index(ctx, indices.value, x.shape[axis])
    return [TensorType(x.dtype, x.shape[:axis] + indices.shape + x.shape[axis + 1:])]


@register("Gather", versions=(1, 11, 13), infer=_gather_infer)
def gather(ctx, x, indices):  # x: (..., d_axis, ...), indices: I -> (...before, *I, ...after)
    axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), x.ndim)
    return np.asarray(np.take(x, _index(ctx, indices, x.shape[axis]), axis=axis))


def _gather_elements_infer(ctx, x, indices):
    normalize_axis(ctx, int(ctx.attr("axis", 0)), x.rank)
    if indices.rank != x.rank:
        raise shape_error(ctx, "data and indices must have the same rank", x, indices)
    return [TensorType(x.dtype, indices.shape)]


@register("GatherElements", versions=(11, 13), infer=_gather_elements_infer)
def gather_elements(ctx, x, indices):  # x, indices: same rank -> indices' shape
    axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), x.ndim)
    if indices.ndim != x.ndim:
        raise ctx.error(f"data rank {x.ndim} and indices rank {indices.ndim} differ")
    grid = list(np.indices(indices.shape, sparse=True))
    grid[axis] = _index(ctx, indices, x.shape[axis])
    return x[tuple(grid)]


# --- Expand / Tile -----------------------------------------------------------------------------

def _expand_shape(ctx: OpContext, shape: Sequence[int], target) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(tuple(shape), tuple(_ints(target))))
    except ValueError:
        raise ctx.error(f"input shape {list(shape)} does not broadcast with shape "
                        f"{_ints(target)}") from None


def _expand_infer(ctx, x, shape):
    return [TensorType(x.dtype, _expand_shape(ctx, x.shape, constant(ctx, shape, "shape")))]


@register("Expand", versions=(8, 13), infer=_expand_infer)
def expand(ctx, x, shape):  # x -> broadcast(x.shape, shape)
    return np.broadcast_to(x, _expand_shape(ctx, x.shape, shape)).copy()


def _tile_reps(ctx: OpContext, rank: int, repeats, axis=None) -> tuple[int, ...]:
    if ctx.version < 6:  # Tile-1: a scalar count of tiles along one axis
        reps = [1] * rank
        reps[normalize_axis(ctx, _ints(axis)[0], rank)] = _ints(repeats)[0]
    else:
        reps = _ints(repeats)
    if len(reps) != rank or min(reps, default=0) < 0:
        raise ctx.error(f"repeats {reps} must be {rank} non-negative counts, one per axis")
    return tuple(reps)


def _tile_infer(ctx, x, repeats, axis=None):
    a = None if axis is None else constant(ctx, axis, "axis")
    reps = _tile_reps(ctx, x.rank, constant(ctx, repeats, "repeats"), a)
    return [TensorType(x.dtype, tuple(d * r for d, r in zip(x.shape, reps)))]


@register("Tile", versions=(1, 6, 13), infer=_tile_infer)
def tile(ctx, x, repeats, axis=None):  # x: (d_i) -> (d_i * repeats_i)
    return np.tile(x, _tile_reps(ctx, x.ndim, repeats, axis))


# --- Pad: attribute pads (1, 2), input pads (11+), axes input (18+), wrap mode (19+) ------------

PAD_MODES = {"constant", "reflect", "edge", "wrap"}


def _pad_widths(ctx: OpContext, shape: Sequence[int], pads, axes) -> list[tuple[int, int]]:
    """(before, after) per axis; negative entries crop."""
    if ctx.version < 11:
        pads = ctx.attr("paddings" if ctx.version < 2 else "pads")
    if pads is None:
        raise ctx.error("Pad needs pads")
    pads, rank = _ints(pads), len(shape)
    axes = list(range(rank)) if axes is None else list(normalize_axes(ctx, _ints(axes), rank))
    if len(pads) != 2 * len(axes):
        raise ctx.error(f"pads {pads} must have 2 entries per padded axis ({len(axes)} axes)")
    widths = [(0, 0)] * rank
    for i, a in enumerate(axes):
        widths[a] = (pads[i], pads[i + len(axes)])
    for d, (b, e) in zip(shape, widths):
        if d + b + e < 0:
            raise ctx.error(f"pads {pads} crop more than the input shape {list(shape)}")
    mode = ctx.attr("mode", "constant")
    if mode not in PAD_MODES or (mode == "wrap" and ctx.version < 19):
        raise ctx.error(f"unknown pad mode {mode!r} for Pad-{ctx.version}")
    for d, (b, e) in zip(shape, widths):  # the part left after cropping must feed the padding
        kept = d + min(b, 0) + min(e, 0)
        if mode != "constant" and max(b, e) > 0 and (kept == 0 or (
                mode == "reflect" and max(b, e) > kept - 1)):
            raise ctx.error(f"{mode} padding {pads} is too large for input shape {list(shape)}")
    return widths


def _pad_infer(ctx, x, pads=None, value=None, axes=None):
    p = None if pads is None else constant(ctx, pads, "pads")
    a = None if axes is None else constant(ctx, axes, "axes")
    widths = _pad_widths(ctx, x.shape, p, a)
    return [TensorType(x.dtype, tuple(d + b + e for d, (b, e) in zip(x.shape, widths)))]


@register("Pad", versions=(1, 2, 11, 13, 18, 19, 21, 23, 24, 25), infer=_pad_infer)
def pad(ctx, x, pads=None, value=None, axes=None):  # x: (d_i) -> (d_i + before_i + after_i)
    widths = _pad_widths(ctx, x.shape, pads, axes)
    crop = tuple(slice(max(-b, 0), d - max(-e, 0)) for d, (b, e) in zip(x.shape, widths))
    x = x[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in widths]
    mode = ctx.attr("mode", "constant")
    if mode != "constant":
        return np.pad(x, widths, mode=mode).astype(x.dtype, copy=False)
    if ctx.version < 11:
        value = ctx.attr("value", 0.0)
    elif value is not None and np.size(value):
        value = np.asarray(value).reshape(-1)[0]
    else:
        value = "" if x.dtype.kind == "O" else 0
    out = np.full(tuple(d + b + e for d, (b, e) in zip(x.shape, widths)), value, dtype=x.dtype)
    out[tuple(slice(b, b + d) for d, (b, _) in zip(x.shape, widths))] = x
    return out


# --- Trilu / CumSum ----------------------------------------------------------------------------

def _trilu_infer(ctx, x, k=None):
    if x.rank < 2:
        raise shape_error(ctx, "the input must have rank >= 2", x)
    return [TensorType(x.dtype, x.shape)]


@register("Trilu", versions=(14,), infer=_trilu_infer)
def trilu(ctx, x, k=None):  # x: (..., N, M) -> same, entries outside the triangle zeroed
    k = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
    out = np.triu(x, k) if ctx.attr("upper", 1) else np.tril(x, k)
    return out.astype(x.dtype, copy=False)


def _cumsum_infer(ctx, x, axis):
    if axis.value is not None:
        normalize_axis(ctx, int(np.asarray(axis.value).reshape(-1)[0]), x.rank)
    return [TensorType(x.dtype, x.shape)]


@register("CumSum", versions=(11, 14), infer=_cumsum_infer)
def cumsum(ctx, x, axis):  # x -> same shape, running sums along axis
    axis = normalize_axis(ctx, int(np.asarray(axis).reshape(-1)[0]), x.ndim)
    reverse = bool(ctx.attr("reverse", 0))
    y = np.flip(x, axis) if reverse else x
    out = np.cumsum(y, axis=axis, dtype=x.dtype)
    if ctx.attr("exclusive", 0):  # shift by one along axis, zero first
        src, dst = [slice(None)] * x.ndim, [slice(None)] * x.ndim
        src[axis], dst[axis] = slice(0, -1), slice(1, None)
        shifted = np.zeros_like(out)
        shifted[tuple(dst)] = out[tuple(src)]
        out = shifted
    return np.flip(out, axis) if reverse else out


# --- gradients ---------------------------------------------------------------------------------
# None reads x: its shape comes from Shape(x), folded while planning. Gather/GatherElements keep
# their indices; Expand keeps x (SumTo reads its shape); the others keep nothing.

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)


def _acc(dtype: np.dtype) -> np.dtype:
    return F32 if dtype == F16 else dtype  # float16 sums accumulate in float32


def _zeros(ctx: OpContext, shape, dtype: np.dtype) -> np.ndarray:
    """Zeros of ``shape`` to accumulate a gradient in: the planned output when it fits."""
    out = planned(ctx)
    if out is not None and out.dtype == dtype and out.flags.c_contiguous and \
            out.size == int(np.prod(shape, dtype=np.int64)):
        out = out.reshape(shape)
        out.fill(0)
        return out
    return np.zeros(shape, dtype=dtype)


def _to_shape_infer(ctx, dy, shape, *rest):  # -> dy's dtype, x's shape (second input)
    return [TensorType(dy.dtype, tuple(_ints(constant(ctx, shape, "shape"))))]


def _index_grad(op):
    def rule(g, node, dys):  # dx = dy scatter-added at the indices into zeros of x's shape
        if not g.needs(node, 0):
            return [None, None]
        ins = [dys[0], shape_of(g, node.inputs[0]), node.inputs[1]]
        return [g.et(op, ins, axis=int(node.attrs.get("axis", 0))), None]
    return rule


gradient("Gather")(_index_grad("GatherGrad"))
gradient("GatherElements")(_index_grad("GatherElementsGrad"))


@register("GatherGrad", versions=(1,), infer=_to_shape_infer, domain=ET_DOMAIN)
def gather_grad(ctx, dy, shape, indices):  # dy (..before, *I, ..after), x's shape, indices I
    shape = _ints(shape)
    axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), len(shape))
    idx = _index(ctx, indices, shape[axis]).reshape(-1)
    pre, post = int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis + 1:],
                                                                       dtype=np.int64))
    dx = _zeros(ctx, (pre, shape[axis], post), _acc(dy.dtype))
    if idx.size:  # sort the indices, sum each run of equal ones (repeats add up), write once
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
        dy3 = dy.reshape(pre, idx.size, post)[:, order].astype(dx.dtype, copy=False)
        dx[:, sorted_idx[starts]] = np.add.reduceat(dy3, starts, axis=1)
    return dx.reshape(shape).astype(dy.dtype, copy=False)


@register("GatherElementsGrad", versions=(1,), infer=_to_shape_infer, domain=ET_DOMAIN)
def gather_elements_grad(ctx, dy, shape, indices):  # dy, x's shape, indices (dy's shape)
    shape = _ints(shape)
    axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), len(shape))
    grid = list(np.indices(indices.shape, sparse=True))
    grid[axis] = _index(ctx, indices, shape[axis])
    dx = _zeros(ctx, shape, _acc(dy.dtype))
    np.add.at(dx, tuple(grid), dy)
    return dx.astype(dy.dtype, copy=False)


@gradient("Expand")
def expand_grad(g, node, dys):  # dx = dy summed over the broadcast axes
    return [g.sum_to(dys[0], node.inputs[0]) if g.needs(node, 0) else None, None]


@gradient("Tile")
def tile_grad(g, node, dys):  # dx = the sum of dy's tiles
    dx = g.et("TileGrad", [dys[0], shape_of(g, node.inputs[0])]) if g.needs(node, 0) else None
    return [dx] + [None] * (len(node.inputs) - 1)


@register("TileGrad", versions=(1,), infer=_to_shape_infer, domain=ET_DOMAIN)
def tile_grad_kernel(ctx, dy, shape):  # dy (d_i * r_i), x's shape (d_i) -> dx (d_i)
    shape = _ints(shape)
    if dy.size == 0:
        return np.zeros(shape, dtype=dy.dtype)
    reps = [o // d for o, d in zip(dy.shape, shape)]
    split = [v for r, d in zip(reps, shape) for v in (r, d)]  # (r_0, d_0, r_1, d_1, ...)
    dx = np.add.reduce(dy.reshape(split), axis=tuple(range(0, len(split), 2)),
                       dtype=_acc(dy.dtype))
    return np.asarray(dx).astype(dy.dtype, copy=False)


@gradient("Pad")
def pad_grad(g, node, dys):  # dx = dy's kept part (plus reflected parts); dvalue = sum of the rest
    ins = list(node.inputs) + [""] * (4 - len(node.inputs))
    need_x = g.needs(node, 0)
    need_v = g.needs(node, 2) and node.attrs.get("mode", "constant") == "constant"
    dxs: list[str | None] = [None] * len(node.inputs)
    if not (need_x or need_v):
        return dxs
    dx = g.et("PadGrad", [dys[0], shape_of(g, ins[0]), ins[1], ins[3]],
              fwd_version=forward_version(g, node), **node.attrs)
    if need_x:
        dxs[0] = dx
    if need_v:  # the padding value fills every element of y that is not x's
        rest = g.op("Sub", [g.op("ReduceSum", [dys[0]], keepdims=0),
                            g.op("ReduceSum", [dx], keepdims=0)])
        dxs[2] = g.et("ReshapeTo", [rest, shape_of(g, ins[2])])
    return dxs


@register("PadGrad", versions=(1,), infer=_to_shape_infer, domain=ET_DOMAIN)
def pad_grad_kernel(ctx, dy, shape, pads=None, axes=None):  # dy, x's shape, the forward's pads
    fctx = forward_ctx(ctx, "Pad")
    shape = _ints(shape)
    widths = _pad_widths(fctx, shape, pads, axes)
    mode = ctx.attr("mode", "constant")
    acc = _acc(dy.dtype)
    grad = dy
    for a, (b, e) in enumerate(widths):  # fold each padded axis back onto the kept part
        b, e = max(b, 0), max(e, 0)
        if b == e == 0:
            continue
        lead = (slice(None),) * a
        k = grad.shape[a] - b - e
        kept = grad[lead + (slice(b, b + k),)]
        if mode == "constant":
            grad = kept
            continue
        src = np.pad(np.arange(k), (b, e), mode=mode)  # padded position -> source position
        kept = kept.astype(acc, copy=True)
        np.add.at(kept, lead + (src[:b],), grad[lead + (slice(0, b),)])
        np.add.at(kept, lead + (src[b + k:],), grad[lead + (slice(b + k, None),)])
        grad = kept
    dx = np.zeros(shape, dtype=dy.dtype)
    dx[tuple(slice(max(-b, 0), d - max(-e, 0)) for d, (b, e) in zip(shape, widths))] = grad
    return dx


@gradient("Trilu")
def trilu_grad(g, node, dys):  # dx = dy with the same entries zeroed
    dx = g.op("Trilu", [dys[0]] + list(node.inputs[1:]), **node.attrs) if g.needs(node, 0) else None
    return [dx] + [None] * (len(node.inputs) - 1)


@gradient("CumSum")
def cumsum_grad(g, node, dys):  # dx = dy summed the other way along axis (same exclusive)
    if not g.needs(node, 0):
        return [None, None]
    attrs = {**node.attrs, "reverse": 1 - int(node.attrs.get("reverse", 0))}
    return [g.op("CumSum", [dys[0], node.inputs[1]], **attrs), None]
