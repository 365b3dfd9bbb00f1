"""``edgetrain plan MODEL``: the memory plan of a training step, without running it."""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from ..errors import InputError
from ..graph import load_graph
from ..training.checkpoint import CheckpointState
from ..training.graphs import ArtifactError, last_layers, split_state, untie_aliases
from ..training.module import Module
from ..training.optim import Optimizer
from .. import artifacts as A
from .artifacts import LOSSES, _match
from .run import input_shape, parse_dims

KINDS = ("activation", "gradient", "output")
LABELS = {"activation": "activations", "gradient": "gradients in backward",
          "output": "gradients kept for the optimizer, outputs"}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plan", help="show the memory plan of a training step",
        description="Plan a training step of an ONNX model (or of an artifacts folder) for a "
                    "batch size and print the arena the step needs, the lower bound no plan can "
                    "beat (the most bytes live at one moment), the bytes outside the arena "
                    "(parameters, gradients, optimizer state, inputs) and the largest tensors "
                    "with the steps they live over. Nothing is trained.",
        epilog="examples: edgetrain plan model.onnx --batch 16 --last 1\n"
               "          edgetrain plan art/ --batch 32 --plot memory.png")
    add_model_args(p)
    p.add_argument("--eval", action="store_true", help="plan the eval step instead")
    p.add_argument("--no-recompute", action="store_true",
                   help="keep every activation backward reads instead of recomputing cheap ones")
    p.add_argument("--no-inplace", action="store_true", help="no ops written in place")
    p.add_argument("--memory-budget", type=float, metavar="MB",
                   help="what Module(memory_budget_mb=MB) would do to fit (swap, segments, "
                        "micro-batches), and the plan of the step it would run")
    p.add_argument("--top", type=int, default=8, help="how many of the largest tensors to list")
    p.add_argument("--plot", metavar="FILE",
                   help="draw the memory timeline to FILE (.png, .svg, .pdf; needs matplotlib)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_model_args(p, batch: int = 1) -> None:
    """The model and step arguments ``plan`` and ``bench`` share."""
    p.add_argument("model", help="an .onnx inference model, or a folder made by "
                                 "`edgetrain artifacts`")
    p.add_argument("--batch", type=int, default=batch, help=f"batch size (default {batch})")
    p.add_argument("--dim", action="append", default=[], metavar="NAME=SIZE",
                   help="size of another named input dimension, e.g. sequence=64 (repeatable)")
    p.add_argument("--trainable", nargs="+", metavar="NAME", default=None,
                   help="parameters that train (names or glob patterns; default all)")
    p.add_argument("--last", type=int, metavar="N", help="train the last N layers only")
    p.add_argument("--loss", choices=sorted(LOSSES), default="ce",
                   help="loss on the model's first output (default ce)")


def artifacts_for(args, folder: str, optimizer=None) -> str:
    """The artifacts folder for ``args.model``: itself when it is one, else artifacts generated
    into ``folder`` with ``args``' --trainable/--last and --loss (and ``optimizer``)."""
    if os.path.isdir(args.model):
        art = args.model
    else:
        if args.trainable and args.last:
            raise ArtifactError("give --trainable or --last, not both")
        graph = untie_aliases(load_graph(args.model))
        params = split_state(graph)[0]
        trainable = (last_layers(graph, args.last) if args.last else
                     _match(args.trainable, params, "--trainable") if args.trainable else None)
        A.generate_artifacts(graph, requires_grad=trainable, loss=LOSSES[args.loss](),
                             optimizer=optimizer, artifact_directory=folder, untie_aliases=False)
        art = folder
    return art


def load_module(art: str, **knobs) -> Module:
    """The Module (training, eval and checkpoint) of artifacts folder ``art``."""
    files = {k: os.path.join(art, f) for k, f in (("train", "training_model.onnx"),
                                                   ("eval", "eval_model.onnx"),
                                                   ("ckpt", "checkpoint"))}
    for path in files.values():
        if not os.path.exists(path):
            raise ArtifactError(f"{art!r} has no {os.path.basename(path)}: give an .onnx model or "
                                "a folder made by `edgetrain artifacts`")
    state = CheckpointState.load_checkpoint(files["ckpt"])
    return Module(files["train"], state, files["eval"], **knobs)


def step_inputs(module: Module, batch: int, dims: dict[str, int]) -> list[np.ndarray]:
    """Zero inputs (user inputs, then labels) of the current mode's step, shaped for ``batch``."""
    graph = module._train_graph if module.training else module._eval_graph
    by_name = {v.name: v for v in graph.inputs}
    return [np.zeros(input_shape(by_name[n], batch, dims), by_name[n].dtype)
            for n in module.input_names()]


def plot(plan, path: str, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise InputError("--plot needs matplotlib: pip install 'edgetrain[plot]'") from e
    mib = 1 / 2 ** 20
    lines = plan.timeline()
    steps = np.arange(plan.n_steps + 1)
    fixed = {k: v for k, v in plan.external_bytes.items() if v}
    layers = [np.full(len(steps), v * mib) for v in fixed.values()]
    layers += [lines.get(k, np.zeros(len(steps))) * mib for k in KINDS]
    labels = list(fixed) + [LABELS[k] for k in KINDS]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.stackplot(steps, *layers, labels=labels, step="post")
    ax.axhline((plan.placement.arena + sum(fixed.values())) * mib, color="k", lw=0.8, ls="--",
               label="arena + outside the arena")
    ax.set_xlabel("step of the training step (forward, loss, backward)")
    ax.set_ylabel("MiB live")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def budget_choice(module: Module, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], str]:
    """What ``memory_budget_mb`` makes of a step on ``inputs`` (the inputs of one part of it,
    and a line saying what it chose); MemoryBudgetError with the least it can reach if none."""
    size = module._micro.size_for(dict(zip(module.input_names(), inputs)))
    session = module._train_session
    how = [f"micro-batches of {size}"] if size else []
    if not isinstance(session.recompute, bool):
        how.append(f"segment checkpointing (every {session.recompute}th expensive activation "
                   "kept)")
    if session.swap is not None:
        how.append("activations swapped to storage")
    parts = [a[:size] for a in inputs] if size else inputs
    budget = module._micro.budget
    head = f"memory budget {budget / 2 ** 20:.4g} MiB: " if budget else ""
    return parts, head + (", ".join(how) or "fits as it is")


def main(args) -> int:
    if args.batch < 1:
        raise InputError(f"--batch must be at least 1, not {args.batch}")
    dims = parse_dims(args.dim)
    line = None
    with tempfile.TemporaryDirectory() as folder:
        art = artifacts_for(args, folder, optimizer=A.AdamW() if args.memory_budget else None)
        module = load_module(art, recompute=not args.no_recompute, inplace=not args.no_inplace,
                             memory_budget_mb=args.memory_budget)
        inputs = step_inputs(module, args.batch, dims)
        if args.memory_budget and not args.eval:
            optimizer = os.path.join(art, "optimizer_model.onnx")
            if os.path.exists(optimizer):  # its state counts in the budget
                Optimizer(optimizer, module)
            inputs, line = budget_choice(module, inputs)
        if args.eval:
            module.eval()
        plan = module.memory_plan(*inputs)
    if args.plot:
        plot(plan, args.plot, f"{os.path.basename(args.model.rstrip('/'))}, batch {args.batch}"
                              f"{', eval' if args.eval else ''}")
    if args.json:
        print(json.dumps({"model": args.model, "batch": args.batch, **plan.summary(args.top),
                          **({"budget": line} if line else {})}))
    else:
        print((line + "\n" if line else "") + plan.report(args.top))
        if args.plot:
            print(f"timeline written to {args.plot}")
    return 0
