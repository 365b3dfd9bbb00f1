"""PyTorch reference trajectories for ONNX exports we have no torch source for.

To measure how closely edgetrain's training follows PyTorch's, we need PyTorch to train the *same*
network from the *same* weights. This file rebuilds an ONNX graph as a PyTorch computation:

* :class:`TorchGraph` evaluates the graph's nodes with ``torch`` functional ops over
  ``nn.Parameter`` weights (autograd gives the gradients). Shape sub-graphs are first folded for the
  concrete input signature with ``edgetrain.graph.infer`` (once per signature), so torch never
  runs the Shape/Gather/Concat chains of torch exports.
* :func:`torch_trajectory` runs a few optimizer steps (torch.optim SGD or AdamW) and returns the
  per-step losses and the final weights, for comparison with edgetrain's.

    python tools/torch_ref.py /work/shared/models/*.onnx   # self-check against onnxruntime

Tools may use torch; the edgetrain package and its tests must not.
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch
import torch.nn.functional as F

from edgetrain.graph import Graph, infer, load_graph
from edgetrain.ops.registry import TensorType

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


class TorchGraph:
    """An ONNX graph evaluated with torch ops over ``nn.Parameter`` weights.

    batchnorm: "auto" follows each BatchNormalization's training_mode attribute, "train" uses batch
    statistics and updates the running stats (torch's rule), "frozen" uses the running stats.
    untie: torch exports dedupe equal weights as ``Identity(initializer)``; each such Identity
    output becomes a parameter of its own (a copy) named after it, as in the torch module.
    fold: fold shape sub-graphs for each concrete input signature (edgetrain.graph.infer) first.
    """

    def __init__(self, model, *, batchnorm: str = "auto", untie: bool = True, fold: bool = True):
        if batchnorm not in ("auto", "train", "frozen"):
            raise ValueError(f"batchnorm must be 'auto', 'train' or 'frozen', not {batchnorm!r}")
        self.graph: Graph = model if isinstance(model, Graph) else load_graph(model)
        self.batchnorm, self.fold = batchnorm, fold
        self.opset = self.graph.opset("") or 1
        g, inits = self.graph, self.graph.initializers
        stats = {x for n in g.nodes if n.op_type == "BatchNormalization" for x in n.inputs[3:5]}
        weight = {k for k, v in inits.items() if v.dtype.kind == "f" and v.ndim >= 1}
        self._untied = {n.outputs[0]: n.inputs[0] for n in g.nodes
                        if untie and n.op_type == "Identity" and n.inputs[0] in weight}
        self.nodes = [n for n in g.nodes if n.outputs[0] not in self._untied]
        read = {x for n in self.nodes for x in n.inputs} | {v.name for v in g.outputs}
        sources = {k: k for k in weight if k in read} | self._untied
        self._weights = weight | set(sources)
        mk = {k: torch.from_numpy(np.array(inits[src])) for k, src in sources.items()}
        self.params = {k: torch.nn.Parameter(t) for k, t in mk.items() if k not in stats}
        self.buffers = {k: t for k, t in mk.items() if k in stats}
        self._plans: dict[tuple, tuple[list, dict]] = {}

    def _plan(self, feeds: dict[str, torch.Tensor]):
        key = tuple(sorted((k, str(v.dtype), tuple(v.shape)) for k, v in feeds.items()))
        if key not in self._plans:
            if self.fold:  # weights stay variables: nothing computed from them is folded
                sig = {k: TensorType(np.dtype(str(v.dtype).removeprefix("torch.")), tuple(v.shape))
                       for k, v in feeds.items()}
                inf = infer(self.graph, sig, variables=self._weights)
                nodes = [s.node for s in inf.steps if s.node.outputs[0] not in self._untied]
                consts = inf.constants
            else:
                nodes = self.nodes
                consts = {k: v for k, v in self.graph.initializers.items()
                          if k not in self._weights}
            missing = sorted({f"{n.domain or 'ai.onnx'}::{n.op_type}" for n in nodes
                              if n.op_type not in OPS or n.domain not in ("", "ai.onnx")})
            if missing:
                raise NotImplementedError(f"torch_ref has no implementation for {missing}")
            self._plans[key] = nodes, {k: _tensor(v) for k, v in consts.items()}
        return self._plans[key]

    def forward(self, **feeds) -> dict[str, torch.Tensor]:
        feeds = {k: _tensor(v) for k, v in feeds.items()}
        nodes, consts = self._plan(feeds)
        env = {**consts, **self.params, **self.buffers, **feeds}
        for n in nodes:
            out = OPS[n.op_type](self, n, *(env[x] if x else None for x in n.inputs))
            for name, v in zip(n.outputs, out if isinstance(out, tuple) else (out,)):
                if name:
                    env[name] = v
        return {v.name: env[v.name] for v in self.graph.outputs}

    __call__ = forward


def _loss(kind: str, y: torch.Tensor, labels) -> torch.Tensor:
    labels = _tensor(labels)
    if kind in ("cross_entropy", "cross_entropy_seq"):
        return F.cross_entropy(y.reshape(-1, y.shape[-1]), labels.reshape(-1).long())
    if kind == "mse":
        return F.mse_loss(y, labels.to(y.dtype))
    raise ValueError(f"unknown loss {kind!r} (cross_entropy or mse)")


def torch_trajectory(model, batches, *, loss: str, optimizer: str, lr: float, steps: int,
                     trainable=None, batchnorm: str | None = None, output: str | None = None,
                     **opt_kwargs) -> dict:
    """Train with torch.optim for ``steps`` steps, cycling through ``batches`` ([(feeds, labels)]).

    ``model``: a path/ModelProto/Graph, or a TorchGraph (trained in place). The loss reads the
    first graph output unless ``output`` names another. SGD defaults to momentum 0.9; other
    ``opt_kwargs`` go to the optimizer. Returns losses (each step's forward, before its update),
    params and buffers (NumPy, after the last step).
    """
    tg = model if isinstance(model, TorchGraph) else TorchGraph(model,
                                                                  batchnorm=batchnorm or "auto")
    if batchnorm is not None:
        tg.batchnorm = batchnorm
    names = list(tg.params) if trainable is None else list(trainable)
    unknown = sorted(set(names) - set(tg.params))
    if unknown:
        raise KeyError(f"not parameters of the model: {unknown}")
    for k, p in tg.params.items():
        p.requires_grad_(k in names)
    plist = [tg.params[k] for k in names]
    if optimizer == "sgd":
        opt = torch.optim.SGD(plist, lr=lr, **{"momentum": 0.9, **opt_kwargs})
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(plist, lr=lr, **opt_kwargs)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r} (sgd or adamw)")
    out = output or tg.graph.outputs[0].name
    losses = []
    for i in range(steps):
        feeds, labels = batches[i % len(batches)]
        opt.zero_grad(set_to_none=True)
        value = _loss(loss, tg.forward(**feeds)[out], labels)
        value.backward()
        opt.step()
        losses.append(float(value.detach()))
    return dict(losses=losses,
                params={k: p.detach().numpy().copy() for k, p in tg.params.items()},
                buffers={k: b.detach().numpy().copy() for k, b in tg.buffers.items()})


# ---- self-check: forward vs onnxruntime, and a few training steps, on the given models ----

def _random_feeds(tg: TorchGraph, batch: int, rng) -> dict[str, np.ndarray]:
    feeds = {}
    for v in tg.graph.inputs:
        shape = [d if isinstance(d, int) else batch for d in v.shape]
        if v.dtype.kind == "f":
            feeds[v.name] = rng.standard_normal(shape).astype(v.dtype)
        else:  # token ids: bounded by the table a Gather reads them from
            vocab = min((tg.graph.initializers[n.inputs[0]].shape[0] for n in tg.graph.nodes
                         if n.op_type == "Gather" and n.inputs[1] == v.name
                         and n.inputs[0] in tg.graph.initializers), default=2)
            feeds[v.name] = rng.integers(0, vocab, shape).astype(v.dtype)
    return feeds


def _self_check(path: str, batches: list[int], steps: int, lr: float) -> bool:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    tg, ok = TorchGraph(path), True
    print(f"{path}: {len(tg.params)} params ({sum(p.numel() for p in tg.params.values())} "
          f"values, {len(tg._untied)} untied), {len(tg.buffers)} buffers")
    for b in batches:  # forward, with and without folding, against onnxruntime
        feeds = _random_feeds(tg, b, np.random.default_rng(b))
        ref = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        for how, g in (("folded", tg), ("unfolded", TorchGraph(tg.graph, fold=False))):
            with torch.no_grad():
                ours = g.forward(**feeds)
            for k, r in ref.items():
                rel = float(np.abs(ours[k].numpy() - r).max() / np.abs(r).max())
                ok &= rel <= 1e-5
                print(f"  forward batch={b} {how:8s} {k}{list(r.shape)}: "
                      f"max|torch-ort|/max|ort| = {rel:.2e}")
    feeds = _random_feeds(tg, 4, np.random.default_rng(0))
    logits = sess.run(None, feeds)[0]
    labels = np.random.default_rng(1).integers(0, logits.shape[-1], logits.shape[:-1])
    ort_ce = float(_loss("cross_entropy", torch.from_numpy(logits).double(), labels))
    head = [x for n in reversed(tg.graph.nodes) for x in n.inputs if x in tg.params][:2]
    runs = [("sgd", "auto", None), ("adamw", "auto", head)]  # adamw: fine-tune the head
    if tg.buffers:
        runs.append(("sgd", "train", None))
    for opt, bn, trainable in runs:  # a few steps on one batch: the loss must go down
        g = TorchGraph(tg.graph, batchnorm=bn)
        before = {k: t.detach().clone() for k, t in {**g.params, **g.buffers}.items()}
        r = torch_trajectory(g, [(feeds, labels)], loss="cross_entropy", optimizer=opt, lr=lr,
                             steps=steps, trainable=trainable)
        losses = r["losses"]
        moved = sum(not torch.equal(before[k], p) for k, p in g.params.items())
        stats = sum(not torch.equal(before[k], b) for k, b in g.buffers.items())
        good = all(map(math.isfinite, losses)) and losses[-1] < losses[0]
        if bn == "auto":  # frozen BN for these exports: step 0 is onnxruntime's loss
            good &= abs(losses[0] - ort_ce) <= 1e-5 * max(1.0, ort_ce)
        ok &= good
        print(f"  train {opt} bn={bn} trainable={trainable or 'all'}: losses "
              f"{[round(v, 5) for v in losses]} (ort step 0: {ort_ce:.5f}); {moved} params, "
              f"{stats} running stats changed: {'ok' if good else 'BAD'}")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Check TorchGraph against onnxruntime.")
    ap.add_argument("models", nargs="+")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args(argv)
    ok = all([_self_check(p, args.batch, args.steps, args.lr) for p in args.models])
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
