"""``edgetrain export ARTIFACTS``: an inference model from artifacts and a checkpoint."""
from __future__ import annotations

import json
import os

from ..api import CheckpointState, Module


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write the trained inference model",
        description="Write an inference ONNX model (no loss, no labels) from the artifacts folder "
                    "and a checkpoint: the personalized model an app runs.",
        epilog="example: edgetrain export art --checkpoint runs/ckpt-00000100 --out model.onnx")
    p.add_argument("artifacts", help="the folder made by `edgetrain artifacts`")
    p.add_argument("--checkpoint", help="checkpoint to export (default: ARTIFACTS/checkpoint)")
    p.add_argument("--out", required=True, help="path of the .onnx file to write")
    p.add_argument("--outputs", nargs="+", metavar="NAME",
                   help="outputs of the exported model (default: the original model's)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def main(args) -> int:
    ckpt = args.checkpoint or os.path.join(args.artifacts, "checkpoint")
    state = CheckpointState.load_checkpoint(ckpt)
    module = Module(os.path.join(args.artifacts, "training_model.onnx"), state,
                    os.path.join(args.artifacts, "eval_model.onnx"))
    module.export_model_for_inferencing(args.out, args.outputs)
    if args.json:
        print(json.dumps({"model": args.out, "checkpoint": ckpt}))
    else:
        print(f"wrote {args.out} (from {ckpt})")
    return 0
