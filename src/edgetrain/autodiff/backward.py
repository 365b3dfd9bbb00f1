"""Reverse-mode differentiation of a Graph into backward *nodes* (a graph like any other).

Only values on a path from a value we differentiate with respect to (``wrt``: trainable
parameters, or any input) to the loss get a backward: a frozen backbone gets none. Values used more
than once sum their gradients. Each op's rule lives beside its kernel (``@gradient`` in its ops
family file) and emits nodes through a :class:`GradBuilder`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from ..errors import EdgetrainError
from ..graph.build import NodeBuilder
from ..graph.ir import Graph, Node, Value
from ..ops.registry import ET_DOMAIN, gradient_rule

# ops whose outputs carry no gradient (indices, shapes, booleans); gradient stops there
NON_DIFFERENTIABLE = frozenset({
    "Shape", "Size", "Equal", "Less", "Greater", "Not", "And", "Or", "ArgMax", "ConstantOfShape",
    "Range", "Constant",
})


class GradientError(EdgetrainError):
    """A value on the path to the loss goes through an op that has no gradient rule."""


class GradBuilder(NodeBuilder):
    """What a gradient rule uses to emit backward nodes."""

    tag = "grad"

    def __init__(self, graph: Graph, active: set[str]):
        super().__init__(graph)
        self.active = active

    def needs(self, node: Node, i: int) -> bool:
        """Does input ``i`` of ``node`` need a gradient?"""
        return i < len(node.inputs) and node.inputs[i] in self.active

    def et(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs):
        """Emit one of edgetrain's own backward ops (domain ai.edgetrain)."""
        return self.op(op_type, inputs, n_out, domain=ET_DOMAIN, **attrs)

    def sum_to(self, dy: str, like: str) -> str:
        """``dy`` summed over the axes along which ``like`` was broadcast (undo broadcasting)."""
        return self.et("SumTo", [dy, like])


@dataclass
class Backward:
    graph: Graph                  # forward + backward nodes; outputs: forward outputs + grads
    gradients: dict[str, str]     # wrt name -> gradient value name
    loss: str


def _reachable_from(nodes: Sequence[Node], start: set[str]) -> set[str]:
    seen = set(start)
    for n in nodes:
        if n.op_type in NON_DIFFERENTIABLE:
            continue
        if any(x in seen for x in n.inputs if x):
            seen.update(o for o in n.outputs if o)
    return seen


def _reaching(nodes: Sequence[Node], target: str) -> set[str]:
    seen = {target}
    for n in reversed(nodes):
        if any(o in seen for o in n.outputs if o):
            seen.update(x for x in n.inputs if x)
    return seen


def build_backward(graph: Graph, loss: str, wrt: Iterable[str], *,
                   grad_suffix: str = "_grad") -> Backward:
    """Append to ``graph`` the nodes computing d loss / d w for every ``w`` in ``wrt``."""
    wrt = list(wrt)
    known = {v.name for v in graph.inputs} | set(graph.initializers)
    for w in wrt:
        if w not in known:
            raise GradientError(f"cannot differentiate with respect to {w!r}: it is not a graph "
                                "input or initializer")
    active = _reachable_from(graph.nodes, set(wrt)) & _reaching(graph.nodes, loss)
    g = GradBuilder(graph, active)
    partials: dict[str, list[str]] = {loss: [g.et("OnesLike", [loss])]}

    def total(value: str) -> str | None:
        parts = partials.get(value)
        if not parts:
            return None
        acc = parts[0]
        for p in parts[1:]:
            acc = g.op("Add", [acc, p])
        partials[value] = [acc]
        return acc

    for node in reversed(graph.nodes):
        if not any(o in active for o in node.outputs if o):
            continue
        if not any(g.needs(node, i) for i in range(len(node.inputs))):
            continue
        dys = [total(o) if o else None for o in node.outputs]
        if all(d is None for d in dys):
            continue
        rule = gradient_rule(node.op_type, node.domain)
        if rule is None:
            raise GradientError(f"no gradient rule for op {node.op_type!r} (node {node.name!r}), "
                                f"which lies between a trainable value and the loss {loss!r}")
        g.current = node.name or node.op_type
        dxs = rule(g, node, dys)
        for i, (x, dx) in enumerate(zip(node.inputs, dxs)):
            if dx is not None and x in active:
                partials.setdefault(x, []).append(dx)

    grads: dict[str, str] = {}
    for w in wrt:
        dw = total(w)
        out = g.claim(w + grad_suffix)
        src = dw if dw is not None else g.et("ZerosLike", [w])
        g.nodes.append(Node("Identity", [src], [out], {}, g.fresh(f"{w}/grad_out"), ""))
        grads[w] = out

    outputs = list(graph.outputs)
    if loss not in {v.name for v in outputs}:
        outputs.append(Value(loss, None, None))
    outputs += [Value(grads[w], None, None) for w in wrt]
    new = Graph(graph.nodes + g.nodes, list(graph.inputs), outputs,
                {**graph.initializers, **g.constants}, {**graph.opsets, ET_DOMAIN: 1},
                graph.name, set(graph.overridable), dict(graph.doc))
    return Backward(new, grads, loss)
