"""The ``edgetrain`` command line. Each subcommand lives in its own module."""
from __future__ import annotations

import argparse
import sys

from ..errors import EdgetrainError
from . import artifacts as artifacts_cmd
from . import bench as bench_cmd
from . import demo as demo_cmd
from . import export as export_cmd
from . import plan as plan_cmd
from . import run as run_cmd
from .train import eval_cmd, train_cmd

SUBCOMMANDS = {"demo": demo_cmd, "artifacts": artifacts_cmd, "train": train_cmd,
               "eval": eval_cmd, "export": export_cmd, "plan": plan_cmd,
               "bench": bench_cmd, "run": run_cmd}


class _Formatter(argparse.HelpFormatter):
    """Fills each line of a description or epilog on its own, so that examples stay one a line."""

    def _fill_text(self, text, width, indent):
        return "\n".join(super(_Formatter, self)._fill_text(line, width, indent)
                         for line in text.splitlines())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgetrain",
        description="Train and personalize ONNX models on the device.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in SUBCOMMANDS.items():
        module.add_parser(sub)
        sub.choices[name].formatter_class = _Formatter
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return SUBCOMMANDS[args.command].main(args)
    except EdgetrainError as e:
        print(f"edgetrain {args.command}: error: {e}", file=sys.stderr)
        return 2
