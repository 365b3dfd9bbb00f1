"""Trajectory parity of edgetrain with PyTorch on any ONNX export (e.g. ../shared/models/*.onnx).

For each model: the same random batches, the same initial weights, N steps of SGD(momentum 0.9)
and PyTorch's AdamW, with all parameters trainable and with the last layer only, and for models
with BatchNorm in both modes. PyTorch runs the export through tools/torch_ref.py. Prints, per job,
the largest relative error of the per-step losses, the relative error of the final trainable
parameters as one vector (|a - b|₂ / |b|₂), and the worst tensor's max |a - b| / max |b|.

    python tools/parity.py ../shared/models/*.onnx [--steps 20] [--float64] [--json OUT]

``--float64`` runs both sides in float64 (exactness of the arithmetic, free of float32 rounding
that Adam and ReLU kinks can amplify over many steps).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from torch_ref import torch_trajectory  # noqa: E402

from edgetrain import artifacts as A, load_graph  # noqa: E402
from edgetrain.api import CheckpointState, Module, Optimizer  # noqa: E402
from edgetrain.graph import Graph, Value  # noqa: E402
from edgetrain.training.graphs import last_layers, split_state, untie_aliases  # noqa: E402

BATCH = {"mlp": 8, "mobilenetv2_96": 8, "mobilenetv2_224": 4, "tinylm": 2}
# small enough that 20 steps stay stable: a diverging run amplifies rounding (even float64's)
LR = {"sgd": 1e-3, "adamw": 1e-3}


def as_float64(g: Graph) -> Graph:
    f = lambda d: np.dtype(np.float64) if d == np.float32 else d  # noqa: E731
    return Graph(g.nodes, [Value(v.name, f(v.dtype), v.shape) for v in g.inputs],
                 [Value(v.name, f(v.dtype), v.shape) for v in g.outputs],
                 {k: a.astype(f(a.dtype)) for k, a in g.initializers.items()}, dict(g.opsets), g.name)


def batches_for(graph: Graph, n_batch: int, steps: int, float64: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    x, out = graph.inputs[0], graph.outputs[0]
    shape = [n_batch] + [int(d) for d in x.shape[1:]]
    n_classes = int(out.shape[-1])
    label_shape = [n_batch] + [int(d) for d in out.shape[1:-1]]
    batches = []
    for _ in range(steps):
        if np.dtype(x.dtype).kind == "i":
            xi = rng.integers(0, n_classes, shape).astype(x.dtype)
        else:
            xi = rng.standard_normal(shape).astype(np.float64 if float64 else np.float32)
        batches.append(({x.name: xi}, rng.integers(0, n_classes, label_shape).astype(np.int64)))
    return batches


def ours(graph, batches, opt, trainable, bn, steps):
    config = (A.SGD(lr=LR["sgd"], momentum=0.9) if opt == "sgd"
              else A.TorchAdamW(lr=LR["adamw"], eps=1e-8, weight_decay=0.01))
    with tempfile.TemporaryDirectory() as d:
        paths = A.generate_artifacts(graph, requires_grad=trainable, loss=A.CrossEntropyLoss(),
                                     optimizer=config, artifact_directory=d, batchnorm=bn)
        state = CheckpointState.load_checkpoint(paths["checkpoint"])
        module = Module(paths["training_model"], state)
        optimizer = Optimizer(paths["optimizer_model"], module)
        losses = []
        for i in range(steps):
            feeds, labels = batches[i % len(batches)]
            losses.append(float(module(*feeds.values(), labels)))
            optimizer.step()
            module.lazy_reset_grad()
        return np.array(losses), {k: state.parameters[k].data for k in state.parameters}


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def rel_norm(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--float64", action="store_true")
    ap.add_argument("--floor", action="store_true",
                    help="also run PyTorch in float64 and report how far PyTorch's own float32 run "
                         "is from it: the rounding noise floor of the job")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows = []
    for path in args.models:
        name = Path(path).stem
        graph = untie_aliases(load_graph(path))
        if args.float64:
            graph = as_float64(graph)
        params, buffers = split_state(graph)
        batches = batches_for(graph, BATCH.get(name, 4), args.steps, args.float64)
        bn_modes = ["frozen", "train"] if buffers else ["auto"]
        for opt in ("sgd", "adamw"):
            for which, trainable in (("all", params), ("last", last_layers(graph))):
                for bn in bn_modes:
                    t0 = time.perf_counter()
                    l_et, p_et = ours(graph, batches, opt, trainable, bn, args.steps)
                    t1 = time.perf_counter()
                    kw = {"eps": 1e-8, "weight_decay": 0.01} if opt == "adamw" else {}
                    ref = torch_trajectory(graph, batches, loss="cross_entropy", optimizer=opt,
                                           lr=LR[opt], steps=args.steps, trainable=trainable,
                                           batchnorm=None if bn == "auto" else bn, **kw)
                    # per tensor (tensors that stay within 1e-6 of zero, e.g. biases whose
                    # gradient is zero in exact arithmetic, compare their noise: left out)
                    perr = {k: rel(p_et[k], ref["params"][k]) for k in trainable
                            if np.abs(ref["params"][k]).max() >= 1e-6}
                    worst = max(perr, key=perr.get)
                    nerr = rel_norm(np.concatenate([p_et[k].ravel() for k in trainable]),
                                    np.concatenate([ref["params"][k].ravel() for k in trainable]))
                    row = {"model": name, "optimizer": opt, "trainable": which, "batchnorm": bn,
                           "dtype": "float64" if args.float64 else "float32",
                           "loss_rel": rel(l_et, ref["losses"]), "param_rel": nerr,
                           "param_rel_tensor": perr[worst],
                           "worst_param": worst, "first_loss": float(l_et[0]),
                           "last_loss": float(l_et[-1]), "edgetrain_s": round(t1 - t0, 1)}
                    rows.append(row)
                    print(f"{name:16s} {opt:6s} {which:4s} bn={bn:6s} loss {row['loss_rel']:.1e} "
                          f"params {nerr:.1e} (worst tensor {row['param_rel_tensor']:.1e}, {worst}) "
                          f"loss {row['first_loss']:.4f}->{row['last_loss']:.4f} "
                          f"[{row['edgetrain_s']} s]", flush=True)
                    if args.floor and not args.float64:
                        b64 = [({k: v.astype(np.float64) if v.dtype == np.float32 else v
                                 for k, v in f.items()}, y) for f, y in batches]
                        r64 = torch_trajectory(as_float64(graph), b64, loss="cross_entropy",
                                               optimizer=opt, lr=LR[opt], steps=args.steps,
                                               trainable=trainable,
                                               batchnorm=None if bn == "auto" else bn, **kw)
                        row["torch32_vs_64_loss_rel"] = rel(ref["losses"], r64["losses"])
                        row["torch32_vs_64_param_rel"] = rel_norm(
                            np.concatenate([ref["params"][k].ravel() for k in trainable]),
                            np.concatenate([r64["params"][k].ravel() for k in trainable]))
                        row["edgetrain32_vs_torch64_loss_rel"] = rel(l_et, r64["losses"])
                        print(f"{'':16s} floor: torch32 vs torch64 loss "
                              f"{row['torch32_vs_64_loss_rel']:.1e} params "
                              f"{row['torch32_vs_64_param_rel']:.1e}; edgetrain32 vs torch64 "
                              f"loss {row['edgetrain32_vs_torch64_loss_rel']:.1e}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
