"""``edgetrain artifacts MODEL``: the training artifacts for an ONNX model."""
from __future__ import annotations

import fnmatch
import json

from .. import artifacts as A
from ..graph import load_graph
from ..training.graphs import ArtifactError, last_layers, split_state, untie_aliases

LOSSES = {"ce": A.CrossEntropyLoss, "cross-entropy": A.CrossEntropyLoss, "nll": A.NLLLoss,
          "mse": A.MSELoss, "l1": A.L1Loss, "smooth-l1": A.SmoothL1Loss, "huber": A.HuberLoss,
          "bce-logits": A.BCEWithLogitsLoss, "kl-div": A.KLDivLoss}
OPTIMIZERS = {"sgd": A.SGD, "adam": A.Adam, "adamw": A.AdamW, "torch-adamw": A.TorchAdamW}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "artifacts", help="make training artifacts from an ONNX model",
        description="Make the training artifacts of an ONNX inference model: training_model.onnx, "
                    "eval_model.onnx, optimizer_model.onnx and checkpoint (the files "
                    "`edgetrain train` and edgetrain.api use). By default every parameter trains; "
                    "--trainable and --last choose fewer (transfer learning: --last 1 trains the "
                    "head only).",
        epilog="example: edgetrain artifacts model.onnx --out art --last 2 --loss ce "
               "--optimizer sgd --lr 0.01 --momentum 0.9")
    p.add_argument("model", help="path to an .onnx inference model")
    p.add_argument("--out", help="folder for the artifacts (created if missing)")
    p.add_argument("--list", action="store_true",
                   help="list the model's parameters (name, shape) and write nothing")
    p.add_argument("--trainable", nargs="+", metavar="NAME", default=None,
                   help="parameters to train: names or glob patterns ('fc.*', '*.bias')")
    p.add_argument("--last", type=int, metavar="N", help="train the last N layers only")
    p.add_argument("--frozen", nargs="+", metavar="NAME", default=[],
                   help="parameters (names or patterns) that never train")
    p.add_argument("--loss", choices=sorted(LOSSES), default="ce",
                   help="loss over the model's first output (default ce: cross-entropy, classes "
                        "on the last axis)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="for ce")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adamw",
                   help="adamw is ONNX Runtime's; torch-adamw is PyTorch's (default adamw)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--momentum", type=float, default=0.0, help="for sgd")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--max-grad-norm", type=float, default=None, help="clip gradients to this norm")
    p.add_argument("--batchnorm", choices=["auto", "train", "frozen"], default="auto",
                   help="BatchNorm statistics: as exported (auto), batch statistics (train) or "
                        "running statistics (frozen)")
    p.add_argument("--no-dropout", action="store_true", help="no Dropout while training")
    p.add_argument("--seed", type=int, default=0, help="seed of the Dropout masks")
    p.add_argument("--nominal", action="store_true",
                   help="also write a nominal checkpoint (names and shapes only)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _match(patterns, params: list[str], what: str) -> list[str]:
    chosen = []
    for pat in patterns:
        hits = [p for p in params if fnmatch.fnmatchcase(p, pat)]
        if not hits:
            raise ArtifactError(f"{what} {pat!r} matches no parameter (e.g. "
                                f"{', '.join(params[:4])}; `edgetrain artifacts MODEL --list` "
                                "lists them all)")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def _optimizer(args):
    kw = {"lr": args.lr, "max_grad_norm": args.max_grad_norm}
    if args.weight_decay is not None:
        kw["weight_decay"] = args.weight_decay
    if args.optimizer == "sgd":
        kw["momentum"] = args.momentum
    elif args.momentum:
        raise ArtifactError(f"--momentum is for sgd, not {args.optimizer}")
    return OPTIMIZERS[args.optimizer](**kw)


def main(args) -> int:
    if args.trainable and args.last:
        raise ArtifactError("give --trainable or --last, not both")
    graph = untie_aliases(load_graph(args.model))
    params = split_state(graph)[0]
    if args.list:
        shapes = {p: list(graph.initializers[p].shape) for p in params}
        if args.json:
            print(json.dumps({"parameters": shapes}))
        else:
            for p, shape in shapes.items():
                print(f"{p}  {shape}")
        return 0
    if not args.out:
        raise ArtifactError("--out DIR is required (the folder for the artifacts)")
    if args.last:
        trainable = last_layers(graph, args.last)
    elif args.trainable:
        trainable = _match(args.trainable, params, "--trainable")
    else:
        trainable = None
    frozen = _match(args.frozen, params, "--frozen") if args.frozen else []
    loss = LOSSES[args.loss](**({"label_smoothing": args.label_smoothing}
                                if args.loss in ("ce", "cross-entropy") else {}))
    paths = A.generate_artifacts(graph, requires_grad=trainable, frozen_params=frozen, loss=loss,
                                 optimizer=_optimizer(args), artifact_directory=args.out,
                                 nominal_checkpoint=args.nominal, batchnorm=args.batchnorm,
                                 dropout=not args.no_dropout, seed=args.seed, untie_aliases=False)
    chosen = [p for p in params if p not in frozen and (trainable is None or p in trainable)]
    summary = {"artifacts": paths, "parameters": len(params), "trainable": chosen,
               "trainable_elements": int(sum(graph.initializers[p].size for p in chosen)),
               "total_elements": int(sum(graph.initializers[p].size for p in params))}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{len(chosen)} of {len(params)} parameters train "
              f"({summary['trainable_elements']:,} of {summary['total_elements']:,} values).")
        for kind, path in paths.items():
            print(f"  {kind:18s} {path}")
    return 0
