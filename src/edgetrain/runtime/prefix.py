"""The frozen prefix of a training step, run over the batch in chunks.

When only the head of a network trains (transfer learning), the backbone's forward pass keeps
nothing for backward: it only has to produce the features the head reads. If every op of that
backbone treats the samples of the batch independently (convolutions, BatchNorm in inference form,
activations, pooling...), it can run over a few samples at a time, and its arena is planned for
that chunk instead of the whole batch. The features of each chunk are written into their rows of
one full-batch buffer, which the rest of the step (the head, the loss, backward) reads as an input.

Per sample, the kernels do the same arithmetic in both cases, so the results are the same; the
tests check them bit for bit. That is why Gemm and MatMul are not on the list: BLAS sums a row's
products in an order that depends on how many rows it is given (a convolution's GEMM runs per
image, so it is).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from ..graph.infer import infer
from ..graph.ir import Graph, Node, Value
from ..ops.registry import TensorType

# ops that compute each sample (axis 0) from that sample alone
SEPARABLE = frozenset({
    "Conv", "ConvTranspose", "BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid",
    "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Erf", "Elu", "Selu", "Softplus", "Neg", "Abs",
    "Exp", "Sqrt", "Add", "Sub", "Mul", "Div", "MaxPool", "AveragePool", "GlobalAveragePool",
    "GlobalMaxPool", "Identity", "Flatten", "LayerNormalization", "Softmax", "Pad", "Resize"})
BROADCASTING = frozenset({"Add", "Sub", "Mul", "Div"})
MIN_NODES = 3  # not worth a second session below this


@dataclass
class PrefixSplit:
    prefix: Graph      # batch inputs (+ frozen parameters) -> frontier
    rest: Graph        # the original inputs + frontier -> the original outputs
    frontier: list[str]
    batch_inputs: list[str]


def _separable(node: Node, types: Mapping[str, TensorType], batch: int, in_prefix: set) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type not in SEPARABLE:
        return False
    outs = [y for y in node.outputs if y]
    if len(outs) != 1:
        return False  # BatchNormalization in training form: batch statistics
    if node.op_type == "BatchNormalization" and node.attrs.get("training_mode", 0):
        return False
    if node.op_type == "Flatten" and node.attrs.get("axis", 1) < 1:
        return False
    if node.op_type in ("Softmax", "LayerNormalization") and node.attrs.get("axis", -1) == 0:
        return False
    y = types[outs[0]]
    if y.rank < 1 or y.shape[0] != batch:
        return False
    if node.op_type not in BROADCASTING:
        return True
    for x in node.inputs:  # operands that are not samples broadcast along the batch axis
        if x and x not in in_prefix:
            t = types[x]
            if t.rank == y.rank and t.shape[0] != 1:
                return False
    return True


def split_frozen_prefix(graph: Graph, types: Mapping[str, TensorType], batch_inputs: list[str],
                        variables: set[str]) -> PrefixSplit | None:
    """The longest run of sample-separable forward nodes that read the batch inputs and none of
    ``variables`` (trainable parameters, labels), or None when there is none worth splitting."""
    batch = {types[x].shape[0] for x in batch_inputs if types[x].rank}
    if len(batch) != 1:
        return None
    n = batch.pop()
    tainted, in_prefix = set(variables), set(batch_inputs)
    prefix: list[Node] = []
    folded: set[str] = {k for k, t in types.items() if t.value is not None}
    for node in graph.nodes:
        ins = [x for x in node.inputs if x]
        outs = [y for y in node.outputs if y]
        if any(x in tainted for x in ins):
            tainted.update(outs)
            continue
        if all(y in folded for y in outs):
            continue  # shapes and constants: folded in both graphs
        if any(x in in_prefix for x in ins) and _separable(node, types, n, in_prefix) \
                and all(x in in_prefix or x not in tainted for x in ins):
            prefix.append(node)
            in_prefix.update(outs)
    if len(prefix) < MIN_NODES:
        return None
    mine = {id(node) for node in prefix}
    rest_nodes = [node for node in graph.nodes if id(node) not in mine]
    read_by_rest = {x for node in rest_nodes for x in node.inputs if x}
    read_by_rest |= {v.name for v in graph.outputs}
    frontier = [y for node in prefix for y in node.outputs if y and y in read_by_rest]
    needed = {x for node in prefix for x in node.inputs if x}
    # the folded nodes the prefix reads (shape chains), kept in order
    producers = {y: node for node in graph.nodes for y in node.outputs if y}
    extra, stack = [], [x for x in needed if x in folded and x in producers]
    while stack:
        node = producers[stack.pop()]
        if id(node) not in mine and node not in extra:
            extra.append(node)
            stack += [x for x in node.inputs if x in folded and x in producers]
    order = {id(node): i for i, node in enumerate(graph.nodes)}
    prefix_nodes = sorted(prefix + extra, key=lambda node: order[id(node)])
    needed |= {x for node in extra for x in node.inputs if x}
    sym = "edgetrain_batch"

    def value(name: str) -> Value:
        t = types[name]
        return Value(name, np.dtype(t.dtype), (sym,) + tuple(t.shape[1:]))

    p_inputs = [v for v in graph.inputs if v.name in needed]
    p_inits = {k: a for k, a in graph.initializers.items() if k in needed}
    prefix_graph = Graph(prefix_nodes, p_inputs, [value(y) for y in frontier], p_inits,
                         dict(graph.opsets), graph.name + "_prefix")
    rest_graph = Graph(rest_nodes, list(graph.inputs) + [value(y) for y in frontier],
                       list(graph.outputs), dict(graph.initializers), dict(graph.opsets),
                       graph.name, set(graph.overridable), dict(graph.doc))
    return PrefixSplit(prefix_graph, rest_graph, frontier, list(batch_inputs))


def chunk_size(arena_per_sample: int, batch: int, budget: int) -> int:
    """Samples per chunk: as many as ``budget`` holds, or fewer to split the batch evenly (down to
    half as many), since every chunk size is a plan with an arena of its own; when no size in
    that range divides the batch, :func:`chunk_starts` overlaps the last chunk instead."""
    most = max(1, min(batch, budget // max(arena_per_sample, 1)))
    for k in range(most, (most + 1) // 2 - 1, -1):
        if batch % k == 0:
            return k
    return most


def chunk_starts(batch: int, step: int) -> list[int]:
    """Where each chunk of ``step`` samples starts; the last one ends at the batch's end and may
    overlap the one before (its samples are computed twice, to the same bits)."""
    starts = list(range(0, batch - step + 1, step))
    if starts[-1] + step < batch:
        starts.append(batch - step)
    return starts


class ChunkedPrefix:
    """Runs ``split.prefix`` over the batch in chunks into full-batch frontier buffers."""

    def __init__(self, split: PrefixSplit, session_factory, budget: int):
        self.split = split
        self.session = session_factory(split.prefix)
        self.budget = budget
        self._buffers: dict[tuple, list[np.ndarray]] = {}
        self._chunk: dict[tuple, int] = {}

    def _mine(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = {v.name for v in self.split.prefix.inputs}
        return {k: v for k, v in feeds.items() if k in names}

    def chunk(self, feeds: Mapping[str, np.ndarray]) -> int:
        """How many samples a chunk holds for a batch like this one."""
        mine = self._mine(feeds)
        batch = mine[self.split.batch_inputs[0]].shape[0]
        key = tuple((k, mine[k].shape, mine[k].dtype.str) for k in self.split.batch_inputs)
        if key not in self._chunk:
            one = {k: (v[:1] if k in self.split.batch_inputs else v) for k, v in mine.items()}
            per_sample = self.session.memory_plan(one).placement.arena \
                if self.session.planned else 0
            self._chunk[key] = chunk_size(per_sample, batch, self.budget)
        return self._chunk[key]

    def chunk_plan(self, feeds: Mapping[str, np.ndarray]):
        """The plan of one chunk (the prefix's arena), with the chunk size."""
        step, mine = self.chunk(feeds), self._mine(feeds)
        part = {k: (v[:step] if k in self.split.batch_inputs else v) for k, v in mine.items()}
        return self.session.plan_for(part).plan, step

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        mine = self._mine(feeds)
        batch = mine[self.split.batch_inputs[0]].shape[0]
        key = tuple((k, mine[k].shape, mine[k].dtype.str) for k in self.split.batch_inputs)
        step = self.chunk(feeds)
        outs = None
        for lo in chunk_starts(batch, step):
            part = {k: (v[lo:lo + step] if k in self.split.batch_inputs else v)
                    for k, v in mine.items()}
            got = self.session.run(self.split.frontier, part)
            if outs is None:
                outs = self._buffers.get(key)
                if outs is None:
                    outs = self._buffers[key] = [np.empty((batch,) + g.shape[1:], g.dtype)
                                                 for g in got]
            for buf, g in zip(outs, got):
                buf[lo:lo + step] = g
        return dict(zip(self.split.frontier, outs))
