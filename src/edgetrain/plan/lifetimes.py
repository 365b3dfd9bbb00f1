"""Execution-order analysis: every tensor of a step with its size and lifetime, and which tensors
can share one buffer (views, in-place ops) — the table the placement works on.

A *buffer* holds one or more values: a view op (Reshape, Flatten, Squeeze, Unsqueeze, Identity)
returns its input's buffer; an elementwise op, an activation or an inference BatchNormalization
writes over its input when that input dies at this step and has the output's size. A buffer lives
from the step that first writes it to the last step that reads any of its values; graph outputs
live to the end of the step. Feeds and constants (parameters) live outside the arena.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..graph.infer import Step
from ..ops.registry import TensorType
from .placement import Interval

VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "ReshapeTo"})


def is_view(node, types) -> bool:
    """The step's first output is its first input's bytes (a view op, or SumTo that sums
    nothing: its kernel returns the input)."""
    if node.op_type in VIEW_OPS:
        return True
    return (node.op_type == "SumTo" and bool(node.inputs) and bool(node.outputs)
            and types[node.inputs[0]].shape == types[node.outputs[0]].shape)
INPLACE_OPS = frozenset({
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "Gelu",
    "HardSigmoid", "HardSwish", "Erf", "Exp", "Log", "Sqrt", "Abs", "Neg", "Reciprocal",
    "Add", "Sub", "Mul", "Div", "BatchNormalization", "Scale", "CastLikeInput",
    "ClipGrad", "ActivationGrad"})


def nbytes(t: TensorType) -> int:
    return int(np.prod(t.shape, dtype=np.int64)) * np.dtype(t.dtype).itemsize


@dataclass
class Buffer:
    name: str                      # the first value written into it
    nbytes: int
    first: int
    last: int
    values: list[str] = field(default_factory=list)
    kind: str = "activation"       # activation | gradient | output

    def interval(self) -> Interval:
        return Interval(self.name, self.nbytes, self.first, self.last)


def analyze(steps: Sequence[Step], types: Mapping[str, TensorType], outputs: Sequence[str],
            external: set[str], *, inplace: bool = True, backward_from: int | None = None
            ) -> tuple[list[Buffer], dict[str, str]]:
    """(buffers, value -> buffer name) for the values the steps write.

    ``external``: values that live outside the arena (feeds, parameters, folded constants).
    ``backward_from``: index of the first backward step (its buffers are kind "gradient").
    """
    last_use: dict[str, int] = {}
    for i, s in enumerate(steps):
        for x in s.node.inputs:
            if x:
                last_use[x] = i
    end = len(steps)
    for o in outputs:
        last_use[o] = end
    owner: dict[str, str] = {}
    buffers: dict[str, Buffer] = {}
    external = set(external)
    for i, s in enumerate(steps):
        node = s.node
        for k, y in enumerate(node.outputs):
            if not y or y in external:
                continue
            size = nbytes(types[y])
            x = node.inputs[0] if node.inputs else ""
            if k == 0 and is_view(node, types) and x in external and y not in outputs:
                external.add(y)  # a view of a feed or parameter: no arena bytes
                continue
            shared = owner.get(x) if x else None
            if shared is not None and k == 0 and is_view(node, types):
                buf = buffers[shared]
            elif (shared is not None and k == 0 and inplace and _can_write_over(
                    node, i, size, types, last_use, buffers[shared], owner)):
                buf = buffers[shared]
            else:
                kind = "gradient" if backward_from is not None and i >= backward_from else "activation"
                buf = buffers[y] = Buffer(y, size, i, i, kind=kind)
            buf.values.append(y)
            buf.last = max(buf.last, last_use.get(y, i))
            owner[y] = buf.name
            if y in outputs:
                buf.kind = "output"
    return list(buffers.values()), owner


def _can_write_over(node, i, size, types, last_use, buf: Buffer, owner) -> bool:
    if node.op_type not in INPLACE_OPS:
        return False
    if node.op_type == "BatchNormalization" and len([o for o in node.outputs if o]) > 1:
        return False  # training mode also writes statistics
    x = node.inputs[0]
    if buf.nbytes != size or types[x].dtype != types[node.outputs[0]].dtype:
        return False
    if node.inputs.count(x) > 1 and node.op_type not in ("Add", "Mul"):
        return False
    # every value in the buffer must be dead after this step
    return all(last_use.get(v, -1) <= i for v in buf.values) and buf.kind != "output"
