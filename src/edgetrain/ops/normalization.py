"""Normalization ops: BatchNormalization (inference and training modes), LayerNormalization."""
from __future__ import annotations

import math

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


def _bn_view(x_shape: tuple[int, ...], spatial: bool) -> tuple[int, int, int]:
    """X read as (N, S, P): S statistics (channels, or every non-batch position when not
    spatial), each over N * P values."""
    n = x_shape[0]
    s = x_shape[1] if spatial else math.prod(x_shape[1:])
    return n, s, math.prod(x_shape[2:]) if spatial else 1


SHORT_PLANE = 64  # planes shorter than this: per-statistic factors repeated over the plane


def _affine(x3: np.ndarray, a: np.ndarray, shift: np.ndarray | None, y3: np.ndarray) -> None:
    """y3 = x3 * a + shift with a, shift (S,) per statistic; x3, y3 (N, S, P), y3 may be x3.
    Short planes make short inner loops, so there the factors are repeated over each plane
    (S * P values) and the loop runs over a whole image."""
    n, s, p = x3.shape
    if p < SHORT_PLANE:
        x3, y3 = x3.reshape(n, s * p), y3.reshape(n, s * p)
        a = np.repeat(a, p)
        shift = None if shift is None else np.repeat(shift, p)
    else:
        a = a[:, None]
        shift = None if shift is None else shift[:, None]
    np.multiply(x3, a, out=y3)
    if shift is not None:
        np.add(y3, shift, out=y3)


def _plane_sum(a3: np.ndarray) -> np.ndarray:
    """(N, S, P) -> (S,): over the images first, then each plane (pairwise) in one go."""
    return np.add.reduce(np.add.reduce(a3, axis=0), axis=1)


@register("BatchNormalization", versions=(1, 6, 7, 9, 14, 15), infer=_bn_rule)
def batch_normalization(ctx, x, scale, b, mean, var):  # x (N,C,...) -> Y like x (+ stats (C,))
    # inference: y = x * a + (B - mean * a) with a = scale / sqrt(var + eps), two passes;
    # training: y holds x - batch mean, then its sum of squares, then y * a + B
    work = _work_dtype(x.dtype, scale.dtype, b.dtype, mean.dtype, var.dtype)
    eps = work.type(ctx.attr("epsilon", 1e-5))
    n, s, p = _bn_view(x.shape, _bn_spatial(ctx))

    def vec(a):
        return np.asarray(a).astype(work, copy=False).reshape(s)

    x3 = x.astype(work, copy=False).reshape(n, s, p)
    y = planned(ctx)
    if y is None or y.dtype != work:
        y = np.empty(x.shape, dtype=work)
    y3 = y.reshape(n, s, p)
    training = _bn_training(ctx)
    if training:
        count = max(n * p, 1)
        cur_mean = _plane_sum(x3) / work.type(count)
        np.subtract(x3, cur_mean[:, None], out=y3)
        cur_var = np.einsum("nsp,nsp->s", y3, y3) / work.type(count)
        _affine(y3, vec(scale) / np.sqrt(cur_var + eps), vec(b), y3)
    else:
        a = vec(scale) / np.sqrt(vec(var) + eps)
        _affine(x3, a, vec(b) - vec(mean) * a, y3)
    y = y.astype(x.dtype, copy=False)
    if ctx.n_outputs <= 1:
        return y
    if training:
        mom = work.type(ctx.attr("momentum", 0.9))
        run_mean = vec(mean) * mom + cur_mean * (1 - mom)
        run_var = vec(var) * mom + cur_var * (1 - mom)
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
    # dX's bytes first hold x - mean, for dscale = sum(dy * (x - mean)) / std (no temporaries)
    training = bool(ctx.attr("training"))
    work = _work_dtype(x.dtype, dy.dtype, scale.dtype,
                       *([] if training else [mean.dtype, var.dtype]))
    eps = work.type(ctx.attr("epsilon", 1e-5))
    n, s, p = _bn_view(x.shape, bool(ctx.attr("spatial", 1)))
    x3 = x.astype(work, copy=False).reshape(n, s, p)
    dy3 = dy.astype(work, copy=False).reshape(n, s, p)
    dx = planned(ctx)
    if dx is None or dx.dtype != work:
        dx = np.empty(x.shape, dtype=work)
    dx3 = dx.reshape(n, s, p)
    count = work.type(max(n * p, 1))
    if training:
        m = _plane_sum(x3) / count
        np.subtract(x3, m[:, None], out=dx3)
        v = np.einsum("nsp,nsp->s", dx3, dx3) / count
    else:
        m, v = (np.asarray(a).astype(work, copy=False).reshape(s) for a in (mean, var))
        np.subtract(x3, m[:, None], out=dx3)
    inv_std = 1 / np.sqrt(v + eps)
    gain = scale.astype(work, copy=False).reshape(s) * inv_std
    db = _plane_sum(dy3)
    ds = np.einsum("nsp,nsp->s", dy3, dx3) * inv_std
    if training:  # through the batch mean and variance too:
        # dx = gain * (dy - db / count - (x - mean) * inv_std * ds / count)
        _affine(dx3, -inv_std * ds / count, None, dx3)
        np.add(dx3, dy3, out=dx3)
        _affine(dx3, gain, -gain * db / count, dx3)
    else:
        _affine(dy3, gain, None, dx3)
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


def _ln_stats(ctx: OpContext, x: np.ndarray, xhat: np.ndarray | None = None):
    """Stage one, on x as rows [R, n] (n: the normalized dims): n, mean and 1 / std [R, 1] and
    normalized X [R, n], in the working type. ``xhat``: where to write normalized X (C-contiguous,
    the working type, x's size), else a new array; both give the same bits."""
    axis = normalize_axis(ctx, int(ctx.attr("axis", -1)), x.ndim)
    work = np.promote_types(_ln_stash(ctx), x.dtype)
    eps = work.type(ctx.attr("epsilon", 1e-5))
    n = int(np.prod(x.shape[axis:], dtype=np.int64))
    rows = x.astype(work, copy=False).reshape(int(np.prod(x.shape[:axis], dtype=np.int64)), n)
    mean = rows.mean(axis=1, keepdims=True)
    d = np.subtract(rows, mean, out=None if xhat is None else xhat.reshape(rows.shape))
    var = np.einsum("ij,ij->i", d, d)[:, None] / work.type(max(n, 1))  # no d * d temporary
    inv_std = 1 / np.sqrt(var + eps)
    d *= inv_std
    return n, mean, inv_std, d


def _ln_buffer(out: np.ndarray | None, work: np.dtype) -> np.ndarray | None:
    return out if out is not None and out.dtype == work and out.flags.c_contiguous else None


def _ln_stat_shape(x: np.ndarray, axis: int) -> tuple[int, ...]:
    return x.shape[:axis] + (1,) * (x.ndim - axis)


@register("LayerNormalization", versions=(17,), infer=_ln_rule)
def layer_normalization(ctx, x, scale, b=None):  # x (..., normalized dims) -> Y, Mean, InvStdDev
    stash = _ln_stash(ctx)
    work = np.promote_types(stash, x.dtype)
    y = _ln_buffer(planned(ctx), work) if work == x.dtype else None  # xhat written into Y
    _, mean, inv_std, xhat = _ln_stats(ctx, x, y)
    y = xhat.astype(x.dtype, copy=False).reshape(x.shape)
    y *= scale.astype(x.dtype, copy=False)
    if b is not None:
        y += b.astype(x.dtype, copy=False)
    shape = _ln_stat_shape(x, normalize_axis(ctx, int(ctx.attr("axis", -1)), x.ndim))
    return (y, mean.astype(stash, copy=False).reshape(shape),
            inv_std.astype(stash, copy=False).reshape(shape))[:ctx.n_outputs]


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
    n, _, inv_std, xhat = _ln_stats(ctx, x)
    work = xhat.dtype
    gx = _ln_buffer(planned(ctx), work) if work == x.dtype else None
    gx = np.multiply(dy.astype(work, copy=False), scale.astype(work, copy=False),
                     out=gx)  # d loss / d xhat, then dX in the same buffer
    g2 = gx.reshape(xhat.shape)
    m1 = g2.mean(axis=1, keepdims=True)
    m2 = np.einsum("ij,ij->i", g2, xhat)[:, None] / work.type(max(n, 1))
    t = np.multiply(dy.astype(work, copy=False).reshape(xhat.shape), xhat)
    ds = sum_to_shape(t.reshape(x.shape), scale.shape)
    t = np.multiply(xhat, m2, out=None if np.shares_memory(ds, t) else t)
    g2 -= m1
    g2 -= t
    g2 *= inv_std  # dx = inv_std (gx - mean(gx) - xhat mean(gx xhat))
    return gx.astype(x.dtype, copy=False), ds.astype(scale.dtype, copy=False)
