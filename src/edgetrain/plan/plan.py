"""Plan = the tensor table of a step plus its placement, with a printable report."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..graph.infer import Inferred, infer
from ..graph.ir import Graph
from ..ops.registry import ET_DOMAIN, TensorType
from .lifetimes import Buffer, analyze, nbytes
from .placement import Placement, place


@dataclass
class Plan:
    buffers: list[Buffer]
    owner: dict[str, str]          # value -> buffer
    placement: Placement
    external_bytes: dict[str, int]  # kind (inputs, parameters, constants) -> bytes
    n_steps: int

    def report(self, top: int = 8) -> str:
        p = self.placement
        mb = 1 / 2 ** 20
        lines = [f"steps: {self.n_steps}, buffers: {len(self.buffers)} "
                 f"(values sharing a buffer: {len(self.owner) - len(self.buffers)})",
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
              variables=()) -> Plan:
    """The plan of one run of ``graph`` for the input types in ``signature``."""
    inferred: Inferred = infer(graph, dict(signature), variables=variables)
    steps = inferred.steps
    external = set(signature) | set(graph.initializers) | set(inferred.constants)
    seed = next((i for i, s in enumerate(steps)
                 if s.node.op_type == "OnesLike" and s.node.domain == ET_DOMAIN), None)
    outputs = [v.name for v in graph.outputs]
    buffers, owner = analyze(steps, inferred.types, outputs, external, inplace=inplace,
                             backward_from=seed)
    placement = place([b.interval() for b in buffers])
    sizes = {
        "inputs": sum(nbytes(inferred.types[k]) for k in signature),
        "constants": int(sum(np.asarray(v).nbytes for v in inferred.constants.values())),
    }
    return Plan(buffers, owner, placement, sizes, len(steps))
