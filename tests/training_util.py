"""Shared by the training tests: run N steps of the on-device API on golden batches."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgetrain import artifacts as A
from edgetrain import load_graph
from edgetrain.api import CheckpointState, Module, Optimizer
from edgetrain.graph import Graph, Value

GOLDEN = Path(__file__).parent / "data" / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())


def optimizer_config(opt: dict):
    if opt["type"] == "SGD":
        return A.SGD(lr=opt["lr"], momentum=opt["momentum"], dampening=opt["dampening"],
                     nesterov=opt["nesterov"], weight_decay=opt["weight_decay"])
    assert opt["type"] == "AdamW"  # torch.optim.AdamW
    return A.TorchAdamW(lr=opt["lr"], betas=tuple(opt["betas"]), eps=opt["eps"],
                        weight_decay=opt["weight_decay"])


def as_float64(graph: Graph) -> Graph:
    """The same model computing in float64 (initializers, inputs and outputs)."""
    def f64(dtype):
        return np.dtype(np.float64) if dtype == np.float32 else dtype
    return Graph(graph.nodes, [Value(v.name, f64(v.dtype), v.shape) for v in graph.inputs],
                 [Value(v.name, f64(v.dtype), v.shape) for v in graph.outputs],
                 {k: a.astype(f64(a.dtype)) for k, a in graph.initializers.items()},
                 dict(graph.opsets), graph.name)


def make_artifacts(run: dict, folder: Path, float64: bool = False, **kw) -> dict[str, str]:
    model = load_graph(str(GOLDEN / run["onnx"]))
    return A.generate_artifacts(as_float64(model) if float64 else model,
                                requires_grad=run["trainable"],
                                loss=A.CrossEntropyLoss(), optimizer=optimizer_config(run["optimizer"]),
                                artifact_directory=folder, batchnorm=run["bn_mode"] or "auto", **kw)


def train_golden(run: dict, folder: Path, steps: int | None = None, float64: bool = False):
    """(losses, module) after the run's steps on its golden batches."""
    paths = make_artifacts(run, folder, float64)
    data = np.load(GOLDEN / run["data"])
    state = CheckpointState.load_checkpoint(paths["checkpoint"])
    module = Module(paths["training_model"], state, paths["eval_model"])
    opt = Optimizer(paths["optimizer_model"], module)
    losses = []
    for i in range(steps or run["steps"]):
        x = data["x"][i]
        x = x.astype(np.float64) if float64 and x.dtype == np.float32 else x
        losses.append(float(module(x, data["labels"][i])))
        opt.step()
        module.lazy_reset_grad()
    return np.array(losses), module
