"""Normalization ops: BatchNormalization (inference and training modes), LayerNormalization."""
from __future__ import annotations

import numpy as np

from .activation import forward_context
from .grad_ops import sum_to_shape
from .registry import ET_DOMAIN, OpContext, TensorType, gradient, planned, register
from .rules import normalize_axis, shape_error


def _work_dtype(*dtypes: np.dtype) -> np.dtype:
    """Statistics are computed in at least float32 (float16 sums overflow and lose digits)."""
    return np.result_type(np.float32, *dtypes)


# --- BatchNormalization ------------------------------------------------------------------------
# X is (N, C, D1, ..., Dk); scale, B, mean, var are (C,) -- or (C, D1, ..., Dk) with spatial=0
# (versions 1-7). Modes and outputs by version:
#   1, 6:  training when is_test=0 (the default); outputs Y, mean, var, saved_mean, saved_var.
#   7, 9:  no mode attribute; training when the node asks for more than Y (as onnxruntime does).
#   14,15: training_mode attribute; outputs Y, running_mean, running_var (in input_mean's type).
# Training normalizes with the batch statistics (population variance) and updates the running
# ones: running = input * momentum + batch * (1 - momentum). saved_mean/saved_var are the batch
# statistics. In inference mode any extra outputs asked for pass the input statistics through.

def _bn_training(ctx: OpContext) -> bool:
    if ctx.version >= 14:
        return bool(ctx.attr("training_mode", 0))
    if ctx.version >= 7:
        return ctx.n_outputs > 1
    return not ctx.attr("is_test", 0)


def _bn_spatial(ctx: OpContext) -> bool:
    return ctx.version >= 9 or bool(ctx.attr("spatial", 1))


def _bn_geometry(x_shape: tuple[int, ...], spatial: bool):
    """Statistics' shape, their shape broadcast against X, and the axes they reduce over."""
    stat_shape = (x_shape[1],) if spatial else tuple(x_shape[1:])
    bshape = (1,) + stat_shape + (1,) * (len(x_shape) - 1 - len(stat_shape))
    axes = (0,) + tuple(range(2, len(x_shape))) if spatial else (0,)
    return stat_shape, bshape, axes


def _bn_rule(ctx: OpContext, x: TensorType, scale: TensorType, b: TensorType, mean: TensorType,
             var: TensorType) -> list[TensorType]:
    if x.rank < 2:
        raise shape_error(ctx, "X must be (N, C, ...) with rank >= 2", x, scale, b, mean, var)
    stat_shape = (x.shape[1],) if _bn_spatial(ctx) else x.shape[1:]
    want = int(np.prod(stat_shape, dtype=np.int64))
    for name, t in (("scale", scale), ("B", b), ("mean", mean), ("var", var)):
        if t is None:
            raise ctx.error(f"input {name!r} is required")
        if t.size != want:
            raise shape_error(ctx, f"{name} must have shape {list(stat_shape)} for this X",
                              x, scale, b, mean, var)
    outs = [TensorType(x.dtype, x.shape)]
    if ctx.version >= 14:  # running_mean, running_var
        outs += [TensorType(mean.dtype, mean.shape), TensorType(var.dtype, var.shape)]
    else:  # mean, var, saved_mean, saved_var, all of X's type
        outs += [TensorType(x.dtype, mean.shape), TensorType(x.dtype, var.shape)] * 2
    return outs[:max(ctx.n_outputs, 1)]


@register("BatchNormalization", versions=(1, 6, 7, 9, 14, 15), infer=_bn_rule)
def batch_normalization(ctx, x, scale, b, mean, var):  # x (N,C,...) -> Y like x (+ stats (C,))
    work = _work_dtype(x.dtype, scale.dtype, b.dtype, mean.dtype, var.dtype)
    eps = float(ctx.attr("epsilon", 1e-5))
    _, bshape, axes = _bn_geometry(x.shape, _bn_spatial(ctx))

    def param(a):
        return np.asarray(a).astype(work, copy=False).reshape(bshape)

    xw = x.astype(work, copy=False)
    training = _bn_training(ctx)
    if training:
        cur_mean = xw.mean(axis=axes, keepdims=True)
        cur_var = np.square(xw - cur_mean).mean(axis=axes, keepdims=True)
        m, v = cur_mean, cur_var
    else:
        m, v = param(mean), param(var)
    a = param(scale) / np.sqrt(v + work.type(eps))
    y = planned(ctx)
    if y is not None and y.dtype == work:  # the same operations, written in place
        np.subtract(xw, m, out=y)
        np.multiply(y, a, out=y)
        np.add(y, param(b), out=y)
    else:
        y = ((xw - m) * a + param(b)).astype(x.dtype, copy=False)
    if ctx.n_outputs <= 1:
        return y
    if training:
        mom = work.type(ctx.attr("momentum", 0.9))
        run_mean = param(mean) * mom + cur_mean * (1 - mom)
        run_var = param(var) * mom + cur_var * (1 - mom)
        stats = [run_mean, run_var, cur_mean, cur_var]
    else:
        stats = [mean, var, mean, var]
    dtypes = [mean.dtype, var.dtype] if ctx.version >= 14 else [x.dtype] * 4
    shapes = [mean.shape, var.shape] * 2
    outs = [np.asarray(s).reshape(sh).astype(d) for s, sh, d in zip(stats, shapes, dtypes)]
    return (y, *outs)[:ctx.n_outputs]


# Gradient to X, scale and B (none to the running mean and var, nor through the statistics
# outputs). Inference: the statistics are the frozen inputs, dX = dY * scale / sqrt(var + eps).
# Training: they are the batch's, and dX also flows through them. The backward keeps X (and the
# per-channel inputs); training recomputes the batch statistics from X.

@gradient("BatchNormalization")
def batch_normalization_grad(g, node, dys):
    out = [None] * len(node.inputs)
    if dys[0] is None or not any(g.needs(node, i) for i in range(3)):
        return out
    ctx = forward_context(g, node)
    training = _bn_training(ctx)
    x, scale, b, mean, var = node.inputs[:5]
    ins = [dys[0], x, scale, b] + ([] if training else [mean, var])
    grads = g.et("BatchNormalizationGrad", ins, 3, training=int(training),
                 spatial=int(_bn_spatial(ctx)), epsilon=float(ctx.attr("epsilon", 1e-5)))
    return [d if g.needs(node, i) else None for i, d in enumerate(grads)] + out[3:]


def _bn_grad_rule(ctx: OpContext, dy: TensorType, x: TensorType, scale: TensorType,
                  b: TensorType, *stats: TensorType | None) -> list[TensorType]:
    return [TensorType(x.dtype, x.shape), TensorType(scale.dtype, scale.shape),
            TensorType(b.dtype, b.shape)]


@register("BatchNormalizationGrad", versions=(1,), infer=_bn_grad_rule, domain=ET_DOMAIN)
def batch_normalization_grad_kernel(ctx, dy, x, scale, b, mean=None, var=None):
    # dy, x (N, C, ...); scale, b, mean, var (C,) -> dX like x, dscale like scale, dB like b
    training = bool(ctx.attr("training"))
    work = _work_dtype(x.dtype, dy.dtype, scale.dtype,
                       *([] if training else [mean.dtype, var.dtype]))
    eps = work.type(ctx.attr("epsilon", 1e-5))
    _, bshape, axes = _bn_geometry(x.shape, bool(ctx.attr("spatial", 1)))
    xw, dyw = x.astype(work, copy=False), dy.astype(work, copy=False)
    if training:
        m = xw.mean(axis=axes, keepdims=True)
        v = np.square(xw - m).mean(axis=axes, keepdims=True)
    else:
        m, v = (np.asarray(a).astype(work, copy=False).reshape(bshape) for a in (mean, var))
    inv_std = 1 / np.sqrt(v + eps)
    gain = scale.astype(work, copy=False).reshape(bshape) * inv_std
    db = dyw.sum(axis=axes, keepdims=True)
    out = planned(ctx)
    if out is not None and out.dtype == work and not training:
        # dX's bytes hold xhat * dy while the scale's gradient is summed: no temporaries
        np.subtract(xw, m, out=out)
        np.multiply(out, inv_std, out=out)
        np.multiply(dyw, out, out=out)
        ds = out.sum(axis=axes, keepdims=True)
        dx = np.multiply(dyw, gain, out=out)
    else:
        xhat = (xw - m) * inv_std
        ds = (dyw * xhat).sum(axis=axes, keepdims=True)
        if training:  # through the batch mean and variance too
            count = work.type(x.size // max(m.size, 1))
            dx = gain * (dyw - db / count - xhat * (ds / count))
        else:
            dx = dyw * gain
    return (dx.astype(x.dtype, copy=False), ds.reshape(scale.shape).astype(scale.dtype),
            db.reshape(b.shape).astype(b.dtype))


# --- LayerNormalization ------------------------------------------------------------------------
# Normalizes over the dimensions [axis, rank). Mean and InvStdDev have the stash type (float32 by
# default) and shape X.shape[:axis] + (1,) * (rank - axis). Stage one (mean, variance,
# normalization) runs in the wider of the stash type and X's type (float64 X keeps its precision;
# onnxruntime does the same), then the normalized values are cast back to X's type and scaled.

_STASH = {1: np.dtype(np.float32), 10: np.dtype(np.float16), 11: np.dtype(np.float64)}


def _ln_stash(ctx: OpContext) -> np.dtype:
    code = int(ctx.attr("stash_type", 1))
    if code not in _STASH:
        raise ctx.error(f"stash_type {code} is not supported; use 1 (float)")
    return _STASH[code]


def _ln_rule(ctx: OpContext, x: TensorType, scale: TensorType,
             b: TensorType | None = None) -> list[TensorType]:
    if x.rank == 0:
        raise shape_error(ctx, "X must have rank >= 1", x, scale, b)
    axis = normalize_axis(ctx, int(ctx.attr("axis", -1)), x.rank)
    for t in (scale, b):
        if t is None:
            continue
        try:
            ok = np.broadcast_shapes(x.shape, t.shape) == x.shape
        except ValueError:
            ok = False
        if not ok:
            raise shape_error(ctx, "Scale and B must broadcast to X", x, scale, b)
    stash = _ln_stash(ctx)
    stat = TensorType(stash, x.shape[:axis] + (1,) * (x.rank - axis))
    return [TensorType(x.dtype, x.shape), stat, stat][:max(ctx.n_outputs, 1)]


def _ln_stats(ctx: OpContext, x: np.ndarray):
    """Stage one: the normalized axes, mean, 1 / std and normalized X, in the working type."""
    axis = normalize_axis(ctx, int(ctx.attr("axis", -1)), x.ndim)
    work = np.promote_types(_ln_stash(ctx), x.dtype)
    eps = work.type(ctx.attr("epsilon", 1e-5))
    axes = tuple(range(axis, x.ndim))
    xs = x.astype(work, copy=False)
    mean = xs.mean(axis=axes, keepdims=True)
    d = xs - mean
    inv_std = 1 / np.sqrt(np.mean(d * d, axis=axes, keepdims=True) + eps)
    return axes, mean, inv_std, d * inv_std


@register("LayerNormalization", versions=(17,), infer=_ln_rule)
def layer_normalization(ctx, x, scale, b=None):  # x (..., normalized dims) -> Y, Mean, InvStdDev
    stash = _ln_stash(ctx)
    _, mean, inv_std, xhat = _ln_stats(ctx, x)
    y = xhat.astype(x.dtype, copy=False) * scale.astype(x.dtype, copy=False)
    if b is not None:
        y = y + b.astype(x.dtype, copy=False)
    y = y.astype(x.dtype, copy=False)
    return (y, mean.astype(stash, copy=False), inv_std.astype(stash, copy=False))[:ctx.n_outputs]


# Gradient to X, Scale and B (none through the Mean and InvStdDev outputs). The backward keeps X
# and recomputes the statistics from it.

@gradient("LayerNormalization")
def layer_normalization_grad(g, node, dys):
    out = [None] * len(node.inputs)
    if dys[0] is None:
        return out
    if g.needs(node, 0) or g.needs(node, 1):
        dx, ds = g.et("LayerNormalizationGrad", [dys[0], *node.inputs[:2]], 2, **node.attrs)
        out[0] = dx if g.needs(node, 0) else None
        out[1] = ds if g.needs(node, 1) else None
    if g.needs(node, 2):
        out[2] = g.sum_to(dys[0], node.inputs[2])
    return out


def _ln_grad_rule(ctx: OpContext, dy: TensorType, x: TensorType, scale: TensorType):
    return [TensorType(x.dtype, x.shape), TensorType(scale.dtype, scale.shape)]


@register("LayerNormalizationGrad", versions=(1,), infer=_ln_grad_rule, domain=ET_DOMAIN)
def layer_normalization_grad_kernel(ctx, dy, x, scale):  # dy, x (S), scale (to S) -> dX, dScale
    axes, _, inv_std, xhat = _ln_stats(ctx, x)
    dyw = dy.astype(xhat.dtype, copy=False)
    gx = dyw * scale.astype(xhat.dtype, copy=False)  # d loss / d xhat
    dx = inv_std * (gx - gx.mean(axis=axes, keepdims=True)
                    - xhat * (gx * xhat).mean(axis=axes, keepdims=True))
    ds = sum_to_shape(dyw * xhat, scale.shape)
    return dx.astype(x.dtype, copy=False), ds.astype(scale.dtype, copy=False)
