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

from torch_ops import OPS, _tensor

from edgetrain.graph import Graph, infer, load_graph
from edgetrain.ops.registry import TensorType


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
