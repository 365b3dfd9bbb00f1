"""``edgetrain bench MODEL``: time and measure training steps of a model on this device.

The steps run in a fresh process of their own, so that its peak resident memory is the
training's and not this command's (artifact generation, planning). For the same job in PyTorch
and ONNX Runtime side by side, see bench/run.py in the source tree."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from ..errors import InputError
from ..graph.ir import Graph
from .artifacts import OPTIMIZERS
from ..training.optim import Optimizer
from .plan import add_model_args, artifacts_for, budget_choice, load_module, step_inputs
from .run import parse_dims

RESULT = "EDGETRAIN_BENCH "
N_BATCHES = 4  # distinct batches, cycled: step i trains on batch i % 4


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="time training steps of a model and measure their memory",
        description="Train an ONNX model (or an artifacts folder) for a few steps on generated "
                    "batches and report the step time (median, fastest, first: the first step "
                    "plans), samples per second, the process's peak resident memory, the memory "
                    "training took (peak minus resident before step 1) and the planned arena. "
                    "Float inputs are drawn from a normal distribution; class labels and token "
                    "ids are drawn below the class count and the embedding size the model "
                    "declares (zeros when it declares none). The steps run in a process of "
                    "their own.",
        epilog="examples: edgetrain bench model.onnx --batch 16 --last 1\n"
               "          edgetrain bench lm.onnx --batch 8 --dim sequence=64 --json")
    add_model_args(p, batch=16)
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adamw",
                   help="optimizer when MODEL is an .onnx model (default adamw)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps first (default 1; the first step plans)")
    p.add_argument("--threads", type=int, help="BLAS threads (default: NumPy's BLAS default)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated batches")
    p.add_argument("--memory-budget", type=float, metavar="MB",
                   help="Module(memory_budget_mb=MB): micro-batches that fit, or refused")
    p.add_argument("--micro-batch", type=int, metavar="K", help="Module(micro_batch=K)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _int_high(graph: Graph, name: str, classes: int | None) -> int:
    """Exclusive upper bound for an integer input: the class count for labels, the table size
    for Gather indices, else 1 (zeros)."""
    if classes is not None:
        return classes
    shapes = {v.name: v.shape for v in graph.inputs}
    shapes.update({k: a.shape for k, a in graph.initializers.items()})
    for node in graph.nodes:
        if node.op_type == "Gather" and node.inputs[1:2] == [name]:
            shape = shapes.get(node.inputs[0])
            axis = node.attrs.get("axis", 0)
            if shape and isinstance(shape[axis], int):
                return shape[axis]
    return 1


def make_batches(module, batch: int, dims: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    """``N_BATCHES`` random batches of the training step's inputs, stacked on a leading axis."""
    rng = np.random.default_rng(seed)
    graph, roles = module._train_graph, module._roles
    out = module._eval_graph.outputs if module._eval_graph is not None else []
    logits = next((v.shape for v in out if v.name in roles.model_outputs and v.shape), None)
    classes = logits[-1] if logits and isinstance(logits[-1], int) else None
    batches = {}
    for name, zeros in zip(module.input_names(), step_inputs(module, batch, dims)):
        shape = (N_BATCHES, *zeros.shape)
        if zeros.dtype.kind == "f":
            batches[name] = rng.standard_normal(shape).astype(zeros.dtype)
        elif zeros.dtype.kind in "iu":
            high = _int_high(graph, name, classes if name in roles.labels else None)
            batches[name] = rng.integers(0, high, shape).astype(zeros.dtype)
        else:
            batches[name] = np.zeros(shape, zeros.dtype)
    return batches


def run_job(artifact_dir: str, batches: list[np.ndarray], steps: int, *, warmup: int = 1,
            lr: float = 1e-3, **knobs) -> dict:
    """Load the artifacts in ``artifact_dir`` and train ``warmup + steps`` steps, step i on
    ``[b[i % len(b)] for b in batches]`` (inputs in the Module's order); the measurements
    (:class:`edgetrain.measure.StepTimer`'s, plus load time and the BLAS). ``knobs``: Module
    options (memory_budget_mb, micro_batch...)."""
    from ..api import CheckpointState, Module, Optimizer
    from ..measure import StepTimer, numpy_blas

    t0 = time.perf_counter()
    art = lambda name: os.path.join(artifact_dir, name)  # noqa: E731
    state = CheckpointState.load_checkpoint(art("checkpoint"))
    module = Module(art("training_model.onnx"), state, art("eval_model.onnx"), **knobs)
    optimizer = Optimizer(art("optimizer_model.onnx"), module)
    optimizer.set_learning_rate(lr)
    module.train()
    result = {"load_s": round(time.perf_counter() - t0, 3)}

    def step(i: int):  # = module(...); optimizer.step(); module.lazy_reset_grad()
        return optimizer.train_step(*[b[i % len(b)] for b in batches])

    result.update(StepTimer(warmup, steps).run(step))
    result["threads"] = numpy_blas()
    result["micro_batch"] = max(module._micro._sizes.values(), default=0) or None
    plans = [e.plan for s in (module._train_session, module._rest_session, *module._fused.values())
             if s is not None for e in s._plans.values() if hasattr(e, "plan")]
    result["swapped"] = max((p.swapped for p in plans), default=0)
    result["swap_mb"] = round(max((p.swap_file.size for p in plans if p.swap_file), default=0)
                              / 2 ** 20, 1)
    return result


def _worker(argv: list[str]) -> int:
    """The measuring process: ``python -m edgetrain.cli.bench ART DATA STEPS WARMUP LR KNOBS``
    (KNOBS: Module options as JSON)."""
    art, data, steps, warmup, lr, knobs = argv[:6]
    if len(argv) > 6:
        from ..measure import set_num_threads
        set_num_threads(int(argv[6]))
    with np.load(data) as z:
        batches = [z[f"arr_{i}"] for i in range(len(z.files))]  # the Module's input order
    print(RESULT + json.dumps(run_job(art, batches, int(steps), warmup=int(warmup),
                                      lr=float(lr), **json.loads(knobs))), flush=True)
    return 0


def _measure(art: str, data: str, args) -> dict:
    env = dict(os.environ)
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)
    knobs = {k: v for k, v in (("memory_budget_mb", args.memory_budget),
                               ("micro_batch", args.micro_batch)) if v is not None}
    cmd = [sys.executable, "-m", "edgetrain.cli.bench", art, data, str(args.steps),
           str(args.warmup), str(args.lr), json.dumps(knobs)] + (
               [str(args.threads)] if args.threads else [])
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in r.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    raise InputError(f"the training steps failed (exit {r.returncode}): {tail}")


def report(args, m: dict, plan: dict) -> str:
    mib = 1 / 2 ** 20
    t = m["threads"]
    losses = m["losses"]
    lines = [f"{args.model}: batch {args.batch}, {args.warmup} warm-up + {args.steps} timed "
             "steps (forward, loss, backward, optimizer)",
             f"step: median {m['median_step_ms']:.1f} ms, fastest {m['min_step_ms']:.1f} ms, "
             f"first {m['first_step_ms']:.1f} ms; {m['samples_per_s']:.1f} samples/s",
             f"memory: peak resident {m['peak_rss_mb']:.1f} MB, before step 1 "
             f"{m['rss_loaded_mb']:.1f} MB, training {m['train_mb']:.1f} MB",
             f"plan: arena {plan['arena_bytes'] * mib:.2f} MiB (lower bound "
             f"{plan['lower_bound_bytes'] * mib:.2f} MiB); "
             + ", ".join(f"{k} {v * mib:.2f} MiB"
                         for k, v in plan["outside_arena_bytes"].items() if v),
             f"loss: {losses[0]:.5g} -> {losses[-1]:.5g}; load {m['load_s']:.2f} s"
             + (f"; micro-batches of {m['micro_batch']}" if m.get("micro_batch") else ""),
             f"BLAS: {t.get('blas')} {t.get('blas_version') or ''}, "
             f"{t.get('blas_threads') or '?'} threads"]
    if m.get("other_load_cores", 0) > 0.25:
        lines.append(f"note: other processes kept {m['other_load_cores']:.2f} cores busy "
                     "during the steps; the times are inflated")
    return "\n".join(lines)


def main(args) -> int:
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        raise InputError("--batch and --steps must be at least 1 and --warmup at least 0")
    dims = parse_dims(args.dim)
    with tempfile.TemporaryDirectory(prefix="edgetrain-bench-") as folder:
        art = artifacts_for(args, folder, optimizer=OPTIMIZERS[args.optimizer](lr=args.lr))
        if not os.path.exists(os.path.join(art, "optimizer_model.onnx")):
            raise InputError(f"{art!r} has no optimizer_model.onnx: make the artifacts with "
                             "an optimizer, or give the .onnx model")
        module = load_module(art, memory_budget_mb=args.memory_budget,
                             micro_batch=args.micro_batch)
        Optimizer(os.path.join(art, "optimizer_model.onnx"), module)  # its state counts
        batches = make_batches(module, args.batch, dims, args.seed)
        first = [b[0] for b in batches.values()]
        if args.memory_budget or args.micro_batch:  # the plan of the step the budget chose
            first = budget_choice(module, first)[0]
        plan = module.memory_plan(*first).summary(0)
        data = os.path.join(folder, "batches.npz")
        np.savez(data, *batches.values())
        m = _measure(art, data, args)
    m["samples_per_s"] = 1000 * args.batch / m["median_step_ms"]
    if args.json:
        print(json.dumps({"model": args.model, "batch": args.batch, **m, "plan": plan}))
    else:
        print(report(args, m, plan))
    return 0


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
