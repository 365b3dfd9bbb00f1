"""The benchmark's batches: seeded random data generated once per job and handed to every engine
as one ``.npz`` file (``x`` [S,B,...], ``y`` [S,B] or [S,B,T] int64: one batch per step).
NumPy only, so every engine's process can read it."""
from __future__ import annotations

import numpy as np


def make_batches(job: dict, n_steps: int, seed: int = 1234) -> dict[str, np.ndarray]:
    """``n_steps`` batches for ``job`` (a dict with input, dtype, batch, classes): float inputs
    are standard normal, token inputs and labels uniform over the classes; sequence models get
    one label per position."""
    rng = np.random.default_rng(seed)
    shape = [n_steps, job["batch"], *job["input"]]
    if job["dtype"] == "int64":
        x = rng.integers(0, job["classes"], shape, dtype=np.int64)
        y = rng.integers(0, job["classes"], shape, dtype=np.int64)
    else:
        x = rng.standard_normal(shape, dtype=np.float32)
        y = rng.integers(0, job["classes"], shape[:2], dtype=np.int64)
    return {"x": x, "y": y}


def save(path: str, batches: dict[str, np.ndarray]) -> None:
    np.savez(path, **batches)


def load(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as f:
        return f["x"], f["y"]
