"""Installed size of Python distributions, with or without what they require (standard library
only: run it with the interpreter of the environment to measure).

    python bench/sizes.py numpy onnx safetensors     # prints one JSON line
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import sys


def _requires(dist: md.Distribution) -> list[str]:
    out = []
    for req in dist.requires or []:
        name, _, marker = req.partition(";")
        if "extra" in marker:
            continue  # optional extras are not installed by a plain `pip install`
        if marker.strip() and not _marker_true(marker):
            continue
        out.append(re.split(r"[\s<>=!~\[(]", name.strip(), maxsplit=1)[0])
    return out


def _marker_true(marker: str) -> bool:
    try:
        from packaging.markers import Marker
        return Marker(marker).evaluate()
    except Exception:  # noqa: BLE001  (no packaging: count it, to err on the large side)
        return True


def dist_bytes(dist: md.Distribution) -> int:
    total = 0
    for f in dist.files or []:
        p = dist.locate_file(f)
        if os.path.isfile(p):
            total += os.path.getsize(p)
    return total


def closure(names: list[str], transitive: bool) -> dict[str, int]:
    """{distribution: bytes} for ``names`` (and, when transitive, everything they require)."""
    seen: dict[str, int] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        key = dist.metadata["Name"]
        if key in seen:
            continue
        seen[key] = dist_bytes(dist)
        if transitive:
            todo += _requires(dist)
    return seen


def main(argv: list[str]) -> None:
    direct, full = closure(argv, False), closure(argv, True)
    print(json.dumps({"direct": direct, "direct_mb": round(sum(direct.values()) / 2**20, 1),
                      "with_deps": full, "with_deps_mb": round(sum(full.values()) / 2**20, 1)}))


if __name__ == "__main__":
    main(sys.argv[1:])
