"""``edgetrain train`` and ``edgetrain eval``: the Trainer from the command line."""
from __future__ import annotations

import json
import os

from ..api import CheckpointState, Module, Optimizer
from ..training.trainer import Trainer, TrainerError

DATA_HELP = (".npz file whose arrays are named like the model's inputs and labels (or x and y; "
             "`edgetrain artifacts MODEL --list` and the training model's input names tell them)")


def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train", help="train artifacts on a data file",
        description="Train the artifacts made by `edgetrain artifacts` on an .npz data file, "
                    "writing checkpoints (ckpt-<step>) that `--resume` continues from after a "
                    "crash, bit for bit.",
        epilog="example: edgetrain train art data.npz --epochs 5 --checkpoint-dir runs "
               "--every 50 && edgetrain export art --checkpoint runs/ckpt-00000250 --out m.onnx")
    p.add_argument("artifacts", help="the folder made by `edgetrain artifacts`")
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--last-batch", choices=["drop", "pad", "keep"], default="drop",
                   help="what to do with a last partial batch (default drop)")
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample order")
    p.add_argument("--checkpoint-dir", help="where checkpoints go (default ARTIFACTS/checkpoints)")
    p.add_argument("--every", type=int, help="checkpoint every N steps (default: each epoch)")
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept (default 3)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest complete checkpoint in --checkpoint-dir")
    p.add_argument("--validation", metavar="DATA", help="an .npz evaluated after each epoch")
    p.add_argument("--memory-budget", type=float, metavar="MB",
                   help="the most a step may plan (arena, parameters, gradients, optimizer "
                        "state, batch; the interpreter comes on top): larger batches run as "
                        "micro-batches that fit, or the run is refused with the least it needs")
    p.add_argument("--quiet", action="store_true", help="no progress or per-epoch lines")
    p.add_argument("--json", action="store_true", help="machine-readable summary only")


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="loss and accuracy of a checkpoint on a data file",
                       description="Evaluate a checkpoint (default: the artifacts' initial one) "
                                   "on an .npz data file with the eval model.")
    p.add_argument("artifacts", help="the folder made by `edgetrain artifacts`")
    p.add_argument("data", help=DATA_HELP)
    p.add_argument("--checkpoint", help="checkpoint to evaluate (default ARTIFACTS/checkpoint)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _require(path: str, what: str) -> None:
    if not os.path.exists(path):
        raise TrainerError(f"{what} {path!r} does not exist")


def train_main(args) -> int:
    _require(args.artifacts, "artifacts folder")
    _require(args.data, "data file")
    ckpt_dir = args.checkpoint_dir or os.path.join(args.artifacts, "checkpoints")
    trainer = Trainer(args.artifacts, checkpoint_dir=ckpt_dir, checkpoint_every=args.every,
                      keep_last=args.keep, seed=args.seed, batch_size=args.batch_size,
                      shuffle=not args.no_shuffle, last_batch=args.last_batch,
                      quiet=args.quiet or args.json, progress=False if args.json else None,
                      memory_budget_mb=args.memory_budget)
    history = trainer.fit(args.data, epochs=args.epochs, resume=args.resume,
                          validation_data=args.validation)
    newest = trainer.checkpoints()[-1][1] if trainer.checkpoints() else None
    summary = {"checkpoint": newest, "history": history}
    if args.json:
        print(json.dumps(summary))
    else:
        last = {k: v[-1] for k, v in history.items() if isinstance(v, list) and v}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if isinstance(v, float))
        print(f"done: {shown}\nnewest checkpoint: {newest}")
    return 0


def eval_main(args) -> int:
    _require(args.artifacts, "artifacts folder")
    _require(args.data, "data file")
    ckpt = args.checkpoint or os.path.join(args.artifacts, "checkpoint")
    state = CheckpointState.load_checkpoint(ckpt)
    module = Module(os.path.join(args.artifacts, "training_model.onnx"), state,
                    os.path.join(args.artifacts, "eval_model.onnx"))
    optimizer = Optimizer(os.path.join(args.artifacts, "optimizer_model.onnx"), module)
    metrics = Trainer((module, optimizer), batch_size=args.batch_size, quiet=True,
                      progress=False).evaluate(args.data)
    if args.json:
        print(json.dumps({"checkpoint": ckpt, **metrics}))
    else:
        print(", ".join(f"{k} {v:.4g}" for k, v in metrics.items()) + f"  ({ckpt})")
    return 0


class _Command:
    def __init__(self, add, main):
        self.add_parser, self.main = add, main


train_cmd = _Command(add_train_parser, train_main)
eval_cmd = _Command(add_eval_parser, eval_main)
