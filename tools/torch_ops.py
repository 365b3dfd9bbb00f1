"""ONNX ops as PyTorch functional calls, for tools/torch_ref.py: ``OPS[op_type](graph, node,
*inputs)`` returns the node's output(s) as torch tensors, differentiable by autograd. Each op runs
what the exported torch module ran (nn.ReLU6 as hardtanh, nn.Linear as F.linear...), so PyTorch's
gradients at kinks and its rounding are the reference's."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32,
           7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64, 16: torch.bfloat16}


def _tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(np.array(a))  # copy: writable


def _ints(t) -> list[int]:
    return [int(v) for v in t.reshape(-1).tolist()]


# ---- op implementations: f(graph, node, *inputs) -> tensor or tuple; absent inputs are None ----

def _axes(g, n, t, since):  # axes: an input from opset `since` on, an attribute before
    return (None if t is None else _ints(t)) if g.opset >= since else n.attrs.get("axes")


def _window(n, x, value):
    """(x, nd, strides, dilations, padding): symmetric pads go to the torch op, asymmetric ones
    are applied here with ``value``."""
    a, nd = n.attrs, x.dim() - 2
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise NotImplementedError(f"{n.op_type} node {n.name!r}: auto_pad={a['auto_pad']}")
    pads = [0] * (2 * nd) if a.get("auto_pad") == "VALID" else list(a.get("pads", [0] * 2 * nd))
    b, e = pads[:nd], pads[nd:]
    if b != e:
        x = F.pad(x, [p for i in reversed(range(nd)) for p in (b[i], e[i])], value=value)
        b = [0] * nd
    return x, nd, a.get("strides", [1] * nd), a.get("dilations", [1] * nd), b


def _conv(g, n, x, w, b=None):
    x, nd, strides, dil, padding = _window(n, x, 0.0)
    return getattr(F, f"conv{nd}d")(x, w, b, strides, padding, dil, n.attrs.get("group", 1))


def _maxpool(g, n, x):
    if len([o for o in n.outputs if o]) > 1:
        raise NotImplementedError(f"MaxPool node {n.name!r}: the Indices output is not supported")
    x, nd, strides, dil, padding = _window(n, x, -math.inf)
    return getattr(F, f"max_pool{nd}d")(x, n.attrs["kernel_shape"], strides, padding, dil,
                                        ceil_mode=bool(n.attrs.get("ceil_mode", 0)))


def _avgpool(g, n, x):
    include = bool(n.attrs.get("count_include_pad", 0))
    pads = n.attrs.get("pads", [])
    if pads[:len(pads) // 2] != pads[len(pads) // 2:] and not include:
        raise NotImplementedError(f"AveragePool node {n.name!r}: asymmetric pads with "
                                  "count_include_pad=0")
    x, nd, strides, _, padding = _window(n, x, 0.0)
    return getattr(F, f"avg_pool{nd}d")(x, n.attrs["kernel_shape"], strides, padding,
                                        bool(n.attrs.get("ceil_mode", 0)), include)


def _batchnorm(g, n, x, scale, bias, mean, var, *_):
    eps, momentum = n.attrs.get("epsilon", 1e-5), n.attrs.get("momentum", 0.9)
    train = g.batchnorm == "train" or (g.batchnorm == "auto" and n.attrs.get("training_mode", 0))
    if not train:
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
    # batch statistics; the running stats are updated in place (torch's rule: unbiased variance,
    # momentum = 1 - ONNX momentum) when they are buffers of ours
    own = all(k in g.buffers for k in n.inputs[3:5])
    y = F.batch_norm(x, mean if own else None, var if own else None, scale, bias, True,
                     1.0 - momentum, eps)
    return y, mean, var


def _clip(g, n, x, lo=None, hi=None):
    if g.opset < 11:
        lo, hi = n.attrs.get("min"), n.attrs.get("max")
    else:
        lo, hi = (None if t is None else t.item() for t in (lo, hi))
    # what the exported module ran: nn.ReLU6/Hardtanh (hardtanh) and nn.ReLU pass no gradient at
    # the bounds themselves; torch.clamp would (inputs sitting exactly at 0 happen: fading
    # activations underflow to zero)
    if lo is not None and hi is not None:
        return F.hardtanh(x, lo, hi)
    if lo == 0 and hi is None:
        return F.relu(x)
    return x if lo is None and hi is None else torch.clamp(x, lo, hi)


def _gemm(g, n, a, b, c=None):
    at = n.attrs
    a = a.t() if at.get("transA", 0) else a
    b = b.t() if at.get("transB", 0) else b
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
    if c is not None and alpha == 1.0 and beta == 1.0 and at.get("transB", 0):
        return F.linear(a, b.t(), c)  # what nn.Linear ran
    y = a @ b if alpha == 1.0 else alpha * (a @ b)
    return y if c is None else y + (c if beta == 1.0 else beta * c)


def _div(g, n, a, b):
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")  # ONNX integer division truncates


def _flatten(g, n, x):
    axis = n.attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _reshape(g, n, x, shape):
    s = _ints(shape)
    if not n.attrs.get("allowzero", 0):
        s = [x.shape[i] if d == 0 else d for i, d in enumerate(s)]
    return x.reshape(s)


def _softmax(fn):
    def f(g, n, x):
        if g.opset >= 13:
            return fn(x, n.attrs.get("axis", -1))
        axis = n.attrs.get("axis", 1) % x.dim()  # before 13: softmax of the 2-D flattening
        return fn(x.reshape(math.prod(x.shape[:axis]), -1), 1).reshape(x.shape)
    return f


def _layernorm(g, n, x, scale, bias=None):
    if len([o for o in n.outputs if o]) > 1:
        raise NotImplementedError(f"LayerNormalization {n.name!r}: Mean/InvStdDev outputs")
    shape = x.shape[n.attrs.get("axis", -1) % x.dim():]
    return F.layer_norm(x, shape, scale.expand(shape),
                        None if bias is None else bias.expand(shape), n.attrs.get("epsilon", 1e-5))


def _gather(g, n, x, idx):
    axis = n.attrs.get("axis", 0) % x.dim()
    idx = torch.where(idx < 0, idx + x.shape[axis], idx)
    if axis == 0 and x.dim() == 2 and x.is_floating_point():
        return F.embedding(idx, x)  # what nn.Embedding ran
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(x.shape[:axis] + idx.shape + x.shape[axis + 1:])


def _unsqueeze(g, n, x, axes=None):
    axes = _axes(g, n, axes, 13)
    r = x.dim() + len(axes)
    for a in sorted(a % r for a in axes):
        x = x.unsqueeze(a)
    return x


def _squeeze(g, n, x, axes=None):
    axes = _axes(g, n, axes, 13)
    return x.squeeze() if axes is None else x.squeeze(tuple(a % x.dim() for a in axes))


def _slice(g, n, x, starts=None, ends=None, axes=None, steps=None):
    if g.opset < 10:
        starts, ends, axes, steps = n.attrs["starts"], n.attrs["ends"], n.attrs.get("axes"), None
    else:
        starts, ends = _ints(starts), _ints(ends)
        axes, steps = (None if t is None else _ints(t) for t in (axes, steps))
    axes = range(len(starts)) if axes is None else axes
    for s, e, a, st in zip(starts, ends, axes, steps or [1] * len(starts)):
        a %= x.dim()
        d = x.shape[a]
        s, e = (v + d if v < 0 else v for v in (s, e))
        if st > 0:
            x = x[(slice(None),) * a + (slice(min(max(s, 0), d), min(max(e, 0), d), st),)]
        else:  # torch has no negative-step slicing
            idx = torch.arange(min(max(s, 0), d - 1), min(max(e, -1), d - 1), st)
            x = x.index_select(a, idx)
    return x


def _reduce(fn, since):
    def f(g, n, x, axes=None):
        axes = _axes(g, n, axes, since)
        if not axes:
            if n.attrs.get("noop_with_empty_axes", 0):
                return x
            axes = range(x.dim())
        return fn(x, dim=tuple(a % x.dim() for a in axes), keepdim=bool(n.attrs.get("keepdims", 1)))
    return f


def _constant(g, n):
    (k, v), = n.attrs.items()
    if k in ("value_float", "value_floats", "value_int", "value_ints"):
        return _tensor(np.array(v, np.float32 if "float" in k else np.int64))
    if k != "value":
        raise NotImplementedError(f"Constant node {n.name!r}: attribute {k}")
    return _tensor(v)


def _un(fn):
    return lambda g, n, x: fn(x)


def _bin(fn):
    return lambda g, n, a, b: fn(a, b)


OPS = {
    "Conv": _conv, "BatchNormalization": _batchnorm, "MaxPool": _maxpool, "AveragePool": _avgpool,
    "GlobalAveragePool": _un(lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    "Gemm": _gemm, "MatMul": _bin(torch.matmul), "Clip": _clip,
    "Add": _bin(torch.add), "Sub": _bin(torch.sub), "Mul": _bin(torch.mul), "Div": _div,
    "Pow": _bin(torch.pow), "Equal": _bin(torch.eq), "Less": _bin(torch.lt),
    "Greater": _bin(torch.gt), "Not": _un(torch.logical_not),
    "Relu": _un(torch.relu), "Sigmoid": _un(torch.sigmoid), "Tanh": _un(torch.tanh),
    "Erf": _un(torch.erf), "Sqrt": _un(torch.sqrt), "Exp": _un(torch.exp), "Log": _un(torch.log),
    "Neg": _un(torch.neg), "Abs": _un(torch.abs), "Reciprocal": _un(torch.reciprocal),
    "Identity": _un(lambda x: x),
    "Gelu": lambda g, n, x: F.gelu(x, approximate=n.attrs.get("approximate", "none")),
    "Softmax": _softmax(torch.softmax), "LogSoftmax": _softmax(torch.log_softmax),
    "LayerNormalization": _layernorm,
    "ReduceMean": _reduce(torch.mean, 18), "ReduceSum": _reduce(torch.sum, 13),
    "ReduceMax": _reduce(torch.amax, 18), "ReduceMin": _reduce(torch.amin, 18),
    "Flatten": _flatten, "Reshape": _reshape, "Gather": _gather, "Slice": _slice,
    "Transpose": lambda g, n, x: x.permute(n.attrs.get("perm", list(range(x.dim()))[::-1])),
    "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "Concat": lambda g, n, *xs: torch.cat(xs, n.attrs["axis"]),
    "Where": lambda g, n, c, a, b: torch.where(c.bool(), a, b),
    "Cast": lambda g, n, x: x.to(_DTYPES[n.attrs["to"]]),
    "Expand": lambda g, n, x, s: x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(s)))),
    "Shape": lambda g, n, x: torch.tensor(x.shape[n.attrs.get("start", 0):n.attrs.get("end")]),
    "Size": lambda g, n, x: torch.tensor(x.numel()), "Constant": _constant,
    "Range": lambda g, n, a, b, d: torch.arange(a.item(), b.item(), d.item(), dtype=a.dtype),
    "Mod": lambda g, n, a, b: (torch.fmod if n.attrs.get("fmod", 0) else torch.remainder)(a, b),
    # Dropout in inference form: identity (random masks could not be matched anyway)
    "Dropout": lambda g, n, x, *_: (x, torch.ones_like(x, dtype=torch.bool)),
}
