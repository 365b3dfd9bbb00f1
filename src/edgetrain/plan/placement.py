"""Placement of tensors in one arena over their lifetimes (the memory plan's core).

Each tensor has a size and a lifetime ``[first, last]`` in step indices (inclusive). Two tensors
whose lifetimes overlap must not share bytes; two that do not may. ``place`` assigns offsets
largest first (ties: longer-lived first), each at the best-fitting gap among the tensors already
placed that overlap it in time — the smallest gap that holds it, else the top of what is in use
then — so big, long-lived tensors settle low and short ones fill the holes between them.
The lower bound no placement can beat is the largest total of bytes live at one step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

ALIGN = 64  # bytes: every offset and size is a multiple (cache lines, SIMD loads)


def aligned(n: int, align: int = ALIGN) -> int:
    return -(-int(n) // align) * align


@dataclass(frozen=True)
class Interval:
    """A tensor to place: ``nbytes`` live from step ``first`` to step ``last`` (inclusive)."""

    name: str
    nbytes: int
    first: int
    last: int

    def overlaps(self, other: "Interval") -> bool:
        return self.first <= other.last and other.first <= self.last


@dataclass
class Placement:
    offsets: dict[str, int]
    arena: int          # bytes the arena needs
    lower_bound: int    # max over steps of the bytes live then

    @property
    def efficiency(self) -> float:
        return self.lower_bound / self.arena if self.arena else 1.0


def lower_bound(tensors: Iterable[Interval], align: int = ALIGN) -> int:
    events: dict[int, int] = {}
    for t in tensors:
        size = aligned(t.nbytes, align)
        events[t.first] = events.get(t.first, 0) + size
        events[t.last + 1] = events.get(t.last + 1, 0) - size
    live = peak = 0
    for step in sorted(events):
        live += events[step]
        peak = max(peak, live)
    return peak


def place(tensors: Sequence[Interval], align: int = ALIGN) -> Placement:
    order = sorted(tensors, key=lambda t: (-aligned(t.nbytes, align), t.first - t.last, t.name))
    placed: list[tuple[Interval, int, int]] = []  # (tensor, offset, aligned size)
    offsets: dict[str, int] = {}
    arena = 0
    for t in order:
        size = aligned(t.nbytes, align)
        busy = sorted((off, off + sz) for other, off, sz in placed if other.overlaps(t))
        best, best_gap, cursor = None, None, 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= size and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, hi)
        offset = cursor if best is None else best
        offsets[t.name] = offset
        placed.append((t, offset, size))
        arena = max(arena, offset + size)
    return Placement(offsets, arena, lower_bound(tensors, align))


def check(tensors: Sequence[Interval], placement: Placement, align: int = ALIGN) -> None:
    """Raise if two tensors with overlapping lifetimes share bytes (the plan's invariant)."""
    spans = {t.name: (placement.offsets[t.name], placement.offsets[t.name] + aligned(t.nbytes, align))
             for t in tensors}
    ts = sorted(tensors, key=lambda t: t.first)
    for i, a in enumerate(ts):
        for b in ts[i + 1:]:
            if b.first > a.last:
                break
            (a0, a1), (b0, b1) = spans[a.name], spans[b.name]
            if a0 < b1 and b0 < a1 and a.nbytes and b.nbytes:
                raise AssertionError(f"{a.name} {a0}:{a1} [{a.first},{a.last}] and {b.name} "
                                     f"{b0}:{b1} [{b.first},{b.last}] overlap in time and memory")
        if spans[a.name][1] > placement.arena:
            raise AssertionError(f"{a.name} ends past the arena")
