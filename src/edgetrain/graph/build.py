"""Emit new nodes into a graph under fresh, collision-free names (backward passes, losses)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .ir import Graph, Node


def taken_names(graph: Graph) -> set[str]:
    """Every value name the graph already uses."""
    return ({v.name for v in graph.inputs} | set(graph.initializers)
            | {o for n in graph.nodes for o in n.outputs} | {v.name for v in graph.outputs})


class NodeBuilder:
    """Collects new nodes and constants for ``graph``; names never clash with existing ones."""

    tag = "new"  # infix of generated names: f"{hint}__{tag}{n}"

    def __init__(self, graph: Graph):
        self.graph = graph
        self.nodes: list[Node] = []
        self.constants: dict[str, np.ndarray] = {}
        self._taken = taken_names(graph)
        self._count = 0
        self.current = ""  # a prefix for generated names (the node or loss being built)

    def fresh(self, hint: str) -> str:
        while True:
            self._count += 1
            name = f"{hint}__{self.tag}{self._count}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def claim(self, name: str) -> str:
        """``name`` itself if no value has it yet, else a fresh name derived from it."""
        if name in self._taken:
            return self.fresh(name)
        self._taken.add(name)
        return name

    def reserve(self, name: str) -> bool:
        """Take ``name`` exactly (a new graph input); False if a value already has it."""
        if name in self._taken:
            return False
        self._taken.add(name)
        return True

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, *, domain: str = "",
           **attrs) -> str | list[str]:
        """Emit a node; returns its output name (or names when ``n_out > 1``)."""
        outs = [self.fresh(f"{self.current}/{op_type}") for _ in range(n_out)]
        name = self.fresh(f"{self.current}/{op_type}_node")
        self.nodes.append(Node(op_type, list(inputs), outs, attrs, name, domain))
        return outs[0] if n_out == 1 else outs

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        name = self.fresh(hint)
        self.constants[name] = np.asarray(value)
        return name
