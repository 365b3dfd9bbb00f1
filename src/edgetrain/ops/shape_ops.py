"""Outputs known from shapes or attributes: Shape, Size, ConstantOfShape, Constant, Range.

Shape and Size give their output *value* in the shape rule (the input's shape is known while
planning), which is what folds the Shape→Gather→Unsqueeze→Concat→Reshape chains of torch
exports.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from .registry import OpContext, TensorType, register
from .rules import INT64, constant

SINCE_21 = (21, 23, 24, 25)  # versions that only added element types


# --- Shape / Size ------------------------------------------------------------------------------

def _shape_value(ctx: OpContext, shape: Sequence[int]) -> np.ndarray:
    rank = len(shape)
    start, end = 0, rank
    if ctx.version >= 15:  # start/end, clamped to [0, rank] after counting negatives from the end
        start = int(ctx.attr("start", 0))
        end = ctx.attr("end")
        end = rank if end is None else int(end)
        start = min(max(start + rank if start < 0 else start, 0), rank)
        end = min(max(end + rank if end < 0 else end, 0), rank)
    return np.array(list(shape)[start:end], dtype=np.int64).reshape(-1)


def _shape_infer(ctx, x):
    v = _shape_value(ctx, x.shape)
    return [TensorType(INT64, v.shape, v)]


@register("Shape", versions=(1, 13, 15, 19) + SINCE_21, infer=_shape_infer)
def shape(ctx, x):  # x: any -> (rank,) int64, or the [start:end] part of it
    return _shape_value(ctx, x.shape)


def _size_infer(ctx, x):
    return [TensorType(INT64, (), np.array(x.size, dtype=np.int64))]


@register("Size", versions=(1, 13, 19) + SINCE_21, infer=_size_infer)
def size(ctx, x):  # x: any -> () int64 element count
    return np.array(x.size, dtype=np.int64)


# --- ConstantOfShape ---------------------------------------------------------------------------

def _fill_value(ctx: OpContext) -> np.ndarray:
    v = ctx.attr("value")
    if v is None:
        return np.zeros((), dtype=np.float32)
    v = np.asarray(v)
    if v.size != 1:
        raise ctx.error(f"the 'value' attribute must hold one element, it holds {v.size}")
    return v.reshape(())


def _cos_shape(ctx: OpContext, shape) -> tuple[int, ...]:
    dims = tuple(int(d) for d in np.asarray(shape).reshape(-1))
    if any(d < 0 for d in dims):
        raise ctx.error(f"shape {list(dims)} has a negative dim")
    return dims


def _cos_infer(ctx, shape):
    dims = _cos_shape(ctx, constant(ctx, shape, "input"))
    return [TensorType(_fill_value(ctx).dtype, dims)]


@register("ConstantOfShape", versions=(9, 20) + SINCE_21, infer=_cos_infer)
def constant_of_shape(ctx, shape):  # shape: (r,) int64 -> tensor of that shape filled with value
    v = _fill_value(ctx)
    return np.full(_cos_shape(ctx, shape), v, dtype=v.dtype)


# --- Constant ----------------------------------------------------------------------------------

CONSTANT_ATTRS = ("value", "sparse_value", "value_float", "value_floats", "value_int",
                  "value_ints", "value_string", "value_strings")


def _dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """A SparseTensorProto as a dense array: indices are linear [NNZ] or coordinates [NNZ, rank]."""
    values = numpy_helper.to_array(sparse.values)
    dims = tuple(int(d) for d in sparse.dims)
    out = np.zeros(dims, dtype=values.dtype)
    idx = numpy_helper.to_array(sparse.indices).astype(np.int64)
    if idx.ndim == 2:
        out[tuple(idx.T)] = values
    else:
        out.reshape(-1)[idx] = values
    return out


def _constant_value(ctx: OpContext) -> np.ndarray:
    given = [a for a in CONSTANT_ATTRS if a in ctx.attrs]
    if len(given) != 1:
        raise ctx.error(f"exactly one of the attributes {', '.join(CONSTANT_ATTRS)} must be set "
                        f"(found {given or 'none'})")
    name, v = given[0], ctx.attrs[given[0]]
    if name == "value":
        return np.asarray(v)
    if name == "sparse_value":
        return _dense(v)
    if name in ("value_float", "value_floats"):
        return np.asarray(v, dtype=np.float32)
    if name in ("value_int", "value_ints"):
        return np.asarray(v, dtype=np.int64)
    if name == "value_string":
        return np.array(v, dtype=object)
    out = np.empty(len(v), dtype=object)  # value_strings
    out[:] = list(v)
    return out


def _constant_infer(ctx):
    v = _constant_value(ctx)
    return [TensorType(v.dtype, v.shape, v)]


@register("Constant", versions=(1, 9, 11, 12, 13, 19) + SINCE_21, infer=_constant_infer)
def constant_(ctx):  # () -> the attribute's tensor
    return _constant_value(ctx)


# --- Range -------------------------------------------------------------------------------------

_STASH = {1: np.dtype(np.float32), 11: np.dtype(np.float64)}


def _scalar(ctx: OpContext, v, what: str):
    v = np.asarray(v)
    if v.size != 1:
        raise ctx.error(f"{what} must be a scalar, got shape {list(v.shape)}")
    return v.reshape(())


def _range_count(ctx: OpContext, start, limit, delta) -> int:
    s, l, d = (_scalar(ctx, v, n) for v, n in ((start, "start"), (limit, "limit"),
                                               (delta, "delta")))
    if s.dtype.kind in "iu":
        s, l, d = int(s), int(l), int(d)
        if d == 0:
            raise ctx.error("delta must not be 0")
        return max(-((s - l) // d), 0)  # exact ceil((l - s) / d)
    s, l, d = float(s), float(l), float(d)
    if d == 0 or not all(map(math.isfinite, (s, l, d))):
        raise ctx.error(f"Range({s}, {l}, {d}) has no finite length")
    return max(math.ceil((l - s) / d), 0)


def _range_infer(ctx, start, limit, delta):
    n = _range_count(ctx, constant(ctx, start, "start"), constant(ctx, limit, "limit"),
                     constant(ctx, delta, "delta"))
    return [TensorType(start.dtype, (n,))]


@register("Range", versions=(11, 27), infer=_range_infer)
def range_(ctx, start, limit, delta):  # scalars -> (ceil((limit - start) / delta),)
    n = _range_count(ctx, start, limit, delta)
    dtype = np.asarray(start).dtype
    if dtype.kind in "iu":
        return (int(start) + np.arange(n, dtype=np.int64) * int(delta)).astype(dtype)
    work = np.dtype(np.float64)
    if dtype == np.float16 and ctx.version >= 27:
        work = _STASH.get(int(ctx.attr("stash_type", 1)), work)
    s, d = np.asarray(start).astype(work), np.asarray(delta).astype(work)
    return (s + np.arange(n, dtype=work) * d).reshape(n).astype(dtype)

