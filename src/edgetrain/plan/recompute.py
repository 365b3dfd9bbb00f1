"""Recomputation: cheap activations are computed again in backward instead of kept from forward.

In a Conv → BatchNormalization → Clip chain, backward reads the Conv output (BatchNorm's
weight gradient), the BatchNorm output (Clip's mask) and the Clip output (the next Conv's weight
gradient): three tensors of one size kept from forward to backward. BatchNorm (inference form)
and Clip cost one or two passes over memory, so this pass keeps only the Conv output and runs
BatchNorm and Clip again just before backward first needs them. Forward's own BatchNorm output
then dies at the Clip, which writes over it in place.

A value is recomputed when its step is a *cheap* op (below), it is read in backward, and every
input it needs is available there: kept for backward, recomputable itself (then recomputed
first), or outside the arena (feeds, parameters, constants). The copy runs the same kernel on the same inputs, so the
results are bit-identical.
"""
from __future__ import annotations

import copy
from typing import Mapping, Sequence

from ..graph.infer import Inferred, Step
from ..graph.ir import Node

CHEAP_OPS = frozenset({
    "Relu", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Neg", "Abs",
    "Add", "Sub", "Mul", "BatchNormalization", "Identity", "Reshape", "Flatten", "Squeeze",
    "Unsqueeze"})
SUFFIX = "::recomputed"


def _cheap(step: Step) -> bool:
    node = step.node
    if node.domain not in ("", "ai.onnx") or node.op_type not in CHEAP_OPS:
        return False
    if sum(1 for y in node.outputs if y) != 1:
        return False  # BatchNormalization in training form also updates running statistics
    return not (node.op_type == "BatchNormalization" and node.attrs.get("training_mode", 0))


def _recomputable(step: Step) -> bool:
    """Any deterministic forward step with one output (segment checkpointing)."""
    node = step.node
    return (step.opdef.foldable and step.opdef.mutates is None and node.outputs
            and sum(1 for y in node.outputs if y) == 1 and node.domain in ("", "ai.onnx")
            and not (node.op_type == "BatchNormalization" and node.attrs.get("training_mode", 0)))


def segment_values(steps: Sequence[Step], backward_from: int, every: int) -> set[str]:
    """Segment checkpointing: of the values that expensive forward steps make and backward
    reads, keep every ``every``-th (the checkpoints); the others may be recomputed, each from
    the checkpoint before it, when backward reaches their segment."""
    read_later = {x for s in steps[backward_from:] for x in s.node.inputs if x}
    made = [s.node.outputs[0] for s in steps[:backward_from]
            if not _cheap(s) and _recomputable(s) and s.node.outputs[0] in read_later]
    return {y for i, y in enumerate(made) if i % every != every - 1}


def recompute(inferred: Inferred, backward_from: int | None, external: set[str],
              outputs: Sequence[str], segments: int | None = None) -> tuple[Inferred, int]:
    """The steps with cheap activations recomputed in backward (and, with ``segments=K``, all
    but every K-th expensive one: :func:`segment_values`), and how many were."""
    steps = inferred.steps
    if backward_from is None:
        return inferred, 0
    forward, backward = steps[:backward_from], steps[backward_from:]
    read_later = {x for s in backward for x in s.node.inputs if x}
    keep = set(outputs)
    extra = segment_values(steps, backward_from, segments) if segments and segments > 1 else set()
    # recomputable: a cheap step whose inputs backward has (kept, recomputable, or external)
    can: dict[str, Step] = {}
    for s in forward:
        y = s.node.outputs[0] if s.node.outputs else ""
        if not (_cheap(s) or (y in extra and _recomputable(s))) or y in keep:
            continue
        ins = [x for x in s.node.inputs if x and x not in external]
        if all(x in can or x in read_later for x in ins):
            can[y] = s
    # an expensive value is recomputed only to be read: its inputs then live no longer than it
    chosen = {y: s for y, s in can.items() if y in read_later}
    if not chosen:
        return inferred, 0
    types = dict(inferred.types)
    done: dict[str, str] = {}
    out: list[Step] = list(forward)

    def emit(y: str) -> str:
        if y in done:
            return done[y]
        s = can[y]
        ins = [emit(x) if x in can else x for x in s.node.inputs]
        name = y + SUFFIX
        node = Node(s.node.op_type, ins, [name], s.node.attrs, s.node.name + SUFFIX, s.node.domain)
        ctx = copy.copy(s.ctx)
        ctx.name, ctx.out = node.name, None
        out.append(Step(node, s.opdef, ctx))
        types[name] = types[y]
        done[y] = name
        return name

    for s in backward:
        if any(x in chosen for x in s.node.inputs):
            node = copy.copy(s.node)
            node.inputs = [emit(x) if x in chosen else x for x in s.node.inputs]
            ctx = copy.copy(s.ctx)
            ctx.out = None
            s = Step(node, s.opdef, ctx)
        out.append(s)
    return Inferred(types, out, inferred.constants), len(done)
