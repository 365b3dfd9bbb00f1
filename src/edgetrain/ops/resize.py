"""Resize (opset 10, 11, 13, 18, 19): nearest, N-linear and N-cubic interpolation, and its
gradient (ResizeGrad, domain ai.edgetrain).

Interpolation is separable: each resized axis is done in turn with a per-axis table of source
indices and weights (one gather per filter tap), never per pixel. The coordinate transformation,
nearest rounding, cubic coefficients, ``exclude_outside``, ``tf_crop_and_resize`` extrapolation
and the v18 ``antialias`` filter stretching follow the ONNX specification (and its reference
implementation, which the node tests come from).
"""
from __future__ import annotations

import math

import numpy as np

from .activation import forward_context
from .registry import ET_DOMAIN, OpContext, TensorType, gradient, register
from .rules import constant, normalize_axes, shape_error

_CTMS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
         "asymmetric", "tf_crop_and_resize", "tf_half_pixel_for_nn")
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def _present(a) -> np.ndarray | None:
    """An optional input given as an empty tensor counts as absent."""
    if a is None:
        return None
    a = np.asarray(a)
    return None if a.size == 0 else a


def _inputs(ctx: OpContext, args):
    """(roi, scales, sizes) from the node's inputs: v10 has only ``scales``."""
    if ctx.version < 11:
        return None, (args[0] if args else None), None
    args = list(args) + [None] * (3 - len(args))
    return args[0], args[1], args[2]


def _axes(ctx: OpContext, rank: int) -> tuple[int, ...]:
    axes = ctx.attr("axes") if ctx.version >= 18 else None
    return tuple(range(rank)) if axes is None else normalize_axes(ctx, axes, rank)


def _plan(ctx: OpContext, shape, scales, sizes):
    """Per axis of X: output size, the scale used by the coordinate transformation, and the
    fractional output length ``scale * in`` (``out`` exactly when sizes stretch)."""
    rank = len(shape)
    axes = _axes(ctx, rank)
    scales, sizes = _present(scales), _present(sizes)
    if (scales is None) == (sizes is None):
        raise ctx.error("exactly one of 'scales' and 'sizes' must be given (non-empty)")
    out = list(shape)
    scale = [1.0] * rank
    out_f = [float(d) for d in shape]
    if scales is not None:
        scales = [float(s) for s in scales.reshape(-1)]
        if len(scales) != len(axes):
            raise ctx.error(f"scales has {len(scales)} values for {len(axes)} axes")
        for a, s in zip(axes, scales):
            if not s > 0:
                raise ctx.error(f"scales must be positive, got {scales}")
            scale[a], out_f[a] = s, s * shape[a]
            out[a] = int(math.floor(out_f[a]))
        return out, scale, out_f, axes
    sizes = [int(s) for s in sizes.reshape(-1)]
    if len(sizes) != len(axes):
        raise ctx.error(f"sizes has {len(sizes)} values for {len(axes)} axes")
    if any(s < 0 for s in sizes):
        raise ctx.error(f"sizes must not be negative, got {sizes}")
    policy = ctx.attr("keep_aspect_ratio_policy", "stretch") if ctx.version >= 18 else "stretch"
    if policy == "stretch":
        for a, s in zip(axes, sizes):
            out[a], out_f[a] = s, float(s)
            scale[a] = s / shape[a] if shape[a] else 1.0
        return out, scale, out_f, axes
    if policy not in ("not_larger", "not_smaller"):
        raise ctx.error(f"keep_aspect_ratio_policy {policy!r} should be stretch, not_larger "
                        "or not_smaller")
    ratios = [s / shape[a] for a, s in zip(axes, sizes)]
    common = min(ratios) if policy == "not_larger" else max(ratios)
    for a in axes:
        scale[a], out_f[a] = common, common * shape[a]
        out[a] = int(math.floor(out_f[a] + 0.5))
    return out, scale, out_f, axes


def _resize_infer(ctx: OpContext, x: TensorType, *rest):
    roi, scales, sizes = _inputs(ctx, rest)
    scales = constant(ctx, scales, "scales")
    sizes = constant(ctx, sizes, "sizes")
    _check_attrs(ctx)
    out, _, _, _ = _plan(ctx, x.shape, scales, sizes)
    return [TensorType(x.dtype, tuple(out))]


def _check_attrs(ctx: OpContext):
    mode = ctx.attr("mode", "nearest")
    if mode not in ("nearest", "linear", "cubic") or (ctx.version < 11 and mode == "cubic"):
        raise ctx.error(f"mode {mode!r} is not supported")
    if ctx.version >= 11:
        ctm = ctx.attr("coordinate_transformation_mode", "half_pixel")
        if ctm not in _CTMS:
            raise ctx.error(f"coordinate_transformation_mode {ctm!r} should be one of "
                            f"{', '.join(_CTMS)}")
        nm = ctx.attr("nearest_mode", "round_prefer_floor")
        if nm not in _NEAREST:
            raise ctx.error(f"nearest_mode {nm!r} should be one of {', '.join(_NEAREST)}")


# --- per-axis tables ---------------------------------------------------------------------------

def _source_coords(ctm, n_out, n_in, scale, out_f, roi):
    """Source coordinate of each output index along one axis, and the extrapolated mask.
    Computed in float32 like onnxruntime, so that exact ties round the same way."""
    f = np.float32
    y, scale, out_f = np.arange(n_out, dtype=f), f(scale), f(out_f)
    if ctm == "half_pixel":
        x = (y + f(0.5)) / scale - f(0.5)
    elif ctm == "half_pixel_symmetric":
        offset = f(n_in / 2) * (f(1) - f(n_out) / out_f) if out_f else f(0)
        x = offset + (y + f(0.5)) / scale - f(0.5)
    elif ctm == "pytorch_half_pixel":
        x = (y + f(0.5)) / scale - f(0.5) if n_out > 1 else np.zeros(n_out, f)
    elif ctm == "align_corners":
        x = y * f(n_in - 1) / (out_f - f(1)) if out_f != 1 else np.zeros(n_out, f)
    elif ctm == "asymmetric":
        x = y / scale
    elif ctm == "tf_half_pixel_for_nn":
        x = (y + f(0.5)) / scale
    else:  # tf_crop_and_resize
        start, end = f(roi[0]), f(roi[1])
        if out_f != 1:
            x = start * f(n_in - 1) + y * (end - start) * f(n_in - 1) / (out_f - f(1))
        else:
            x = np.full(n_out, f(0.5) * (start + end) * f(n_in - 1), f)
        return x.astype(np.float64), (x < 0) | (x > n_in - 1)
    return x.astype(np.float64), None


def _nearest_index(x, mode):
    if mode == "round_prefer_floor":
        return np.ceil(x - 0.5)
    if mode == "round_prefer_ceil":
        return np.floor(x + 0.5)
    return np.floor(x) if mode == "floor" else np.ceil(x)


def _cubic(d, a):
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def _taps(ctx, mode, x, n_in, scale):
    """Source indices [n_out, taps] (clamped) and weights for linear/cubic interpolation."""
    base = np.floor(x)
    r = x - base
    tie = r == 0  # an exact source pixel: take the window that ends on it (as the spec's code)
    base, r = np.where(tie, base - 1, base), np.where(tie, 1.0, r)
    support = 1.0 if mode == "linear" else 2.0
    anti = bool(ctx.attr("antialias", 0)) if ctx.version >= 18 else False
    s = min(scale, 1.0) if anti else 1.0
    start = int(math.floor(-support / s) + 1)
    k = np.arange(start, 1 - start + 1, dtype=np.float64)  # taps relative to base
    d = (k[None, :] - r[:, None]) * s
    if mode == "linear":
        w = np.clip(1 - np.abs(d), 0, 1)
    else:
        w = _cubic(d, float(ctx.attr("cubic_coeff_a", -0.75)))
    if anti:
        w = w / w.sum(axis=1, keepdims=True)
    idx = base[:, None] + k[None, :]
    if ctx.attr("exclude_outside", 0):
        w = np.where((idx < 0) | (idx > n_in - 1), 0.0, w)
        total = w.sum(axis=1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, n_in - 1).astype(np.intp), w


def _along(a: np.ndarray, v: np.ndarray, axis: int) -> np.ndarray:
    """A 1-D table shaped to broadcast along ``axis`` of ``a``."""
    return v.reshape((1,) * axis + (-1,) + (1,) * (a.ndim - axis - 1))


# --- the kernel --------------------------------------------------------------------------------

def _setup(ctx, shape, rest):
    """Everything the per-axis tables need: (out, scale, out_f, ROI per axis, mode, ctm,
    nearest_mode), from the node's attributes and its roi / scales / sizes inputs."""
    roi, scales, sizes = _inputs(ctx, rest)
    out, scale, out_f, axes = _plan(ctx, shape, scales, sizes)
    mode = ctx.attr("mode", "nearest")
    ctm = ctx.attr("coordinate_transformation_mode", "half_pixel") if ctx.version >= 11 \
        else "asymmetric"
    nearest = ctx.attr("nearest_mode", "round_prefer_floor")
    roi = _present(roi)
    full_roi = [(0.0, 1.0)] * len(shape)
    if ctm == "tf_crop_and_resize":
        if roi is None:
            raise ctx.error("coordinate_transformation_mode tf_crop_and_resize needs 'roi'")
        roi = [float(v) for v in roi.reshape(-1)]
        if len(roi) != 2 * len(axes):
            raise ctx.error(f"roi has {len(roi)} values; expected {2 * len(axes)}")
        for i, a in enumerate(axes):
            full_roi[a] = (roi[i], roi[len(axes) + i])
    return out, scale, out_f, full_roi, mode, ctm, nearest


def _axis_table(ctx, plan, a, n_in):
    """Along axis ``a``: None where the axis is left as is, else (source indices [n_out] for
    nearest or [n_out, taps], weights [n_out, taps] or None for nearest, extrapolated mask or
    None). Sizes 0 give empty indices."""
    out, scale, out_f, full_roi, mode, ctm, nearest = plan
    n_out = out[a]
    if n_out == n_in and scale[a] == 1.0 and full_roi[a] == (0.0, 1.0):
        return None
    if n_out == 0 or n_in == 0:
        return np.zeros((n_out, 0), np.intp), np.zeros((n_out, 0)), None
    src, extra = _source_coords(ctm, n_out, n_in, scale[a], out_f[a], full_roi[a])
    if extra is not None and not extra.any():
        extra = None
    if mode == "nearest":
        nm = nearest if ctx.version >= 11 else ("ceil" if scale[a] < 1 else "floor")
        return np.clip(_nearest_index(src, nm), 0, n_in - 1).astype(np.intp), None, extra
    idx, w = _taps(ctx, mode, src, n_in, scale[a])
    return idx, w, extra


def _extrapolated(rank: int, masks) -> np.ndarray:
    """Where any axis's source coordinate fell outside the input (tf_crop_and_resize; the
    output there is ``extrapolation_value``); ``masks``: (axis, mask) pairs."""
    hit = np.zeros((1,) * rank, bool)
    for a, m in masks:
        hit = hit | _along(hit, m, a)
    return hit


@register("Resize", versions=(10, 11, 13, 18, 19), infer=_resize_infer)
def resize(ctx, x, *rest):
    # x: [d0, ..., dn] -> [floor(d * scale) or sizes per axis], same dtype
    plan = _setup(ctx, x.shape, rest)
    out, mode = plan[0], plan[4]
    rank = x.ndim
    work = np.dtype(np.float32 if x.dtype in (np.float16, np.float32) else np.float64)
    y = x if mode == "nearest" else x.astype(work, copy=False)
    masks = []
    # shrink first: later axes then work on less data
    for a in sorted(range(rank), key=lambda a: out[a] / max(x.shape[a], 1)):
        table = _axis_table(ctx, plan, a, x.shape[a])
        if table is None:
            continue
        idx, w, extra = table
        if extra is not None:
            masks.append((a, extra))
        if idx.shape[-1] == 0:
            shape = list(y.shape)
            shape[a] = out[a]
            y = np.zeros(shape, y.dtype)
        elif w is None:  # nearest
            y = np.take(y, idx, axis=a)
        else:
            w = w.astype(work)
            acc = np.take(y, idx[:, 0], axis=a) * _along(y, w[:, 0], a)
            for k in range(1, idx.shape[1]):
                acc += np.take(y, idx[:, k], axis=a) * _along(y, w[:, k], a)
            y = acc
    if masks:
        hit = _extrapolated(rank, masks)
        y = np.where(hit, np.asarray(ctx.attr("extrapolation_value", 0.0)).astype(y.dtype), y)
    if y.dtype != x.dtype:
        if x.dtype.kind in "iu":
            info = np.iinfo(x.dtype)
            y = np.clip(np.round(y), info.min, info.max)
        y = y.astype(x.dtype)
    return np.ascontiguousarray(y) if y is not x else y.copy()


# --- gradient ----------------------------------------------------------------------------------
# To X only (none to roi, scales or sizes, which must be known while planning). Each resized axis
# is a linear map out = M in with M[o, idx[o, k]] += w[o, k] (nearest: one tap of weight 1), so
# dX is dY (zero where the output was extrapolated) through the transposed maps, axis by axis:
# each tap's share of dY is scatter-added to its source index. The tables are the forward's own
# (_axis_table at the forward's schema version, passed as ``of_version``); the backward keeps
# only dY and X's shape.

@gradient("Resize")
def _resize_grad(g, node, dys):
    out = [None] * len(node.inputs)
    if dys[0] is None or not g.needs(node, 0):
        return out
    x_shape = g.op("Shape", [node.inputs[0]])  # folded while planning
    out[0] = g.et("ResizeGrad", [dys[0], x_shape, *node.inputs[1:]],
                  of_version=forward_context(g, node).version, **node.attrs)
    return out


def _forward(ctx: OpContext) -> OpContext:
    fctx = ctx.extra.get("forward")
    if fctx is None:
        v = int(ctx.attr("of_version"))
        fctx = ctx.extra["forward"] = OpContext("Resize", "", ctx.name, v, v, ctx.attrs,
                                                ctx.n_inputs - 1, 1)
    return fctx


def _resize_grad_infer(ctx: OpContext, dy: TensorType, x_shape: TensorType, *rest):
    shape = tuple(int(v) for v in np.asarray(constant(ctx, x_shape, "X_shape")).reshape(-1))
    _, scales, sizes = _inputs(_forward(ctx), rest)
    constant(ctx, scales, "scales")
    constant(ctx, sizes, "sizes")
    return [TensorType(dy.dtype, shape)]


def _scatter_rows(dst: np.ndarray, idx: np.ndarray, src: np.ndarray) -> None:
    """dst[idx[o]] += src[o] for every row o; idx may repeat (rows are summed per index)."""
    order = np.argsort(idx, kind="stable")
    sidx = idx[order]
    starts = np.flatnonzero(np.concatenate([[True], sidx[1:] != sidx[:-1]]))
    dst[sidx[starts]] += np.add.reduceat(src[order], starts, axis=0)


@register("ResizeGrad", versions=(1,), infer=_resize_grad_infer, domain=ET_DOMAIN)
def resize_grad(ctx, dy, x_shape, *rest):
    # dy (Resize's output), X's shape, the forward's roi / scales / sizes -> dX (X's shape)
    fctx = _forward(ctx)
    shape = tuple(int(v) for v in np.asarray(x_shape).reshape(-1))
    plan = _setup(fctx, shape, rest)
    rank = len(shape)
    work = np.dtype(np.float32 if dy.dtype in (np.float16, np.float32) else np.float64)
    tables = {a: _axis_table(fctx, plan, a, shape[a]) for a in range(rank)}
    masks = [(a, t[2]) for a, t in tables.items() if t is not None and t[2] is not None]
    dx = dy.astype(work, copy=False)
    if masks:
        dx = np.where(_extrapolated(rank, masks), work.type(0), dx)
    # the adjoint of the forward's per-axis maps (they commute): shrink the data first
    for a in sorted(range(rank), key=lambda a: shape[a] / max(dx.shape[a], 1)):
        if tables[a] is None:
            continue
        idx, w, _ = tables[a]
        rows = np.moveaxis(dx, a, 0)
        grad = np.zeros((shape[a],) + rows.shape[1:], work)
        if idx.size:
            flat, gflat = rows.reshape(rows.shape[0], -1), grad.reshape(shape[a], -1)
            if w is None:
                _scatter_rows(gflat, idx, flat)
            else:
                w = w.astype(work)
                for k in range(idx.shape[1]):
                    _scatter_rows(gflat, idx[:, k], flat * w[:, k, None])
        dx = np.moveaxis(grad, 0, a)
    return np.ascontiguousarray(dx).astype(dy.dtype, copy=False)
