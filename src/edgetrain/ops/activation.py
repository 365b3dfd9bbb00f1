"""Activation ops: Relu family, Gelu, hard sigmoid/swish, Softmax/LogSoftmax, Dropout, Identity."""
from __future__ import annotations

import math

import numpy as np

from .registry import OpContext, TensorType, gradient, register
from .rules import BOOL, normalize_axis, same_as
from .elementwise import erf


def _keep(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """numpy may widen (0-d operands, float64 helpers); ONNX keeps the input's element type."""
    return x if x.dtype == dtype else np.asarray(x).astype(dtype, copy=False)


def _c(x: np.ndarray, value: float):
    """A scalar attribute in x's element type (no silent widening of float16/float32)."""
    return x.dtype.type(value)


# --- pointwise activations ---------------------------------------------------------------------

@register("Relu", versions=(1, 6, 13, 14), infer=same_as(0))
def relu(ctx, x):  # x: any shape -> same shape
    return _keep(np.maximum(x, _c(x, 0)), x.dtype)


@register("LeakyRelu", versions=(1, 6, 16), infer=same_as(0))
def leaky_relu(ctx, x):  # x: any shape -> same shape
    alpha = _c(x, ctx.attr("alpha", 0.01))
    return _keep(np.where(x < 0, x * alpha, x), x.dtype)


def _neg_expm1(x: np.ndarray) -> np.ndarray:
    """e^x - 1 for the non-positive part of x (no overflow warnings from the positive part)."""
    return np.expm1(np.minimum(x, _c(x, 0)))


@register("Elu", versions=(1, 6, 22), infer=same_as(0))
def elu(ctx, x):  # x: any shape -> same shape
    alpha = _c(x, ctx.attr("alpha", 1.0))
    return _keep(np.where(x > 0, x, alpha * _neg_expm1(x)), x.dtype)


@register("Selu", versions=(1, 6, 22), infer=same_as(0))
def selu(ctx, x):  # x: any shape -> same shape
    alpha = _c(x, ctx.attr("alpha", 1.67326319217681884765625))
    gamma = _c(x, ctx.attr("gamma", 1.05070102214813232421875))
    return _keep(gamma * np.where(x > 0, x, alpha * _neg_expm1(x)), x.dtype)


@register("Softplus", versions=(1, 22), infer=same_as(0))
def softplus(ctx, x):  # x: any shape -> same shape; log(1 + e^x) without overflow
    return _keep(np.logaddexp(_c(x, 0), x), x.dtype)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@register("Gelu", versions=(20,), infer=same_as(0))
def gelu(ctx, x):  # x: any shape -> same shape
    approximate = ctx.attr("approximate", "none")
    if approximate == "tanh":
        with np.errstate(over="ignore"):  # x^3 may overflow to inf: tanh saturates correctly
            inner = _c(x, _SQRT_2_OVER_PI) * (x + _c(x, 0.044715) * x * x * x)
        return _keep(_c(x, 0.5) * x * (_c(x, 1) + np.tanh(inner)), x.dtype)
    if approximate != "none":
        raise ctx.error(f"approximate={approximate!r} is not one of 'none', 'tanh'")
    x64 = x.astype(np.float64, copy=False)
    return _keep(0.5 * x64 * (1.0 + erf(x64 / math.sqrt(2.0))), x.dtype)


@register("HardSigmoid", versions=(1, 6, 22), infer=same_as(0))
def hard_sigmoid(ctx, x):  # x: any shape -> same shape
    alpha, beta = _c(x, ctx.attr("alpha", 0.2)), _c(x, ctx.attr("beta", 0.5))
    return _keep(np.clip(alpha * x + beta, _c(x, 0), _c(x, 1)), x.dtype)


@register("HardSwish", versions=(14, 22), infer=same_as(0))
def hard_swish(ctx, x):  # x: any shape -> same shape; x * HardSigmoid(x; 1/6, 1/2)
    gate = np.clip(_c(x, 1 / 6) * x + _c(x, 0.5), _c(x, 0), _c(x, 1))
    return _keep(x * gate, x.dtype)


# --- Softmax / LogSoftmax ----------------------------------------------------------------------
# opset 13: along one axis (default -1). opsets 1 and 11: the input is coerced to 2-D at `axis`
# (default 1), i.e. normalized over all the dimensions from `axis` on.

def _softmax_axis(ctx: OpContext, rank: int) -> int:
    default = -1 if ctx.version >= 13 else 1
    return normalize_axis(ctx, int(ctx.attr("axis", default)), max(rank, 1))


def _softmax_rule(ctx: OpContext, x: TensorType) -> list[TensorType]:
    _softmax_axis(ctx, x.rank)  # validate the axis while planning
    return [TensorType(x.dtype, x.shape)]


def _as_2d(ctx: OpContext, x: np.ndarray) -> tuple[np.ndarray, int]:
    """The array to normalize and the axis to normalize along (2-D coercion before opset 13)."""
    axis = _softmax_axis(ctx, x.ndim)
    if x.ndim == 0:
        return x.reshape(1), 0
    if ctx.version >= 13:
        return x, axis
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(rows, -1), 1


def _shifted(x: np.ndarray, axis: int) -> np.ndarray:
    """x minus its max along axis, in at least float32 (float16 sums lose too much)."""
    work = x.astype(np.promote_types(x.dtype, np.float32), copy=False)
    return work - np.max(work, axis=axis, keepdims=True)


@register("Softmax", versions=(1, 11, 13), infer=_softmax_rule)
def softmax(ctx, x):  # x: any shape -> same shape, rows along the axis sum to 1
    if x.size == 0:
        return x.copy()
    x2, axis = _as_2d(ctx, x)
    e = np.exp(_shifted(x2, axis))
    e /= np.sum(e, axis=axis, keepdims=True)
    return _keep(e.reshape(x.shape), x.dtype)


@register("LogSoftmax", versions=(1, 11, 13), infer=_softmax_rule)
def log_softmax(ctx, x):  # x: any shape -> same shape
    if x.size == 0:
        return x.copy()
    x2, axis = _as_2d(ctx, x)
    s = _shifted(x2, axis)
    s -= np.log(np.sum(np.exp(s), axis=axis, keepdims=True))
    return _keep(s.reshape(x.shape), x.dtype)


# --- Dropout -----------------------------------------------------------------------------------
# 1, 6: `is_test` attribute (0, the default, means training); mask has the input's type.
# 7: inference only; mask has the input's type.  10: mask is bool.
# 12+: `ratio` and `training_mode` are optional inputs; `seed` attribute.
# In training the mask is drawn from a per-node generator seeded with `seed` (0 when absent) that
# advances from one run to the next; its first draw equals the ONNX reference's
# (numpy's legacy RandomState(seed).uniform), so the official training tests reproduce exactly.

def _dropout_rule(ctx: OpContext, x: TensorType, *rest: TensorType | None) -> list[TensorType]:
    mask = TensorType(BOOL if ctx.version >= 10 else x.dtype, x.shape)
    return [TensorType(x.dtype, x.shape), mask][:max(ctx.n_outputs, 1)]


def _dropout_mode(ctx: OpContext, ratio, training_mode) -> tuple[bool, float]:
    if ctx.version < 7:
        return not ctx.attr("is_test", 0), float(ctx.attr("ratio", 0.5))
    if ctx.version < 12:
        return False, float(ctx.attr("ratio", 0.5))
    training = training_mode is not None and bool(np.asarray(training_mode).reshape(-1)[0])
    return training, 0.5 if ratio is None else float(np.asarray(ratio).reshape(-1)[0])


@register("Dropout", versions=(1, 6, 7, 10, 12, 13, 22), infer=_dropout_rule, foldable=False)
def dropout(ctx, x, ratio=None, training_mode=None):  # x: any shape -> (y, mask) same shape
    mask_dtype = BOOL if ctx.version >= 10 else x.dtype
    training, p = _dropout_mode(ctx, ratio, training_mode)
    if not 0.0 <= p <= 1.0:
        raise ctx.error(f"dropout ratio {p} is outside [0, 1]")
    if not training or p == 0.0:
        return x, np.ones(x.shape, dtype=mask_dtype)
    rng = ctx.extra.get("rng")
    if rng is None:
        rng = ctx.extra["rng"] = np.random.RandomState(int(ctx.attr("seed", 0)) % (1 << 32))
    keep = rng.random_sample(x.shape) >= p
    if p >= 1.0:
        y = np.zeros_like(x)
    else:
        y = _keep(np.where(keep, x * _c(x, 1.0 / (1.0 - p)), _c(x, 0)), x.dtype)
    return y, keep.astype(mask_dtype, copy=False)


# --- Identity ----------------------------------------------------------------------------------

@register("Identity", versions=(1, 13, 14, 16, 19, 21, 23, 24, 25), infer=same_as(0))
def identity(ctx, x):  # x: any shape -> the same array (values are never written in place)
    return x


@gradient("Identity")
def identity_grad(g, node, dys):
    return [dys[0]]
