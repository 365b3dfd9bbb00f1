"""Plan = the tensor table of a step plus its placement, with a printable report."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..graph.infer import Inferred, infer
from ..graph.ir import Graph
from ..ops.registry import ET_DOMAIN, TensorType
from .lifetimes import Buffer, analyze, nbytes
from .mutation import settle
from .swap import SUFFIX as SWAPPED, SwapSettings, choose
from .placement import Placement, place
from .recompute import SUFFIX, recompute as recompute_cheap


@dataclass
class Plan:
    buffers: list[Buffer]
    owner: dict[str, str]          # value -> buffer
    placement: Placement
    external_bytes: dict[str, int]  # kind (inputs, parameters, constants) -> bytes
    n_steps: int
    inferred: Inferred              # the steps planned (with recomputations, if any)
    recomputed: int = 0
    swapped: int = 0                # values swapped to storage between forward and backward
    swap_file: object = None        # their runtime.swap.SwapFile (opened when bound)

    def timeline(self) -> dict[str, np.ndarray]:
        """Arena bytes live at each step, by kind (activation, gradient, output)."""
        out: dict[str, np.ndarray] = {}
        for b in self.buffers:
            live = out.setdefault(b.kind, np.zeros(self.n_steps + 1, np.int64))
            live[b.first:b.last + 1] += b.nbytes
        return out

    def summary(self, top: int = 8) -> dict:
        """The report as plain data (``edgetrain plan --json``)."""
        p = self.placement
        return {"steps": self.n_steps, "buffers": len(self.buffers),
                "recomputed": self.recomputed, "arena_bytes": p.arena,
                "lower_bound_bytes": p.lower_bound, "efficiency": round(p.efficiency, 4),
                "outside_arena_bytes": dict(self.external_bytes),
                "largest": [{"name": b.name, "bytes": b.nbytes, "first": b.first,
                             "last": b.last, "kind": b.kind}
                            for b in sorted(self.buffers, key=lambda b: -b.nbytes)[:top]]}

    def report(self, top: int = 8) -> str:
        p = self.placement
        mb = 1 / 2 ** 20
        lines = [f"steps: {self.n_steps}, buffers: {len(self.buffers)} "
                 f"(values sharing a buffer: {len(self.owner) - len(self.buffers)}, "
                 f"recomputed in backward: {self.recomputed})",
                 f"arena: {p.arena * mb:.2f} MiB, lower bound: {p.lower_bound * mb:.2f} MiB, "
                 f"efficiency {p.efficiency:.1%}"]
        for kind, n in self.external_bytes.items():
            lines.append(f"{kind}: {n * mb:.2f} MiB")
        lines.append("largest tensors (bytes, first..last step, kind):")
        for b in sorted(self.buffers, key=lambda b: -b.nbytes)[:top]:
            lines.append(f"  {b.nbytes * mb:8.2f} MiB  {b.first:4d}..{b.last:<4d} {b.kind:10s} "
                         f"{b.name}")
        return "\n".join(lines)


def make_plan(graph: Graph, signature: Mapping[str, TensorType], *, inplace: bool = True,
              recompute: bool = True, variables=(), swap: SwapSettings | None = None) -> Plan:
    """The plan of one run of ``graph`` for the input types in ``signature``."""
    inferred: Inferred = infer(graph, dict(signature), variables=variables)
    return plan_inferred(graph, inferred, signature, inplace=inplace, recompute=recompute,
                         swap=swap)


def plan_inferred(graph: Graph, inferred: Inferred, signature: Mapping[str, TensorType], *,
                  inplace: bool = True, recompute: bool | int = True,
                  swap: SwapSettings | None = None) -> Plan:
    """The plan of the steps ``infer`` gave for ``signature``.

    ``inplace``: elementwise ops write over an input that dies there. ``recompute``: cheap
    activations are computed again in backward rather than kept (:mod:`.recompute`); an integer
    K also keeps only every K-th expensive activation (segment checkpointing). Steps that
    update a parameter in place run as soon as they safely can (:mod:`.mutation`). ``swap``:
    activations go to storage between forward and backward until the plan fits its target
    (:mod:`.swap`).
    """
    external = set(signature) | set(graph.initializers) | set(inferred.constants)
    # values NumPy cannot hold in raw bytes (strings) live on the heap, outside the arena
    external |= {k for k, t in inferred.types.items() if np.dtype(t.dtype).hasobject}
    seed = next((i for i, s in enumerate(inferred.steps)
                 if s.node.op_type == "OnesLike" and s.node.domain == ET_DOMAIN), None)
    outputs = [v.name for v in graph.outputs]
    n_recomputed = 0
    if recompute:
        segments = recompute if not isinstance(recompute, bool) else None
        inferred, n_recomputed = recompute_cheap(inferred, seed, external, outputs, segments)
    if any(s.opdef.mutates is not None for s in inferred.steps):  # optimizer updates, early
        inferred = Inferred(inferred.types, settle(inferred.steps), inferred.constants)
    swap_file, n_swapped = None, 0
    if swap is not None:
        from ..runtime.swap import SwapFile
        swap_file = SwapFile(swap.directory)
        inferred, n_swapped = choose(inferred, outputs, external, seed, inplace=inplace,
                                     target=swap.target, lookahead=swap.lookahead,
                                     min_bytes=swap.min_bytes, swap_file=swap_file)
        if not n_swapped:
            swap_file = None
        else:  # the swap steps inserted in forward moved backward's first step
            seed = next((i for i, s in enumerate(inferred.steps)
                         if s.node.op_type == "OnesLike" and s.node.domain == ET_DOMAIN), None)
    steps = inferred.steps
    buffers, owner = analyze(steps, inferred.types, outputs, external, inplace=inplace,
                             backward_from=seed)
    for b in buffers:
        if b.name.endswith((SUFFIX, SWAPPED)):
            b.kind = "activation"  # recomputed or read back in backward: an activation still
    placement = place([b.interval() for b in buffers])
    sizes = {
        "inputs": sum(nbytes(inferred.types[k]) for k in signature),
        "constants": int(sum(np.asarray(v).nbytes for v in inferred.constants.values())),
    }
    return Plan(buffers, owner, placement, sizes, len(steps), inferred, n_recomputed, n_swapped,
                swap_file)
