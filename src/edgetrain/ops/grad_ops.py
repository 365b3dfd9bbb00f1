"""Generic ops of the backward graph (domain ai.edgetrain): seeds, zeros, undoing broadcast.

Op-specific backward kernels live in their op's family file, beside the forward kernel.
"""
from __future__ import annotations

import numpy as np

from .registry import ET_DOMAIN, OpContext, TensorType, register
from .rules import same_as, shape_error

V1 = (1,)


def sum_to_shape(dy: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``dy`` over the axes along which an array of ``shape`` was broadcast to dy's shape."""
    if dy.shape == tuple(shape):
        return dy
    lead = dy.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape)
                                      if s == 1 and dy.shape[lead + i] != 1)
    return dy.sum(axis=axes, keepdims=True).reshape(shape) if axes else dy.reshape(shape)


def _sum_to_infer(ctx: OpContext, dy: TensorType, like: TensorType):
    try:
        np.broadcast_shapes(like.shape, dy.shape)
    except ValueError:
        raise shape_error(ctx, "gradient does not broadcast from the input's shape", dy, like)
    return [TensorType(dy.dtype, like.shape)]


@register("SumTo", versions=V1, infer=_sum_to_infer, domain=ET_DOMAIN)
def sum_to(ctx, dy, like):  # dy (broadcast shape), like (S) -> (S)
    return sum_to_shape(dy, like.shape)


@register("OnesLike", versions=V1, infer=same_as(0), domain=ET_DOMAIN)
def ones_like(ctx, x):  # x (S) -> ones (S): the seed of the loss gradient
    return np.ones_like(x)


@register("ZerosLike", versions=V1, infer=same_as(0), domain=ET_DOMAIN)
def zeros_like(ctx, x):  # x (S) -> zeros (S): gradient of a value the loss does not depend on
    return np.zeros_like(x)


@register("Scale", versions=V1, infer=same_as(0), domain=ET_DOMAIN)
def scale(ctx, x):  # x (S) -> alpha * x (S), alpha in x's dtype
    return x * np.asarray(ctx.attr("alpha", 1.0), dtype=x.dtype)


def _cast_to_infer(ctx: OpContext, x: TensorType, like: TensorType):
    return [TensorType(like.dtype, x.shape)]


@register("CastLikeInput", versions=V1, infer=_cast_to_infer, domain=ET_DOMAIN)
def cast_like_input(ctx, x, like):  # x (S), like (any) -> x in like's dtype (S)
    return x.astype(like.dtype, copy=False)
