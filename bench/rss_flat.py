"""Resident memory stays flat across training steps: peak RSS after 1,000 MLP steps versus after 10.

The planned executor allocates its arena once per input signature, so a long run must not grow.
The MLP (784-512-512-10, B=64, AdamW, all layers) is built here with onnx.helper: no torch.

    .venv/bin/python bench/rss_flat.py [--steps 1000] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgetrain import artifacts
from edgetrain.api import CheckpointState, Module, Optimizer


def status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(key)


def mlp(sizes=(784, 512, 512, 10), seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [helper.make_node("Flatten", ["input"], ["flat"])], [], "flat"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((b, a)) / np.sqrt(a)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"fc{i}.bias")]
        y = "output" if i == len(sizes) - 2 else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"],
                                      [y + ("" if y == "output" else "_pre")], transB=1))
        if y != "output":
            nodes.append(helper.make_node("Relu", [y + "_pre"], [y]))
        x = y
    g = helper.make_graph(nodes, "mlp",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                         ["N", 1, 28, 28])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])],
                          inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        artifacts.generate_artifacts(mlp(), loss=artifacts.LossType.CrossEntropyLoss,
                                     optimizer=artifacts.OptimType.AdamW, artifact_directory=d)
        state = CheckpointState.load_checkpoint(f"{d}/checkpoint")
        module = Module(f"{d}/training_model.onnx", state, f"{d}/eval_model.onnx")
        opt = Optimizer(f"{d}/optimizer_model.onnx", module)
        rng = np.random.default_rng(0)
        batches = [(rng.random((args.batch, 1, 28, 28), dtype=np.float32),
                    rng.integers(0, 10, args.batch)) for _ in range(8)]
        after_load = status_mb("VmRSS")
        marks, t0 = {}, time.perf_counter()
        for i in range(args.steps):
            x, y = batches[i % len(batches)]
            loss = float(module(x, y))
            opt.step()
            module.lazy_reset_grad()
            if i + 1 in (10, 100, args.steps):
                marks[i + 1] = status_mb("VmHWM")
        seconds = time.perf_counter() - t0
    growth = marks[args.steps] - marks[10]
    result = {"steps": args.steps, "rss_after_load_mb": round(after_load, 2),
              "peak_rss_mb": {k: round(v, 2) for k, v in marks.items()},
              "growth_10_to_last_mb": round(growth, 3), "last_loss": loss,
              "ms_per_step": round(1000 * seconds / args.steps, 2)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"peak RSS after 10 steps {marks[10]:.1f} MB, after {args.steps} "
              f"{marks[args.steps]:.1f} MB: growth {growth:+.3f} MB "
              f"({result['ms_per_step']} ms/step, final loss {loss:.4f})")
    return 0 if growth <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
