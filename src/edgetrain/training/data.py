"""The data side of training: a seeded sample order per epoch, batches with a last partial batch
dropped, kept or padded, and sources (arrays batched here, or an iterable of ready batches)."""
from __future__ import annotations

from typing import Iterable

import numpy as np


def epoch_order(n: int, epoch: int, seed: int = 0, shuffle: bool = True) -> np.ndarray:
    """The sample order of epoch ``epoch``: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)


def batch_indices(n: int, batch_size: int, epoch: int, seed: int = 0, shuffle: bool = True,
                  last_batch: str = "drop") -> list[tuple[np.ndarray, int]]:
    """(sample indices, how many are real) per batch of an epoch. A last partial batch is
    dropped, kept short, or padded to ``batch_size`` with the epoch's first samples again."""
    order = epoch_order(n, epoch, seed, shuffle)
    full, rest = divmod(n, batch_size)
    out = [(order[i * batch_size:(i + 1) * batch_size], batch_size) for i in range(full)]
    if rest and last_batch != "drop":
        idx = order[full * batch_size:]
        if last_batch == "pad":
            idx = np.concatenate([idx, np.resize(order, batch_size - rest)])
        out.append((idx, rest))
    return out


class Source:
    """Arrays (batched here: seeded order, last partial batch) or an iterable of batches."""

    def __init__(self, arrays: dict | None = None, data: Iterable | None = None):
        self.arrays, self.data = arrays, data
        self.n = len(next(iter(arrays.values()))) if arrays is not None else -1
        self.once = data is not None and iter(data) is data

    def num_batches(self, t: "Trainer") -> int | None:
        if self.arrays is None:
            return len(self.data) if hasattr(self.data, "__len__") else None
        return self.n // t.batch_size + (self.n % t.batch_size > 0 and t.last_batch != "drop")

    def batches(self, t: "Trainer", epoch: int, start: int, shuffle: bool, last: str):
        if self.arrays is not None:
            for idx, real in batch_indices(self.n, t.batch_size, epoch, t.seed, shuffle,
                                           last)[start:]:
                yield {k: a[idx] for k, a in self.arrays.items()}, real
            return
        for i, b in enumerate(self.data):
            if i >= start:
                feeds = t._feeds(b, f"batch {i} of the data")
                yield feeds, len(next(iter(feeds.values())))
