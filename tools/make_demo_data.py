"""Convert scikit-learn's copy of the UCI handwritten digits to ``src/edgetrain/data/digits.npz``.

The data: E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine
Learning Repository (1998), https://doi.org/10.24432/C50P49, licensed CC BY 4.0. scikit-learn ships
the 1,797-sample test set as ``sklearn/datasets/data/digits.csv.gz`` (64 pixels 0..16, then the
label, per row). scikit-learn is not a dependency of edgetrain; install it in a throw-away venv:

    python3 -m venv /tmp/skvenv && /tmp/skvenv/bin/pip install scikit-learn
    python tools/make_demo_data.py /tmp/skvenv/lib/python3.*/site-packages/sklearn/datasets/data/digits.csv.gz

(or run it with that venv's python and no argument: it finds the file itself).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "src", "edgetrain", "data", "digits.npz")


def find_csv() -> str:
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("give the path to digits.csv.gz (scikit-learn is not importable here)")
    return os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data",
                        "digits.csv.gz")


def convert(src: str, out: str = OUT) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(src, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape != (1797, 65):
        raise SystemExit(f"{src}: expected 1797 rows of 65 numbers, got {table.shape}")
    images = table[:, :64].reshape(-1, 8, 8)
    labels = table[:, 64].astype(np.int64)
    if images.min() < 0 or images.max() > 16 or set(labels.tolist()) != set(range(10)):
        raise SystemExit(f"{src}: values outside 0..16 or labels outside 0..9")
    np.savez_compressed(out, images=images.astype(np.uint8), labels=labels)
    return images, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("csv", nargs="?", help="path to sklearn's digits.csv.gz (default: find it)")
    p.add_argument("--out", default=OUT)
    args = p.parse_args()
    images, labels = convert(args.csv or find_csv(), args.out)
    digest = hashlib.sha256(images.astype(np.uint8).tobytes() + labels.tobytes()).hexdigest()
    print(f"wrote {args.out}: {len(labels)} images, {os.path.getsize(args.out)} bytes, "
          f"per class {np.bincount(labels).tolist()}, sha256(images+labels) {digest[:16]}")


if __name__ == "__main__":
    main()
