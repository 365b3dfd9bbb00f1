"""Shape rules and helpers shared by the op families."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx.helper

from ..errors import ConstantRequiredError, ShapeError
from .registry import OpContext, TensorType

BOOL = np.dtype(np.bool_)
INT64 = np.dtype(np.int64)


def np_dtype(onnx_elem_type: int) -> np.dtype:
    """numpy dtype of an ONNX TensorProto element type."""
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(onnx_elem_type))


def shape_error(ctx: OpContext, message: str, *types: TensorType | None) -> ShapeError:
    shapes = ", ".join("absent" if t is None else f"{t.dtype}{list(t.shape)}" for t in types)
    extra = f" (input types: {shapes})" if types else ""
    return ShapeError(f"{ctx.op_type} node {ctx.name!r}: {message}{extra}")


def broadcast_shapes(ctx: OpContext, *types: TensorType) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*(t.shape for t in types)))
    except ValueError:
        raise shape_error(ctx, "input shapes do not broadcast together", *types) from None


def same_as(index: int = 0, dtype: np.dtype | None = None):
    """Rule: every output has the dtype and shape of input ``index`` (or the given dtype)."""

    def rule(ctx: OpContext, *ins: TensorType | None) -> list[TensorType]:
        t = ins[index]
        return [TensorType(np.dtype(dtype or t.dtype), t.shape)] * max(ctx.n_outputs, 1)

    return rule


def broadcast(dtype: np.dtype | None = None, inputs: Sequence[int] | None = None,
              dtype_from: int = 0):
    """Rule: one output whose shape is the broadcast of the inputs' shapes (multidirectional)."""

    def rule(ctx: OpContext, *ins: TensorType | None) -> list[TensorType]:
        chosen = [ins[i] for i in (inputs if inputs is not None else range(len(ins)))
                  if i < len(ins) and ins[i] is not None]
        shape = broadcast_shapes(ctx, *chosen)
        return [TensorType(np.dtype(dtype or ins[dtype_from].dtype), shape)]

    return rule


def normalize_axis(ctx: OpContext, axis: int, rank: int, *, allow_end: bool = False) -> int:
    """Axis in [-rank, rank) (or [-rank-1, rank] with ``allow_end``) mapped to [0, rank)."""
    hi = rank + 1 if allow_end else rank
    if not -hi <= axis < hi:
        raise ctx.error(f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis + hi if axis < 0 else axis


def normalize_axes(ctx: OpContext, axes: Sequence[int], rank: int) -> tuple[int, ...]:
    out = tuple(normalize_axis(ctx, int(a), rank) for a in axes)
    if len(set(out)) != len(out):
        raise ctx.error(f"axes {list(axes)} repeat an axis")
    return out


def constant(ctx: OpContext, t: TensorType | None, what: str) -> np.ndarray | None:
    """The value of an input that must be known while planning (shape, axes, pads...)."""
    if t is None:
        return None
    if t.value is None:
        raise ConstantRequiredError(
            f"{ctx.op_type} node {ctx.name!r}: input {what!r} must be a constant or computable "
            "from shapes while planning; it depends on run-time data")
    return t.value


def input_or_attr(ctx: OpContext, t: TensorType | None, attr: str, what: str | None = None):
    """Axes-like parameter that moved from an attribute to an input in some opset."""
    if t is not None:
        v = constant(ctx, t, what or attr)
        return [int(x) for x in np.asarray(v).reshape(-1)]
    v = ctx.attr(attr)
    return None if v is None else list(v)
