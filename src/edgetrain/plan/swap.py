"""Which activations to swap to storage, and where the swap steps go (``runtime/swap.py`` has
the steps and the file).

A candidate is a value forward makes and backward reads, with a gap between its last forward
reader ``f`` and its first backward reader ``b`` longer than twice the look-ahead ``L``: it is
written out after ``f``, its bytes freed at ``f + L``, read back from ``b - L`` and ready at
``b``. Between the two it takes no arena bytes. :func:`choose` swaps, one at a time, the largest
candidate idle over the step where the most bytes are live, until the lower bound of the plan
fits the target or no candidate helps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..graph.infer import Inferred, Step
from ..graph.ir import Node
from ..ops.registry import ET_DOMAIN, make_context
from .lifetimes import analyze, nbytes

SUFFIX = "::swapped"


@dataclass(frozen=True)
class SwapSettings:
    """Swap until the step's planned bytes (arena lower bound) are at most ``target``."""

    target: int                   # bytes
    directory: str | None = None  # where the swap file goes (default: the temp directory)
    lookahead: int = 4            # steps between starting a transfer and needing it done
    min_bytes: int = 64 * 1024    # smaller tensors are not worth a transfer


@dataclass(frozen=True)
class Candidate:
    value: str
    nbytes: int
    last_forward: int   # f
    first_backward: int  # b


def candidates(steps: Sequence[Step], types, external: set[str], backward_from: int | None,
               lookahead: int, min_bytes: int) -> list[Candidate]:
    if backward_from is None:
        return []
    made: dict[str, int] = {}
    reads: dict[str, list[int]] = {}
    for i, s in enumerate(steps):
        for x in s.node.inputs:
            if x:
                reads.setdefault(x, []).append(i)
        for y in s.node.outputs:
            if y:
                made.setdefault(y, i)
    out = []
    for v, i in made.items():
        if i >= backward_from or v in external or nbytes(types[v]) < min_bytes:
            continue
        uses = reads.get(v, [])
        fwd = [u for u in uses if u < backward_from]
        bwd = [u for u in uses if u >= backward_from]
        if not bwd:
            continue
        f, b = max(fwd, default=i), min(bwd)
        if b - f > 2 * lookahead + 2:
            out.append(Candidate(v, nbytes(types[v]), f, b))
    return out


def _step(op: str, inputs: list[str], outputs: list[str], attrs: dict, name: str) -> Step:
    from ..runtime import swap as _ops  # noqa: F401  (registers the swap ops)
    opdef, ctx = make_context(op, ET_DOMAIN, name, 1, attrs, len(inputs), len(outputs))
    return Step(Node(op, inputs, outputs, attrs, name, ET_DOMAIN), opdef, ctx)


def insert(inferred: Inferred, chosen: Sequence[Candidate], lookahead: int, swap_file
           ) -> tuple[Inferred, list[int]]:
    """The steps with the swap steps of ``chosen`` (slots added to ``swap_file``), and for each
    new step the index of the original step it stands at."""
    before: dict[int, list[Step]] = {}
    after: dict[int, list[Step]] = {}
    rename: dict[str, tuple[str, int]] = {}
    types = dict(inferred.types)
    for c in chosen:
        slot = swap_file.add(c.nbytes)
        attrs = {"swap": swap_file, "slot": slot}
        back = c.value + SUFFIX
        types[back] = types[c.value]
        f, b, L = c.last_forward, c.first_backward, lookahead
        after.setdefault(f, []).append(_step("SwapOut", [c.value], [], attrs, f"SwapOut/{c.value}"))
        after.setdefault(f + L, []).append(
            _step("SwapFree", [c.value], [], attrs, f"SwapFree/{c.value}"))
        before.setdefault(b - L, []).append(_step(
            "SwapIn", [], [back], {**attrs, "type": types[c.value]}, f"SwapIn/{c.value}"))
        before.setdefault(b, []).append(_step("SwapReady", [back], [], attrs,
                                              f"SwapReady/{c.value}"))
        rename[c.value] = (back, b)
    steps: list[Step] = []
    origin: list[int] = []
    for i, s in enumerate(inferred.steps):
        for extra in before.get(i, []):
            steps.append(extra)
            origin.append(i)
        if any(x in rename and i >= rename[x][1] for x in s.node.inputs):
            node = Node(s.node.op_type, [rename[x][0] if x in rename and i >= rename[x][1]
                                         else x for x in s.node.inputs],
                        s.node.outputs, s.node.attrs, s.node.name, s.node.domain)
            s = Step(node, s.opdef, s.ctx)
        steps.append(s)
        origin.append(i)
        for extra in after.get(i, []):
            steps.append(extra)
            origin.append(i)
    return Inferred(types, steps, inferred.constants), origin


def _profile(buffers, n: int) -> np.ndarray:
    live = np.zeros(n + 2, np.int64)  # graph outputs live to step n (the end)
    for buf in buffers:
        live[buf.first] += buf.nbytes
        live[buf.last + 1] -= buf.nbytes
    return np.cumsum(live)[:n]


def choose(inferred: Inferred, outputs, external: set[str], backward_from: int | None, *,
           inplace: bool, target: int, lookahead: int, min_bytes: int, swap_file
           ) -> tuple[Inferred, int]:
    """The steps with swaps chosen until the plan's lower bound is at most ``target`` bytes (or
    nothing more helps), and how many values are swapped."""
    pool = candidates(inferred.steps, inferred.types, external, backward_from, lookahead,
                      min_bytes)
    chosen: list[Candidate] = []
    useless: set[str] = set()
    best = None
    while True:
        trial_file = type(swap_file)()
        steps, origin = insert(inferred, chosen, lookahead, trial_file)
        buffers, _ = analyze(steps.steps, steps.types, outputs, external, inplace=inplace)
        live = _profile(buffers, len(steps.steps))
        peak = int(live.max()) if len(live) else 0
        if best is not None and peak >= best and chosen:
            useless.add(chosen.pop().value)  # it did not lower the peak: keep it instead
        else:
            best = peak
        if best <= target:
            break
        at = origin[min(int(np.argmax(live)), len(origin) - 1)]
        idle = [c for c in pool if c not in chosen and c.value not in useless
                and c.last_forward + lookahead < at < c.first_backward - lookahead]
        if not idle:
            break
        chosen.append(max(idle, key=lambda c: c.nbytes))
    if not chosen:
        return inferred, 0
    steps, _ = insert(inferred, chosen, lookahead, swap_file)
    return steps, len(chosen)
