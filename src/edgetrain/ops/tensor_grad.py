"""Backward kernels of the tensor layout ops (their gradient rules are in tensor.py)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .registry import ET_DOMAIN, TensorType, register
from .rules import constant, normalize_axis, shape_error
from .tensor import _concat_axis, _ints, _slice_args, _slices, forward_ctx


def _shape_type(ctx, dtype, shape_t: TensorType) -> TensorType:
    return TensorType(dtype, tuple(_ints(constant(ctx, shape_t, "shape"))))


def _reshape_to_infer(ctx, dy, shape):
    out = _shape_type(ctx, dy.dtype, shape)
    if out.size != dy.size:
        raise shape_error(ctx, f"cannot reshape the gradient to {list(out.shape)}", dy)
    return [out]


@register("ReshapeTo", versions=(1,), infer=_reshape_to_infer, domain=ET_DOMAIN)
def reshape_to(ctx, dy, shape):  # dy (any), shape: exact dims (no 0 / -1 rules) -> dy reshaped
    return dy.reshape(_ints(shape))


def _concat_pieces(ctx, dtype, shapes) -> tuple[int, list[TensorType]]:
    types = [None if s is None else _shape_type(ctx, dtype, s) for s in shapes]
    return _concat_axis(forward_ctx(ctx, "Concat"), [t for t in types if t is not None]), types


def _concat_grad_infer(ctx, dy, *shapes):
    _, types = _concat_pieces(ctx, dy.dtype, shapes)
    return [types[i] for i in ctx.attr("wrt")]


@register("ConcatGrad", versions=(1,), infer=_concat_grad_infer, domain=ET_DOMAIN)
def concat_grad_kernel(ctx, dy, *shapes):  # dy, shapes of the inputs -> slabs of the wanted ones
    consts = [None if s is None else TensorType.of(s) for s in shapes]
    axis, types = _concat_pieces(ctx, dy.dtype, consts)
    ends = np.cumsum([0 if t is None else t.shape[axis] for t in types])
    index = [slice(None)] * dy.ndim
    out = []
    for i in ctx.attr("wrt"):
        index[axis] = slice(int(ends[i]) - types[i].shape[axis], int(ends[i]))
        out.append(dy[tuple(index)])
    return tuple(out)


def _split_grad_pieces(ctx, pieces: Sequence[TensorType | None]) -> tuple[int, list[TensorType]]:
    n = len(pieces) // 2
    dtype = next(t.dtype for t in pieces[:n] if t is not None)
    types = [d if d is not None else _shape_type(ctx, dtype, s)
             for d, s in zip(pieces[:n], pieces[n:])]
    return normalize_axis(ctx, int(ctx.attr("axis", 0)), types[0].rank), types


def _split_grad_infer(ctx, *pieces):
    axis, types = _split_grad_pieces(ctx, pieces)
    shape = list(types[0].shape)
    shape[axis] = sum(t.shape[axis] for t in types)
    return [TensorType(types[0].dtype, tuple(shape))]


@register("SplitGrad", versions=(1,), infer=_split_grad_infer, domain=ET_DOMAIN)
def split_grad_kernel(ctx, *pieces):  # dy_0..dy_n-1 (some absent), shapes of the absent -> dx
    n = len(pieces) // 2
    dtype = next(d.dtype for d in pieces[:n] if d is not None)
    ps = [d if d is not None else np.zeros(_ints(s), dtype) for d, s in zip(pieces[:n], pieces[n:])]
    return np.concatenate(ps, axis=normalize_axis(ctx, int(ctx.attr("axis", 0)), ps[0].ndim))


def _slice_grad_infer(ctx, dy, shape, *args):
    return [_shape_type(ctx, dy.dtype, shape)]


@register("SliceGrad", versions=(1,), infer=_slice_grad_infer, domain=ET_DOMAIN)
def slice_grad_kernel(ctx, dy, shape, starts=None, ends=None, axes=None, steps=None):
    fctx = forward_ctx(ctx, "Slice")  # dy, x's shape, the forward's starts/ends/axes/steps
    shape = _ints(shape)
    index, _ = _slices(fctx, shape, *_slice_args(fctx, starts, ends, axes, steps))
    dx = np.zeros(shape, dtype=dy.dtype)
    dx[index] = dy
    return dx
