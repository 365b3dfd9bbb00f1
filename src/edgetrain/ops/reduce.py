"""Reductions: ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceL2, ReduceLogSumExp; ArgMax.

The Reduce* ops share one shape rule and one axes reading, driven by the table at the bottom:
``axes`` is an attribute before the version where it became an optional input; empty or absent
axes reduce every dimension, or leave the input as it is when ``noop_with_empty_axes`` is set.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .registry import ET_DOMAIN, OpContext, TensorType, gradient, register
from .rules import INT64, constant, normalize_axes, normalize_axis, shape_error

F16, F32, F64 = np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)


# --- shared: axes and the reduced shape --------------------------------------------------------

def reduce_axes(ctx: OpContext, rank: int, axes: Sequence[int] | None) -> tuple[int, ...] | None:
    """Normalized axes to reduce, or None when the op is the identity (noop_with_empty_axes)."""
    if axes is None or len(axes) == 0:
        return None if ctx.attr("noop_with_empty_axes", 0) else tuple(range(rank))
    return tuple(sorted(normalize_axes(ctx, axes, rank)))


def reduced_shape(shape: Sequence[int], axes: Sequence[int], keepdims: bool) -> tuple[int, ...]:
    if keepdims:
        return tuple(1 if i in axes else int(d) for i, d in enumerate(shape))
    return tuple(int(d) for i, d in enumerate(shape) if i not in axes)


def _given_axes(ctx: OpContext, axes: np.ndarray | None) -> list[int] | None:
    """The axes as given: the attribute before REDUCE_OPS' axes-input version, else the input."""
    if ctx.version < REDUCE_OPS[ctx.op_type][1]:
        return ctx.attr("axes")
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


def _axes_of(ctx: OpContext, x_rank: int, axes_t: TensorType | None):
    if axes_t is not None and ctx.version < REDUCE_OPS[ctx.op_type][1]:
        raise ctx.error(f"{ctx.op_type}-{ctx.version} takes axes as an attribute, not an input")
    return reduce_axes(ctx, x_rank, _given_axes(ctx, constant(ctx, axes_t, "axes")))


def _reduce_infer(ctx: OpContext, x: TensorType, axes_t: TensorType | None = None
                  ) -> list[TensorType]:
    if ctx.op_type == "ReduceLogSumExp" and ctx.version >= 28 and np.dtype(x.dtype).kind != "f":
        raise shape_error(ctx, "ReduceLogSumExp-28 takes floating-point input only", x)
    axes = _axes_of(ctx, x.rank, axes_t)
    if axes is None:
        return [TensorType(x.dtype, x.shape)]
    return [TensorType(x.dtype, reduced_shape(x.shape, axes, bool(ctx.attr("keepdims", 1))))]


# --- the reductions: f(x, axes, keepdims) -> array, in x's element type --------------------------

def _acc(x: np.ndarray) -> np.dtype:
    """Accumulator type: float32 for float16, float64 for integers that go through sqrt/exp."""
    return F32 if x.dtype == F16 else (x.dtype if x.dtype.kind == "f" else F64)


def _sum(x, axes, kd):
    acc = F32 if x.dtype == F16 else x.dtype
    return np.add.reduce(x, axis=axes, keepdims=kd, dtype=acc)


def _mean(x, axes, kd):
    count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
    if x.dtype.kind == "f":
        s = np.asarray(np.add.reduce(x, axis=axes, keepdims=kd, dtype=_acc(x)))
        return np.divide(s, s.dtype.type(count), out=s)
    s = np.add.reduce(x, axis=axes, keepdims=kd, dtype=np.int64 if x.dtype.kind == "i" else
                      np.uint64)
    return np.true_divide(s, count)  # cast back truncates toward zero, like numpy's mean


def _extreme(ufunc, empty_fill):
    def f(x, axes, kd):
        if x.size == 0:  # reduction over an empty set: -inf/+inf, or the type's min/max
            return ufunc.reduce(x, axis=axes, keepdims=kd, initial=empty_fill(x.dtype))
        return ufunc.reduce(x, axis=axes, keepdims=kd)
    return f


def _lowest(dtype: np.dtype):
    return False if dtype.kind == "b" else (-np.inf if dtype.kind == "f" else np.iinfo(dtype).min)


def _highest(dtype: np.dtype):
    return True if dtype.kind == "b" else (np.inf if dtype.kind == "f" else np.iinfo(dtype).max)


def _l2(x, axes, kd):
    xa = x.astype(_acc(x), copy=False)
    return np.sqrt(np.add.reduce(xa * xa, axis=axes, keepdims=kd))


def _log_sum_exp(x, axes, kd):
    xa = x.astype(_acc(x), copy=False)
    m = np.array(np.maximum.reduce(xa, axis=axes, keepdims=True, initial=-np.inf))
    m[~np.isfinite(m)] = 0  # all -inf (or empty): log(0) + 0 = -inf; +inf stays +inf
    s = np.add.reduce(np.exp(xa - m), axis=axes, keepdims=True)
    with np.errstate(divide="ignore"):
        y = np.log(s) + m
    return y if kd else y.reshape(reduced_shape(x.shape, axes, False))


ReduceFn = Callable[[np.ndarray, tuple, bool], np.ndarray]


def _make_kernel(fn: ReduceFn):
    def kernel(ctx, x, axes=None):  # x [...] -> reduced over axes (kept as 1s with keepdims)
        ax = reduce_axes(ctx, x.ndim, _given_axes(ctx, axes))
        if ax is None:
            return x.copy()
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            y = np.asarray(fn(x, ax, bool(ctx.attr("keepdims", 1))))
            return y.astype(x.dtype, copy=False)
    return kernel


# op -> (schema versions, first version taking axes as an input, reduction)
REDUCE_OPS: dict[str, tuple[tuple[int, ...], int, ReduceFn]] = {
    "ReduceSum": ((1, 11, 13), 13, _sum),
    "ReduceMean": ((1, 11, 13, 18), 18, _mean),
    "ReduceMax": ((1, 11, 12, 13, 18, 20), 18, _extreme(np.maximum, _lowest)),
    "ReduceMin": ((1, 11, 12, 13, 18, 20), 18, _extreme(np.minimum, _highest)),
    "ReduceL2": ((1, 11, 13, 18), 18, _l2),
    "ReduceLogSumExp": ((1, 11, 13, 18, 28), 18, _log_sum_exp),
}

for _op, (_versions, _, _fn) in REDUCE_OPS.items():
    register(_op, versions=_versions, infer=_reduce_infer)(_make_kernel(_fn))


# --- gradients: dx = dy (kept dims, broadcast back) * d reduce / dx -----------------------------

def _argext_share(x, y):  # ties share the gradient evenly, as torch's amax/amin do
    hit = (x == y)
    return hit / hit.sum(axis=tuple(i for i in range(x.ndim) if y.shape[i] == 1 and
                                    x.shape[i] != 1), keepdims=True)


# op -> d y / d x as a function of x and y (y with kept dims, broadcast against x)
REDUCE_GRADS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "ReduceSum": lambda x, y: 1,
    "ReduceMean": lambda x, y: y.size / x.size,
    "ReduceMax": _argext_share,
    "ReduceMin": _argext_share,
    "ReduceL2": lambda x, y: np.divide(x, y, out=np.zeros_like(x), where=y != 0),
    "ReduceLogSumExp": lambda x, y: np.exp(x - y),
}


def _reduce_grad(g, node, dys):
    inputs = [dys[0], node.inputs[0], node.outputs[0]] + list(node.inputs[1:2])
    return [g.et("ReduceGrad", inputs, of=node.op_type, **node.attrs)]


for _op in REDUCE_OPS:
    gradient(_op)(_reduce_grad)


def _reduce_grad_infer(ctx: OpContext, dy: TensorType, x: TensorType, *rest):
    return [TensorType(dy.dtype, x.shape)]


@register("ReduceGrad", versions=(1,), infer=_reduce_grad_infer, domain=ET_DOMAIN)
def reduce_grad(ctx, dy, x, y, axes=None):  # dy, y (reduced), x (S) -> dx (S)
    given = ctx.attr("axes") if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    ax = reduce_axes(ctx, x.ndim, given)
    if ax is None:  # the forward was the identity
        return dy.copy()
    kept = reduced_shape(x.shape, ax, True)
    dyk, yk = dy.reshape(kept), y.reshape(kept)
    dx = np.empty(x.shape, dtype=dy.dtype)
    np.multiply(dyk, REDUCE_GRADS[ctx.attr("of")](x, yk), out=dx, casting="unsafe")
    return dx


# --- ArgMax ------------------------------------------------------------------------------------

def _argmax_infer(ctx: OpContext, x: TensorType) -> list[TensorType]:
    axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), x.rank)
    if x.shape[axis] == 0:
        raise shape_error(ctx, f"cannot take the arg max over the empty axis {axis}", x)
    return [TensorType(INT64, reduced_shape(x.shape, (axis,), bool(ctx.attr("keepdims", 1))))]


@register("ArgMax", versions=(1, 11, 12, 13), infer=_argmax_infer)
def argmax(ctx, x):  # x [..., n, ...] -> int64 index along axis (kept as 1 with keepdims)
    axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), x.ndim)
    kd = bool(ctx.attr("keepdims", 1))
    if ctx.attr("select_last_index", 0):
        idx = np.argmax(np.flip(x, axis), axis=axis, keepdims=kd)
        idx = (x.shape[axis] - 1) - idx
    else:
        idx = np.argmax(x, axis=axis, keepdims=kd)
    return np.asarray(idx).astype(INT64, copy=False)
