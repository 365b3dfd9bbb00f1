"""Resize (opset 10, 11, 13, 18, 19): nearest, N-linear and N-cubic interpolation.

Interpolation is separable: each resized axis is done in turn with a per-axis table of source
indices and weights (one gather per filter tap), never per pixel. The coordinate transformation,
nearest rounding, cubic coefficients, ``exclude_outside``, ``tf_crop_and_resize`` extrapolation
and the v18 ``antialias`` filter stretching follow the ONNX specification (and its reference
implementation, which the node tests come from).
"""
from __future__ import annotations

import math

import numpy as np

from .registry import OpContext, TensorType, register
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

@register("Resize", versions=(10, 11, 13, 18, 19), infer=_resize_infer)
def resize(ctx, x, *rest):
    # x: [d0, ..., dn] -> [floor(d * scale) or sizes per axis], same dtype
    roi, scales, sizes = _inputs(ctx, rest)
    out, scale, out_f, axes = _plan(ctx, x.shape, scales, sizes)
    mode = ctx.attr("mode", "nearest")
    ctm = ctx.attr("coordinate_transformation_mode", "half_pixel") if ctx.version >= 11 \
        else "asymmetric"
    nearest = ctx.attr("nearest_mode", "round_prefer_floor")
    roi = _present(roi)
    rank = x.ndim
    full_roi = [(0.0, 1.0)] * rank
    if ctm == "tf_crop_and_resize":
        if roi is None:
            raise ctx.error("coordinate_transformation_mode tf_crop_and_resize needs 'roi'")
        roi = [float(v) for v in roi.reshape(-1)]
        if len(roi) != 2 * len(axes):
            raise ctx.error(f"roi has {len(roi)} values; expected {2 * len(axes)}")
        for i, a in enumerate(axes):
            full_roi[a] = (roi[i], roi[len(axes) + i])

    work = np.dtype(np.float32 if x.dtype in (np.float16, np.float32) else np.float64)
    y = x if mode == "nearest" else x.astype(work, copy=False)
    masks = []
    # shrink first: later axes then work on less data
    for a in sorted(range(rank), key=lambda a: out[a] / max(x.shape[a], 1)):
        n_in, n_out = x.shape[a], out[a]
        if n_out == n_in and scale[a] == 1.0 and full_roi[a] == (0.0, 1.0):
            continue
        if n_out == 0 or n_in == 0:
            shape = list(y.shape)
            shape[a] = n_out
            y = np.zeros(shape, y.dtype)
            continue
        src, extra = _source_coords(ctm, n_out, n_in, scale[a], out_f[a], full_roi[a])
        if extra is not None and extra.any():
            masks.append((a, extra))
        if mode == "nearest":
            nm = nearest if ctx.version >= 11 else ("ceil" if scale[a] < 1 else "floor")
            idx = np.clip(_nearest_index(src, nm), 0, n_in - 1).astype(np.intp)
            y = np.take(y, idx, axis=a)
            continue
        idx, w = _taps(ctx, mode, src, n_in, scale[a])
        w = w.astype(work)
        acc = np.take(y, idx[:, 0], axis=a) * _along(y, w[:, 0], a)
        for k in range(1, idx.shape[1]):
            acc += np.take(y, idx[:, k], axis=a) * _along(y, w[:, k], a)
        y = acc
    if masks:
        hit = np.zeros((1,) * rank, bool)
        for a, m in masks:
            hit = hit | _along(hit, m, a)
        y = np.where(hit, np.asarray(ctx.attr("extrapolation_value", 0.0)).astype(y.dtype), y)
    if y.dtype != x.dtype:
        if x.dtype.kind in "iu":
            info = np.iinfo(x.dtype)
            y = np.clip(np.round(y), info.min, info.max)
        y = y.astype(x.dtype)
    return np.ascontiguousarray(y) if y is not x else y.copy()
