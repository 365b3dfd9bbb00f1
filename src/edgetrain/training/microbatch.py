"""Micro-batches: a training step over a batch run as several smaller steps whose gradients add
up to the batch's, so that the step's memory is planned for a few samples instead of all.

This is exact in arithmetic (equal up to float rounding, not bit for bit: the gradients of the
parts are summed in another order) when two things hold, both checked before anything runs:

* the forward pass treats samples independently (:func:`why_not_separable`): convolutions,
  BatchNorm in inference form, matrix products with weights, attention within a sample...; not
  BatchNorm on batch statistics, not Dropout (its masks follow the batch layout);
* the loss of the batch is a weighted sum of the losses of the parts (``Roles.loss_split``,
  from ``Loss.batch_split``): a mean weighs each part by its share of the samples (or of the
  summed class weights of its counted labels), a sum by one.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import EdgetrainError
from ..graph.ir import Graph
from ..ops.registry import TensorType
from .fused import UpdateHook


class MemoryBudgetError(EdgetrainError):
    """A memory budget the step cannot fit; says the least it can reach."""


ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mod", "Where", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not", "Cast", "CastLike", "Relu",
    "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Erf",
    "Elu", "Selu", "Celu", "Softplus", "Softsign", "Mish", "Neg", "Abs", "Exp", "Log", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "IsNaN", "IsInf"})
PER_SAMPLE = frozenset({  # ops whose output sample i reads input sample i only (axis 0 kept)
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool",
    "GlobalMaxPool", "GlobalLpPool", "InstanceNormalization", "LRN", "Resize", "Upsample",
    "DepthToSpace", "SpaceToDepth"})
LAYOUT = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose",
                    "Expand", "Tile"})
AXIS_OPS = frozenset({"Softmax", "LogSoftmax", "LayerNormalization", "Concat", "Split",
                      "Hardmax", "CumSum"})
REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd",
                    "ReduceL1", "ReduceL2", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax",
                    "ArgMin"})


def forward_nodes(graph: Graph, outputs: list[str]) -> list:
    """The nodes ``outputs`` depend on (the forward pass of a training graph), in order."""
    need, out = set(outputs), []
    for node in reversed(graph.nodes):
        if any(y in need for y in node.outputs if y):
            out.append(node)
            need.update(x for x in node.inputs if x)
    return out[::-1]


def _axis0(node, types, n: int, batch: set[str]) -> str | None:
    """Why ``node`` may mix samples (None: it does not), from its op and the shapes at batch n."""
    op = node.op_type
    ins = [x for x in node.inputs if x]
    outs = [types[y] for y in node.outputs if y]
    if any(t.rank == 0 or t.shape[0] != n for t in outs):
        return "its output does not keep the batch on axis 0"
    tainted = [types[x] for x in ins if x in batch]
    other = [types[x] for x in ins if x not in batch]
    rank = outs[0].rank
    if op != "Gather" and any(t.rank == 0 or t.shape[0] != n for t in tainted):
        return "an input does not carry the batch on axis 0"
    if op in ELEMENTWISE or op in ("MatMul", "Gemm", "BatchNormalization", "Dropout"):
        if any(t.rank != rank for t in tainted) and op != "Gemm":
            return "an input from the batch is broadcast against it"
        if op not in ("MatMul", "Gemm") and any(t.rank == rank and t.shape[0] != 1
                                                for t in other):
            return "an operand of the full rank, not from the batch, is combined with it"
        if op == "Gemm" and (node.inputs[0] not in batch or node.attrs.get("transA", 0)
                             or node.inputs[1] in batch):
            return "Gemm takes the batch in its first operand only"
        if op == "BatchNormalization" and (node.attrs.get("training_mode", 0)
                                           or len(node.outputs) > 1):
            return "BatchNorm on batch statistics"
        return None  # Dropout: the caller refuses graphs that draw random masks
    if op in PER_SAMPLE:
        return None
    if op in LAYOUT:
        perm = node.attrs.get("perm")
        return "Transpose moves the batch axis" if perm is not None and perm[0] != 0 else None
    if op in AXIS_OPS or op in REDUCE:
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1] in types and op in REDUCE:
            value = types[node.inputs[1]].value
            axes = None if value is None else [int(a) for a in np.ravel(value)]
        if axes is None:
            axes = [node.attrs.get("axis", -1 if op not in ("Concat", "Split") else 0)]
            if op in REDUCE and not node.attrs.get("axes") and len(node.inputs) < 2:
                return "a reduction over every axis"
        r = types[ins[0]].rank
        return "it works along the batch axis" if any(a % r == 0 for a in axes) else None
    if op == "Gather":
        data, idx = node.inputs[0], node.inputs[1]
        axis = node.attrs.get("axis", 0) % max(types[data].rank, 1)
        if data not in batch and idx in batch and types[idx].shape[:1] == (n,):
            return None  # an embedding lookup per sample
        if data in batch and idx not in batch and axis != 0:
            return None
        return "Gather picks along the batch"
    if op in ("Slice", "Pad"):
        return None if types[ins[0]].shape[0] == n else "it changes the batch axis"
    return f"{op} is not known to treat samples independently"


def why_not_separable(graph: Graph, outputs: list[str], batch_inputs: list[str],
                      types: Mapping[str, TensorType]) -> str | None:
    """None when the forward pass (what ``outputs`` need) treats samples independently for the
    shapes in ``types``; else what mixes them (op, node, why)."""
    n = {types[x].shape[0] for x in batch_inputs if types[x].rank}
    if len(n) != 1:
        return "the inputs do not share one batch size"
    n = n.pop()
    batch = set(batch_inputs)
    for node in forward_nodes(graph, outputs):
        if not any(x in batch for x in node.inputs if x):
            continue  # weights, shapes, constants
        if all(types[y].value is not None for y in node.outputs if y):
            continue  # folded
        why = _axis0(node, types, n, batch)
        if why:
            return f"{node.op_type} node {node.name!r}: {why}"
        batch.update(y for y in node.outputs if y)
    return None


def part_weights(split: Mapping | None, labels: np.ndarray | None, batch: int,
                 starts: list[int], size: int) -> list[float]:
    """The weight of each part's loss (and gradients) in the batch's, per ``Loss.batch_split``;
    parts start at ``starts`` and hold ``size`` samples (the last one may hold fewer)."""
    if split is None:
        raise MemoryBudgetError("the loss does not split over micro-batches (a custom loss or "
                                "reduction 'none')")
    kind = split["kind"]
    if kind == "sum":
        return [1.0] * len(starts)
    if kind == "count":
        return [min(size, batch - lo) / batch for lo in starts]
    if kind == "label_weight":
        valid = labels != split["ignore_index"]
        w = valid.astype(np.float64)
        if split.get("weight") is not None:
            w = np.where(valid, np.asarray(split["weight"])[np.where(valid, labels, 0)], 0.0)
        parts = [float(w[lo:lo + size].sum()) for lo in starts]
        total = sum(parts)
        return [p / total if total else 0.0 for p in parts]
    raise MemoryBudgetError(f"unknown loss split {kind!r}")


# What a step uses outside its plan, bounded by construction: im2col columns (ops/conv.py's
# COLS_BUDGET, 4 MiB), depthwise blocks (1 MiB), the swap staging buffer (1 MiB), masks and
# small temporaries; and no more than twice the largest tensor (a small model's kernels need
# little). Without it a budget met on paper was 2 MB over under a hard cap.
SCRATCH = 8 * 2 ** 20
SEGMENTS = 2  # segment checkpointing under a budget: keep every other expensive activation


def _divisors_below(n: int) -> list[int]:
    return [k for k in range(n - 1, 0, -1) if n % k == 0]


class MicroBatcher:
    """A Module's micro-batching: decides per batch shape how many samples a part holds
    (``micro_batch``, or the largest part that fits ``budget_mb``) and runs the parts."""

    def __init__(self, module, micro_batch: int | None, budget_mb: float | None,
                 swap_dir: str | None = None, lookahead: int = 4):
        if micro_batch is not None and micro_batch < 1:
            raise MemoryBudgetError(f"micro_batch must be at least 1, not {micro_batch}")
        if budget_mb is not None and not budget_mb > 0:
            raise MemoryBudgetError(f"memory_budget_mb must be positive, not {budget_mb}")
        self.module = module
        self.fixed = micro_batch
        self.budget = None if budget_mb is None else int(budget_mb * 2 ** 20)
        self.state_bytes = 0  # optimizer state to come (the Optimizer sets it)
        self.swap_dir, self.lookahead = swap_dir, lookahead
        # the fused graph's ApplyUpdate nodes add each part's gradients into the batch's
        self.hook = UpdateHook()
        self._sizes: dict[tuple, int] = {}

    def size_for(self, feeds: Mapping[str, np.ndarray]) -> int:
        """Samples per part for a batch like this one; 0: the batch runs whole."""
        if self.fixed is None and self.budget is None:
            return 0
        names = self.module._roles.inputs
        key = tuple(np.shape(feeds[n]) for n in names)
        if key not in self._sizes:
            self._sizes[key] = self._decide(dict(feeds))
        return self._sizes[key]

    def need(self, feeds: Mapping[str, np.ndarray], size: int, swap: bool = False,
             segments: int | None = None) -> int:
        """Bytes a step planned for parts of ``size`` samples needs (what memory_plan counts,
        with the whole batch's inputs and the optimizer state to come); with ``swap``, when
        activations go to storage to fit the budget (as far as they can); with ``segments``,
        when only every such expensive activation is kept (segment checkpointing)."""
        m, r = self.module, self.module._roles
        batch = len(feeds[r.inputs[0]])
        part = [np.asarray(feeds[n])[:size] for n in m.input_names()]
        # a whole batch: the plain step (module(...) keeps gradients; the fused one keeps less);
        # parts: the fused step whose hook adds into the batch's gradients, kept outside
        fused = size < batch
        settings = None
        if swap:
            outside = self.need(feeds, size, segments=segments) - self._arena(part, fused,
                                                                                segments)
            settings = self.swap_settings(self.budget - outside)
        m._set_planning(settings, segments)
        try:
            plan = m.memory_plan(*part, fused=fused)
        finally:
            m._set_planning(None, None)
        total = plan.placement.arena + sum(plan.external_bytes.values())
        if fused:
            total += sum(np.asarray(m._state._tensors[p]).nbytes for p in r.trainable)
        total += sum(np.asarray(feeds[n]).nbytes for n in r.inputs) * (batch - size) // batch
        total += min(SCRATCH, 2 * max((b.nbytes for b in plan.buffers), default=0))
        return total + max(0, self.state_bytes - plan.external_bytes.get("optimizer state", 0))

    def _arena(self, part, fused: bool, segments: int | None) -> int:
        m = self.module
        m._set_planning(None, segments)
        try:
            return m.memory_plan(*part, fused=fused).placement.arena
        finally:
            m._set_planning(None, None)

    def swap_settings(self, arena_target: int):
        from ..plan.swap import SwapSettings
        return SwapSettings(max(int(arena_target * 0.98), 0), self.swap_dir, self.lookahead)

    def why_not(self, feeds: Mapping[str, np.ndarray]) -> str | None:
        """Why this step cannot run in micro-batches (None: it can)."""
        from ..graph.infer import infer
        from ..runtime.session import check_feeds, signature_of
        m, r = self.module, self.module._roles
        if r.rng_step:
            return "the training graph draws random masks (Dropout) over the whole batch"
        if r.buffer_updates:
            return "BatchNorm runs on batch statistics (the artifacts' batchnorm='train')"
        if r.loss_split is None:
            return ("the loss does not split over micro-batches (a custom loss, reduction "
                    "'none', or artifacts made by an edgetrain that did not record it)")
        graph = m._train_graph
        types = infer(graph, signature_of(check_feeds(graph, feeds), set())).types
        users = [n for n in r.inputs if n not in set(r.labels)]
        return why_not_separable(graph, list(r.model_outputs), users, types)

    # what a step may do to fit, cheapest first: swap and segments are bit-identical
    OPTIONS = ({}, {"swap": True}, {"segments": SEGMENTS}, {"segments": SEGMENTS, "swap": True})

    def _decide(self, feeds: dict[str, np.ndarray]) -> int:
        """Keep; swap; recompute segments; both; then the same in micro-batches: the first
        that fits the budget. Sets the Module's planning options accordingly."""
        m = self.module
        feeds.update(m._state_feeds())
        batch = len(feeds[m._roles.inputs[0]])
        mib = 1 / 2 ** 20
        full = least_whole = None
        if self.budget is not None:
            full = self.need(feeds, batch)
            if full <= self.budget:
                return 0
            for opt in self.OPTIONS[1:]:
                got = self.need(feeds, batch, **opt)
                least_whole = got if least_whole is None else min(least_whole, got)
                if got <= self.budget:
                    return self._choose(feeds, batch, opt, 0)
        elif self.fixed >= batch:
            return 0
        why = self.why_not(feeds)
        if why:
            if full is not None:
                raise MemoryBudgetError(
                    f"the step on a batch of {batch} needs {full * mib:.1f} MiB, at least "
                    f"{least_whole * mib:.1f} MiB when it swaps activations to storage or "
                    f"recomputes them; the budget is {self.budget * mib:.1f} MiB, and it cannot "
                    f"run in micro-batches: {why}")
            raise MemoryBudgetError(f"micro_batch={self.fixed}: cannot split this step: {why}")
        if self.budget is None:
            return min(self.fixed, batch)
        sizes = [k for k in _divisors_below(batch) if self.fixed is None or k <= self.fixed]
        for opt in (self.OPTIONS[0], self.OPTIONS[-1]):
            for k in sizes:
                if self.need(feeds, k, **opt) <= self.budget:
                    return self._choose(feeds, k, opt, k)
        least = min(self.need(feeds, 1, **opt) for opt in self.OPTIONS[1:])
        raise MemoryBudgetError(
            f"the step cannot fit a budget of {self.budget * mib:.1f} MiB: a batch of {batch} "
            f"needs {full * mib:.1f} MiB, micro-batches of one sample that swap or recompute "
            f"activations {least * mib:.1f} MiB (the least it can reach)")

    def _choose(self, feeds, size: int, opt: dict, result: int) -> int:
        """Set the Module's planning options for ``opt`` on parts of ``size``; ``result``."""
        m = self.module
        segments, settings = opt.get("segments"), None
        if opt.get("swap"):
            part = [np.asarray(feeds[n])[:size] for n in m.input_names()]
            fused = size < len(feeds[m._roles.inputs[0]])
            outside = self.need(feeds, size, segments=segments) - self._arena(part, fused,
                                                                                segments)
            settings = self.swap_settings(self.budget - outside)
        m._set_planning(settings, segments)
        return result

    def step(self, feeds: dict[str, np.ndarray], size: int, hook=None):
        """A training step over ``feeds`` in parts of ``size`` samples; gradients stored (or
        added, or handed to ``hook``) as the whole batch's."""
        m = self.module
        r, state = m._roles, m._state
        batch = len(feeds[r.inputs[0]])
        names = set(r.inputs)
        starts = list(range(0, batch, size))
        labels = feeds[r.labels[0]] if r.labels else None
        weights = part_weights(r.loss_split, labels, batch, starts, size)
        if not any(weights):  # no label counts: the batch's mean is 0/0, and so is this
            weights = [float("nan")] * len(weights)
        n = len(r.outputs)
        acc: dict[str, np.ndarray] = {}
        loss, extra, dtype = 0.0, [[] for _ in range(n - 1)], None

        def add(p: str, g: np.ndarray, w: float) -> None:  # as soon as the part's is final
            if p in acc:
                acc[p] += g * g.dtype.type(w)
            else:
                acc[p] = g * g.dtype.type(w)

        for lo, w in zip(starts, weights):
            if w == 0:
                continue  # its loss and gradients count for nothing (0/0 if it ran)
            part = {x: (v[lo:lo + size] if x in names else v) for x, v in feeds.items()}
            self.hook.fn = lambda p, g, w=w: add(p, g, w)
            try:
                outs = m._session_for(part, self.hook).run(r.outputs, part)
            finally:
                self.hook.fn = None
            dtype = outs[0].dtype
            loss += w * float(outs[0])
            for i, o in enumerate(outs[1:n]):
                extra[i].append(np.array(o))
        # commit only after every part succeeded
        for p in r.trainable:
            if m._reset_pending or p not in state._grads:
                state._grads[p] = acc[p]
            else:
                state._grads[p] += acc[p]
        if hook:
            for p in r.trainable:
                hook(p, state._grads[p])
            state._grads.clear()
        m._reset_pending = bool(hook)
        state.train_step += 1
        loss = np.asarray(loss, dtype=dtype)
        if n == 1:
            return loss
        return [loss] + [np.concatenate(e) for e in extra]
