"""The planned executor: one arena per input signature, every value a fixed view into it.

The plan (:mod:`edgetrain.plan`) gives each value the step range it lives over and an offset in
the arena. Binding turns that into NumPy views once; each step's kernel then finds its planned
output views in ``ctx.out`` and writes into them (:func:`edgetrain.ops.registry.planned`). A
kernel that still returns an array of its own has it copied into the planned view. Values that
need no bytes of their own — views of feeds and parameters, strings — are kept as the kernel
returned them. Graph outputs are copied out of the arena at the end of a run, since the next run
writes over it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from ..errors import EdgetrainError, KernelError
from ..graph.infer import Inferred, Step, as_outputs, describe_types
from ..graph.ir import Graph
from ..ops.registry import TensorType
from ..plan import Plan, plan_inferred


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    # __array_interface__ is cheaper than .ctypes (which builds a ctypes object each call)
    return (a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype
            and a.__array_interface__["data"][0] == b.__array_interface__["data"][0])


@dataclass
class Executor:
    """A compiled step: the steps, their bound output views and the arena behind them."""

    inferred: Inferred
    plan: Plan
    arena: np.ndarray
    views: dict[str, np.ndarray]          # value -> its view of the arena
    copies: int = 0         # outputs copied into the arena (kernels that do not write into it)
    copied_bytes: int = 0

    @classmethod
    def build(cls, graph: Graph, inferred: Inferred, signature: Mapping[str, TensorType],
              *, inplace: bool = True, recompute: bool = True, swap=None) -> "Executor":
        plan = plan_inferred(graph, inferred, signature, inplace=inplace, recompute=recompute,
                             swap=swap)
        if plan.swap_file is not None:
            plan.swap_file.open()  # the file and its blocks, before anything runs
        inferred = plan.inferred
        arena = np.empty(max(plan.placement.arena, 1), np.uint8)
        views: dict[str, np.ndarray] = {}
        for value, buf in plan.owner.items():
            t = inferred.types[value]
            off = plan.placement.offsets[buf]
            n = t.nbytes
            views[value] = arena[off:off + n].view(t.dtype).reshape(t.shape)
        for s in inferred.steps:
            s.ctx.out = tuple(views.get(y) if y else None for y in s.node.outputs)
        return cls(inferred, plan, arena, views)

    def run(self, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> list[np.ndarray]:
        values: dict[str, np.ndarray] = dict(self.inferred.constants)
        values.update(feeds)
        with np.errstate(all="ignore"):  # ONNX arithmetic is IEEE: inf and nan are results
            for step in self.inferred.steps:
                self._run_step(step, values)
        return [np.array(values[n]) if n in self.views else values[n] for n in names]

    def _run_step(self, step: Step, values: dict[str, np.ndarray]) -> None:
        node = step.node
        args = [values[x] if x else None for x in node.inputs]
        try:
            outs = as_outputs(step.opdef.kernel(step.ctx, *args))
        except EdgetrainError:
            raise
        except Exception as e:
            shapes = describe_types(None if a is None else TensorType(np.asarray(a).dtype,
                                                                      np.shape(a)) for a in args)
            raise KernelError(f"{node.op_type} node {node.name!r} failed on inputs "
                              f"{shapes}: {type(e).__name__}: {e}") from e
        for name, arr, view in zip(node.outputs, outs, step.ctx.out):
            if not name:
                continue
            if view is None:
                values[name] = np.asarray(arr)
                continue
            arr = np.asarray(arr)
            if not _same_memory(arr, view):
                if arr.shape != view.shape or arr.dtype != view.dtype:
                    raise KernelError(
                        f"{node.op_type} node {node.name!r}: output {name!r} is "
                        f"{arr.dtype}{list(arr.shape)} but its shape rule said "
                        f"{view.dtype}{list(view.shape)} (an edgetrain bug; please report it)")
                np.copyto(view, arr)
                self.copies += 1
                self.copied_bytes += view.nbytes
            values[name] = view
