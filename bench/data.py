"""The benchmark's batches: seeded random data generated once per job and handed to every engine
as one ``.npz`` file (``x`` [S,B,...], ``y`` [S,B] or [S,B,T] int64: one batch per step).
NumPy only, so every engine's process can read it."""
from __future__ import annotations

import numpy as np


def make_batches(job: dict, n_steps: int, seed: int = 1234) -> dict[str, np.ndarray]:
    """``n_steps`` batches for ``job`` (a dict with input, dtype, batch, classes): float inputs
    are standard normal, token inputs and labels uniform over the classes; sequence models get
    one label per position. Batch i comes from its own stream (seed, i): the same whatever
    ``n_steps`` is."""
    shape = [job["batch"], *job["input"]]
    xs, ys = [], []
    for i in range(n_steps):
        rng = np.random.default_rng([seed, i])
        if job["dtype"] == "int64":
            xs.append(rng.integers(0, job["classes"], shape, dtype=np.int64))
            ys.append(rng.integers(0, job["classes"], shape, dtype=np.int64))
        else:
            xs.append(rng.standard_normal(shape, dtype=np.float32))
            ys.append(rng.integers(0, job["classes"], shape[:1], dtype=np.int64))
    return {"x": np.stack(xs), "y": np.stack(ys)}


def save(path: str, batches: dict[str, np.ndarray]) -> None:
    np.savez(path, **batches)


def load(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as f:
        return f["x"], f["y"]
