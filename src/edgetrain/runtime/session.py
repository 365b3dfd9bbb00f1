"""Run a model: check the feeds, infer and fold for their signature (cached), run the steps."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import ConstantRequiredError, EdgetrainError, InputError, KernelError
from ..graph.infer import Inferred, Step, as_outputs, describe_types, infer
from ..graph.ir import Graph, Value
from ..graph.load import ModelLike, load_graph
from ..ops.registry import TensorType
from ..plan import Plan, make_plan
from .executor import Executor


@dataclass
class CompiledRun:
    """The steps for one input signature and, for each, which values die after it."""

    inferred: Inferred
    release: list[tuple[str, ...]]


def check_feeds(graph: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feeds as arrays, checked against the declared inputs (name, dtype, rank, fixed dims)."""
    declared = {v.name: v for v in graph.inputs}
    out: dict[str, np.ndarray] = {}
    dims: dict[str, tuple[int, str]] = {}  # named dimension -> (size, the input that set it)
    for name, given in feeds.items():
        if name in graph.overridable:
            out[name] = np.asarray(given)
            continue
        v = declared.get(name)
        if v is None:
            expected = ", ".join(f"{v.name} {v.describe()}" for v in graph.inputs)
            raise InputError(f"unknown input {name!r}; the model's inputs are: {expected}")
        arr = np.asarray(given)
        if v.dtype is not None and arr.dtype != v.dtype:
            raise InputError(f"input {name!r} has dtype {arr.dtype}, expected {v.dtype} "
                             f"(shape {v.describe()})")
        if v.shape is not None:
            bad = len(v.shape) != arr.ndim or any(
                isinstance(d, int) and d > 0 and d != s for d, s in zip(v.shape, arr.shape))
            if bad:
                raise InputError(f"input {name!r} has shape {list(arr.shape)}, expected "
                                 f"{v.describe()} (? and names are free dimensions)")
            for d, s in zip(v.shape, arr.shape):
                if isinstance(d, str) and d:
                    size, by = dims.setdefault(d, (s, name))
                    if size != s:
                        raise InputError(f"input {name!r} has shape {list(arr.shape)}, expected "
                                         f"{v.describe()}: dimension {d!r} is {s} here but "
                                         f"{size} in input {by!r}")
        out[name] = arr
    missing = [v.name for v in graph.inputs if v.name not in out]
    if missing:
        raise InputError(f"missing input(s) {', '.join(map(repr, missing))}; the model's inputs "
                         f"are: {', '.join(f'{v.name} {v.describe()}' for v in graph.inputs)}")
    return out


def _signature(feeds: Mapping[str, np.ndarray], by_value: set[str]) -> tuple:
    return tuple(sorted((k, v.dtype.str, v.shape, v.tobytes() if k in by_value else b"")
                        for k, v in feeds.items()))


def small_feeds(feeds: Mapping[str, np.ndarray]) -> set[str]:
    """Feeds that may carry axes, shapes, pads or scales: numeric vectors of at most 64 elements."""
    return {k for k, v in feeds.items() if v.dtype.kind in "iuf" and v.ndim <= 1 and v.size <= 64}


def signature_of(feeds: Mapping[str, np.ndarray], by_value: set[str]) -> dict[str, TensorType]:
    return {k: TensorType(v.dtype, tuple(v.shape), v if k in by_value else None)
            for k, v in feeds.items()}


def compile_run(graph: Graph, feeds: Mapping[str, np.ndarray],
                by_value: set[str] = frozenset()) -> CompiledRun:
    inferred = infer(graph, signature_of(feeds, by_value))
    last_use: dict[str, int] = {}
    for i, s in enumerate(inferred.steps):
        for x in s.node.inputs:
            if x:
                last_use[x] = i
    keep = {v.name for v in graph.outputs}
    release: list[list[str]] = [[] for _ in inferred.steps]
    for name, i in last_use.items():
        if name not in keep and name not in inferred.constants:
            release[i].append(name)
    return CompiledRun(inferred, [tuple(r) for r in release])


def run_step(step: Step, values: dict[str, np.ndarray], check: bool,
             types: dict[str, TensorType]) -> None:
    args = [values[x] if x else None for x in step.node.inputs]
    try:
        outs = as_outputs(step.opdef.kernel(step.ctx, *args))
    except EdgetrainError:
        raise
    except Exception as e:
        shapes = describe_types(None if a is None else TensorType(np.asarray(a).dtype, np.shape(a))
                                for a in args)
        raise KernelError(f"{step.node.op_type} node {step.node.name!r} failed on inputs "
                          f"{shapes}: {type(e).__name__}: {e}") from e
    for name, arr in zip(step.node.outputs, outs):
        if not name:
            continue
        # contiguous, as in the planned executor's arena: NumPy reductions sum in an order that
        # depends on the layout, and the two modes must give the same bits
        arr = np.ascontiguousarray(arr) if np.ndim(arr) else np.asarray(arr)
        if check:
            want = types[name]
            if arr.dtype != want.dtype or tuple(arr.shape) != want.shape:
                raise KernelError(
                    f"{step.node.op_type} node {step.node.name!r}: output {name!r} is "
                    f"{arr.dtype}{list(arr.shape)} but its shape rule said "
                    f"{want.dtype}{list(want.shape)} (an edgetrain bug; please report it)")
        values[name] = arr


class InferenceSession:
    """Run an ONNX model with NumPy kernels. Mirrors ``onnxruntime.InferenceSession.run``.

    ``planned=True`` (the default) runs each input signature in one arena laid out ahead of time
    (:mod:`edgetrain.plan`), with ``inplace`` ops writing over inputs that die there and, in
    training graphs, cheap activations ``recompute`` d in backward rather than kept;
    ``planned=False`` lets every kernel allocate its outputs and frees values when they die.
    Both give bit-identical results. ``check=True`` (unplanned) verifies every kernel's output
    against the shape rule (the planned executor always does).
    """

    def __init__(self, model: ModelLike, *, base_dir: str | os.PathLike | None = None,
                 check: bool = False, dynamic: Sequence[str] = (), planned: bool = True,
                 inplace: bool = True, recompute: bool = True):
        self.graph = model if isinstance(model, Graph) else load_graph(model, base_dir)
        self.check = check
        self.planned, self.inplace, self.recompute = planned and not check, inplace, recompute
        self._plans: dict[tuple, CompiledRun | Executor] = {}
        # inputs whose values the plan depends on (a graph that takes axes or a shape as an
        # input); found on the first plan that needs them, then part of the plan's cache key
        self._by_value: set[str] = set()
        self._dynamic = set(dynamic)  # inputs never planned by value (labels, parameters...)
        self.swap = None  # plan.swap.SwapSettings: activations to storage to fit a target
        # feeds' (name, dtype, shape) in the order given -> their plan: a training step feeds
        # the same few hundred arrays each time, and checking them again costs ~1 ms a run
        self._seen: dict[tuple, CompiledRun | Executor] = {}
        self._output_names = frozenset(v.name for v in self.graph.outputs)

    def get_inputs(self) -> list[Value]:
        return list(self.graph.inputs)

    def get_outputs(self) -> list[Value]:
        return list(self.graph.outputs)

    def _compile(self, feeds: Mapping[str, np.ndarray]) -> CompiledRun | Executor:
        if not self.planned:
            return compile_run(self.graph, feeds, self._by_value)
        sig = signature_of(feeds, self._by_value)
        return Executor.build(self.graph, infer(self.graph, sig), sig, inplace=self.inplace,
                              recompute=self.recompute, swap=self.swap)

    def plan_for(self, feeds: Mapping[str, np.ndarray]) -> CompiledRun | Executor:
        key = _signature(feeds, self._by_value)
        plan = self._plans.get(key)
        if plan is None:
            try:
                plan = self._compile(feeds)
            except ConstantRequiredError:
                candidates = small_feeds(feeds) - self._by_value - self._dynamic
                if not candidates:
                    raise
                self._by_value |= candidates
                return self.plan_for(feeds)
            self._plans[key] = plan
        return plan

    def memory_plan(self, feeds: Mapping[str, np.ndarray]) -> Plan:
        """The memory plan of a run on feeds like these: the cached executor's when there is
        one, else made without allocating its arena (nor caching anything)."""
        plan = self._plans.get(_signature(feeds, self._by_value))
        if isinstance(plan, Executor):
            return plan.plan
        try:
            return make_plan(self.graph, signature_of(feeds, self._by_value),
                             inplace=self.inplace, recompute=self.recompute, swap=self.swap)
        except ConstantRequiredError:  # planning needs an input's value: plan_for finds which
            return self.plan_for(feeds).plan

    def _seen_key(self, feeds: Mapping[str, np.ndarray]) -> tuple | None:
        """What checking and planning these feeds depends on, when that is their names, dtypes
        and shapes alone (arrays, and no plan that depends on an input's value)."""
        if self._by_value:
            return None
        key = []
        for k, v in feeds.items():
            if type(v) is not np.ndarray:
                return None
            key.append((k, v.dtype, v.shape))
        return tuple(key)

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]
            ) -> list[np.ndarray]:
        names = list(output_names) if output_names else [v.name for v in self.graph.outputs]
        for n in names:
            if n not in self._output_names:
                raise InputError(f"unknown output {n!r}; the model's outputs are: "
                                 f"{', '.join(sorted(self._output_names))}")
        key = self._seen_key(feeds)
        plan = self._seen.get(key) if key is not None else None
        if plan is None:  # feeds not seen before: checked, then planned (or found planned)
            feeds = check_feeds(self.graph, feeds)
            plan = self.plan_for(feeds)
            if key is not None and not self._by_value:
                self._seen[key] = plan
        if isinstance(plan, Executor):
            return plan.run(feeds, names)
        values: dict[str, np.ndarray] = dict(plan.inferred.constants)
        values.update(feeds)
        types = plan.inferred.types
        with np.errstate(all="ignore"):  # ONNX arithmetic is IEEE: inf and nan are results
            for step, dead in zip(plan.inferred.steps, plan.release):
                run_step(step, values, self.check, types)
                for name in dead:
                    values.pop(name, None)
        return [values[n] for n in names]
