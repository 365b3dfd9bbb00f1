"""``edgetrain run MODEL``: run a model on generated inputs and report outputs and time."""
from __future__ import annotations

import json
import time

import numpy as np

from ..errors import InputError
from ..runtime import InferenceSession


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a model on generated inputs",
                       description="Run an ONNX model on random inputs (zeros for integer inputs) "
                                   "and print each output's shape and the time per run.")
    p.add_argument("model", help="path to an .onnx file")
    p.add_argument("--batch", type=int, default=1, help="size of the first free dimension (default 1)")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="size of another named free dimension (repeatable)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs after a warm-up (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def parse_dims(items) -> dict[str, int]:
    """``--dim NAME=SIZE`` values as a dict (shared by the subcommands that make inputs)."""
    out = {}
    for item in items:
        name, _, size = item.partition("=")
        if not name or not size.isdigit():
            raise InputError(f"--dim {item!r}: expected NAME=SIZE with SIZE a positive integer")
        out[name] = int(size)
    return out


def input_shape(v, batch: int, dims: dict[str, int], role: str = "input") -> list[int]:
    """A concrete shape for a declared input: fixed dims, named ones from ``dims``, the first
    free one ``batch``; any other free dimension is an error that says which ``--dim`` to give."""
    if v.shape is None or v.dtype is None:
        raise InputError(f"{role} {v.name!r} declares no shape or dtype; cannot generate it")
    shape = []
    for i, d in enumerate(v.shape):
        if isinstance(d, int) and d > 0:
            shape.append(d)
        elif isinstance(d, str) and d in dims:
            shape.append(dims[d])
        elif i == 0:
            shape.append(batch)
        else:
            raise InputError(f"{role} {v.name!r} has a free dimension {d or '?'!r} at axis {i}: "
                             f"give its size with --dim {d or 'NAME'}=SIZE")
    return shape


def make_inputs(sess: InferenceSession, batch: int, dims: dict[str, int], seed: int):
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in sess.get_inputs():
        shape = input_shape(v, batch, dims)
        if v.dtype.kind == "f":
            feeds[v.name] = rng.standard_normal(shape).astype(v.dtype)
        else:
            feeds[v.name] = np.zeros(shape, dtype=v.dtype)
    return feeds


def main(args) -> int:
    sess = InferenceSession(args.model)
    feeds = make_inputs(sess, args.batch, parse_dims(args.dim), args.seed)
    outs = sess.run(None, feeds)  # warm-up: infers, folds and caches the plan
    times = []
    for _ in range(max(args.repeat, 1)):
        t0 = time.perf_counter()
        outs = sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    report = {
        "model": args.model,
        "inputs": {k: [str(v.dtype), list(v.shape)] for k, v in feeds.items()},
        "outputs": {v.name: [str(o.dtype), list(o.shape)] for v, o in zip(sess.get_outputs(), outs)},
        "median_ms": round(1000 * float(np.median(times)), 3),
    }
    if args.json:
        print(json.dumps(report))
    else:
        for k, (dt, shape) in report["inputs"].items():
            print(f"input  {k}: {dt}{shape}")
        for k, (dt, shape) in report["outputs"].items():
            print(f"output {k}: {dt}{shape}")
        print(f"median time per run: {report['median_ms']} ms over {len(times)} runs")
    return 0
