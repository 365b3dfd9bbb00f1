"""Activation ops: Relu family, Gelu, hard sigmoid/swish, Softmax/LogSoftmax, Dropout, Identity."""
from __future__ import annotations

import math

import numpy as np

from .registry import (ET_DOMAIN, OpContext, TensorType, gradient, make_context, planned,
                       register)
from .rules import BOOL, normalize_axis, same_as
from ._erf import erf
from .elementwise import into, sigmoid


def _keep(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """numpy may widen (0-d operands, float64 helpers); ONNX keeps the input's element type."""
    return x if x.dtype == dtype else np.asarray(x).astype(dtype, copy=False)


def _c(x: np.ndarray, value: float):
    """A scalar attribute in x's element type (no silent widening of float16/float32)."""
    return x.dtype.type(value)


def forward_context(g, node) -> OpContext:
    """For a gradient rule: the forward node's context (schema version in force, attrs, outputs)."""
    return make_context(node.op_type, node.domain, node.name, g.graph.opset(node.domain),
                        node.attrs, len(node.inputs), len(node.outputs))[1]


# --- pointwise activations ---------------------------------------------------------------------

@register("Relu", versions=(1, 6, 13, 14), infer=same_as(0))
def relu(ctx, x):  # x: any shape -> same shape
    return into(ctx, np.maximum, x, _c(x, 0))


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


SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875


@register("Selu", versions=(1, 6, 22), infer=same_as(0))
def selu(ctx, x):  # x: any shape -> same shape
    alpha, gamma = _c(x, ctx.attr("alpha", SELU_ALPHA)), _c(x, ctx.attr("gamma", SELU_GAMMA))
    return _keep(gamma * np.where(x > 0, x, alpha * _neg_expm1(x)), x.dtype)


@register("Softplus", versions=(1, 22), infer=same_as(0))
def softplus(ctx, x):  # x: any shape -> same shape; log(1 + e^x) without overflow
    return _keep(np.logaddexp(_c(x, 0), x), x.dtype)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _erf_scaled(x: np.ndarray, x64: np.ndarray) -> np.ndarray:
    """erf(x / sqrt(2)): float32 and float16 through the fast erf (1 ulp, then widened), others
    in double precision from x64."""
    if x.dtype in (np.float32, np.float16):
        return erf(x, scale=1.0 / math.sqrt(2.0))
    return erf(x64 / math.sqrt(2.0))


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
    return _keep(0.5 * x64 * (1.0 + _erf_scaled(x, x64)), x.dtype)


@register("HardSigmoid", versions=(1, 6, 22), infer=same_as(0))
def hard_sigmoid(ctx, x):  # x: any shape -> same shape
    alpha, beta = _c(x, ctx.attr("alpha", 0.2)), _c(x, ctx.attr("beta", 0.5))
    return _keep(np.clip(alpha * x + beta, _c(x, 0), _c(x, 1)), x.dtype)


@register("HardSwish", versions=(14, 22), infer=same_as(0))
def hard_swish(ctx, x):  # x: any shape -> same shape; x * HardSigmoid(x; 1/6, 1/2)
    gate = np.clip(_c(x, 1 / 6) * x + _c(x, 0.5), _c(x, 0), _c(x, 1))
    return _keep(x * gate, x.dtype)


# --- gradients of the pointwise activations: dx = dy * f'(v) ------------------------------------
# v is what the backward keeps: the input x, or for Relu the output y (y > 0 exactly where x > 0).

def _gelu_deriv(ctx, x):
    if ctx.attr("approximate", "none") == "tanh":
        x = np.clip(x, _c(x, -20), _c(x, 20))  # beyond, f' is 0 or 1 to working precision
        k, c = _c(x, _SQRT_2_OVER_PI), _c(x, 0.044715)
        t = np.tanh(k * (x + c * x * x * x))
        return _c(x, 0.5) * (1 + t) + _c(x, 0.5) * x * (1 - t * t) * k * (1 + 3 * c * x * x)
    x64 = np.clip(x.astype(np.float64, copy=False), -40.0, 40.0)
    return (0.5 * (1.0 + _erf_scaled(x, x64))
            + x64 * np.exp(-0.5 * x64 * x64) / math.sqrt(2.0 * math.pi))


def _elu_deriv(x, alpha):
    return np.where(x > 0, _c(x, 1), alpha * np.exp(np.minimum(x, _c(x, 0))))


def _hard_sigmoid_deriv(ctx, x):
    alpha, beta = _c(x, ctx.attr("alpha", 0.2)), _c(x, ctx.attr("beta", 0.5))
    z = alpha * x + beta
    return np.where((z > 0) & (z < 1), alpha, _c(x, 0))


def _hard_swish_deriv(ctx, x):
    inner = (x > -3) & (x < 3)
    return np.where(inner, x / _c(x, 3) + _c(x, 0.5), np.where(x >= 3, _c(x, 1), _c(x, 0)))


# op -> (f' as a function of (ctx, v), which value v is: "x" the input or "y" the output)
ACTIVATION_GRADS = {
    "Relu": (lambda ctx, y: y > 0, "y"),
    "LeakyRelu": (lambda ctx, x: np.where(x < 0, _c(x, ctx.attr("alpha", 0.01)), _c(x, 1)), "x"),
    "Elu": (lambda ctx, x: _elu_deriv(x, _c(x, ctx.attr("alpha", 1.0))), "x"),
    "Selu": (lambda ctx, x: _c(x, ctx.attr("gamma", SELU_GAMMA))
             * _elu_deriv(x, _c(x, ctx.attr("alpha", SELU_ALPHA))), "x"),
    "Softplus": (lambda ctx, x: sigmoid(x), "x"),
    "Gelu": (_gelu_deriv, "x"),
    "HardSigmoid": (_hard_sigmoid_deriv, "x"),
    "HardSwish": (_hard_swish_deriv, "x"),
}


def _activation_grad(g, node, dys):
    if not g.needs(node, 0):
        return [None]
    v = node.inputs[0] if ACTIVATION_GRADS[node.op_type][1] == "x" else node.outputs[0]
    return [g.et("ActivationGrad", [dys[0], v], of=node.op_type, **node.attrs)]


for _op in ACTIVATION_GRADS:
    gradient(_op)(_activation_grad)


@register("ActivationGrad", versions=(1,), infer=same_as(0), domain=ET_DOMAIN)
def activation_grad(ctx, dy, v):  # dy (S), v (S): the forward's input or output -> dx (S)
    deriv = ACTIVATION_GRADS[ctx.attr("of")][0](ctx, v)
    out = planned(ctx)
    if out is not None and dy.dtype == out.dtype:
        return np.multiply(dy, deriv, out=out)
    return _keep(dy * deriv, dy.dtype)


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
    return _rows(x, _softmax_axis(ctx, x.ndim), ctx.version < 13)


def _rows(x: np.ndarray, axis: int, coerce: bool) -> tuple[np.ndarray, int]:
    if x.ndim == 0:
        return x.reshape(1), 0
    if not coerce:
        return x, axis
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(rows, -1), 1


def _work_out(ctx: OpContext, x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The planned output, reshaped like the rows being normalized, when it can hold the working
    values (x's type is already the working type); else a new array. Either way the same
    C-contiguous layout, so reductions add in the same order and the bits are the same."""
    out = planned(ctx)
    work = np.promote_types(x.dtype, np.float32)
    if out is not None and out.dtype == work and out.flags.c_contiguous:
        return out.reshape(shape)
    return np.empty(shape, work)


@register("Softmax", versions=(1, 11, 13), infer=_softmax_rule)
def softmax(ctx, x):  # x: any shape -> same shape, rows along the axis sum to 1
    if x.size == 0:
        return x.copy()
    x2, axis = _as_2d(ctx, x)
    e = _work_out(ctx, x, x2.shape)
    x2 = x2.astype(e.dtype, copy=False)  # float16 in float32 (its sums lose too much)
    np.subtract(x2, np.max(x2, axis=axis, keepdims=True), out=e)
    np.exp(e, out=e)
    e /= np.sum(e, axis=axis, keepdims=True)
    return _keep(e.reshape(x.shape), x.dtype)


@register("LogSoftmax", versions=(1, 11, 13), infer=_softmax_rule)
def log_softmax(ctx, x):  # x: any shape -> same shape
    if x.size == 0:
        return x.copy()
    x2, axis = _as_2d(ctx, x)
    s = _work_out(ctx, x, x2.shape)
    x2 = x2.astype(s.dtype, copy=False)  # float16 in float32 (its sums lose too much)
    np.subtract(x2, np.max(x2, axis=axis, keepdims=True), out=s)
    s -= np.log(np.sum(np.exp(s), axis=axis, keepdims=True))
    return _keep(s.reshape(x.shape), x.dtype)


def _softmax_grad(g, node, dys):  # keeps the output y
    if not g.needs(node, 0):
        return [None]
    version = forward_context(g, node).version
    axis = int(node.attrs.get("axis", -1 if version >= 13 else 1))
    return [g.et("SoftmaxGrad", [dys[0], node.outputs[0]], of=node.op_type, axis=axis,
                 coerce=int(version < 13))]


gradient("Softmax")(_softmax_grad)
gradient("LogSoftmax")(_softmax_grad)


@register("SoftmaxGrad", versions=(1,), infer=same_as(0), domain=ET_DOMAIN)
def softmax_grad(ctx, dy, y):  # dy (S), y (S) -> dx (S), along the forward's (coerced) axis
    if dy.size == 0:
        return dy.copy()
    axis = normalize_axis(ctx, int(ctx.attr("axis")), max(dy.ndim, 1))
    work = np.promote_types(dy.dtype, np.float32)
    d2, ax = _rows(dy.astype(work, copy=False), axis, bool(ctx.attr("coerce")))
    y2, _ = _rows(y.astype(work, copy=False), axis, bool(ctx.attr("coerce")))
    dx = _work_out(ctx, dy, d2.shape)
    if ctx.attr("of") == "Softmax":  # dx = y * (dy - sum(dy * y))
        s = np.sum(np.multiply(d2, y2, out=dx), axis=ax, keepdims=True)
        np.subtract(d2, s, out=dx)
        dx *= y2
    else:  # y = log softmax: dx = dy - softmax * sum(dy)
        s = np.sum(d2, axis=ax, keepdims=True)
        np.exp(y2, out=dx)
        dx *= s
        np.subtract(d2, dx, out=dx)
    return _keep(dx.reshape(dy.shape), dy.dtype)


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


# Gradient: dx = dy * mask / (1 - ratio) in training, dy in inference. The mask must be the one
# the forward drew, so the rule reads the node's mask output (the backward keeps only the mask);
# a training Dropout without a mask output has no gradient. Whether the node trains is decided
# while building the backward when its mode and ratio are constants, else at run time.

def _static(g, name: str) -> tuple[bool, np.ndarray | None]:
    """(is the optional input known while building, its value); absent inputs are known."""
    if not name:
        return True, None
    if name in g.graph.initializers and name not in g.graph.overridable:
        return True, g.graph.initializers[name]
    return False, None


@gradient("Dropout")
def dropout_grad(g, node, dys):
    rest = [None] * (len(node.inputs) - 1)
    if dys[0] is None or not g.needs(node, 0):
        return [None] + rest
    ctx = forward_context(g, node)
    mask = node.outputs[1] if len(node.outputs) > 1 else ""
    ratio, mode = (list(node.inputs[1:3]) + ["", ""])[:2] if ctx.version >= 12 else ("", "")
    (ratio_known, r), (mode_known, m) = _static(g, ratio), _static(g, mode)
    training = _dropout_mode(ctx, r if ratio_known else 0.5, m)[0] if mode_known else None
    p = _dropout_mode(ctx, r, m)[1] if ratio_known and mode_known else None
    if training is False or p == 0.0:
        return [dys[0]] + rest
    if not mask and training and p is not None:
        from ..autodiff.backward import GradientError
        raise GradientError(f"Dropout node {node.name!r} runs in training mode (ratio {p}): its "
                            "gradient needs the mask the forward drew; give the node its second "
                            "output (mask)")
    if ctx.version >= 12:
        return [g.et("DropoutGrad", [dys[0], mask, ratio, mode])] + rest
    return [g.et("DropoutGrad", [dys[0], mask], training=1, ratio=p)] + rest


@register("DropoutGrad", versions=(1,), infer=same_as(0), domain=ET_DOMAIN)
def dropout_grad_kernel(ctx, dy, mask=None, ratio=None, training_mode=None):  # keeps the mask
    training = (bool(ctx.attr("training", 0)) if training_mode is None
                else bool(np.asarray(training_mode).reshape(-1)[0]))
    p = float(ctx.attr("ratio", 0.5)) if ratio is None else float(np.asarray(ratio).reshape(-1)[0])
    if not training or p == 0.0:
        return dy
    if mask is None:
        raise ctx.error(f"Dropout runs in training mode (ratio {p}): its gradient needs the mask "
                        "the forward drew; give the Dropout node its second output (mask)")
    if p >= 1.0:
        return np.zeros_like(dy)
    return _keep(np.where(mask.astype(bool, copy=False), dy * _c(dy, 1.0 / (1.0 - p)),
                          _c(dy, 0)), dy.dtype)


# Dropout of a training graph (edgetrain builds it from a Dropout node): the mask depends only on
# the node's seed and the training step fed as input, so a resumed run draws the same masks.

@register("TrainingDropout", versions=(1,), domain=ET_DOMAIN, foldable=False,
          infer=lambda ctx, x, step: [TensorType(x.dtype, x.shape), TensorType(BOOL, x.shape)])
def training_dropout(ctx, x, step):  # x: any shape, step: int64 scalar -> (y like x, bool mask)
    p = float(ctx.attr("ratio", 0.5))
    rng = np.random.default_rng([int(ctx.attr("seed", 0)) % (1 << 63), int(step) % (1 << 63)])
    keep = rng.random(x.shape, dtype=np.float32) >= p
    if p >= 1.0:
        return np.zeros_like(x), keep
    return _keep(np.where(keep, x * _c(x, 1.0 / (1.0 - p)), _c(x, 0)), x.dtype), keep


@gradient("TrainingDropout", ET_DOMAIN)
def training_dropout_grad(g, node, dys):
    if dys[0] is None or not g.needs(node, 0):
        return [None, None]
    return [g.et("DropoutGrad", [dys[0], node.outputs[1]], training=1,
                 ratio=float(node.attrs.get("ratio", 0.5))), None]


# --- Identity ----------------------------------------------------------------------------------

@register("Identity", versions=(1, 13, 14, 16, 19, 21, 23, 24, 25), infer=same_as(0))
def identity(ctx, x):  # x: any shape -> the same array (values are never written in place)
    return x


@gradient("Identity")
def identity_grad(g, node, dys):
    return [dys[0]]
