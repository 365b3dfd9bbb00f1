"""The fused training step: each parameter updated as soon as its gradient is final.

:func:`fused_graph` turns a training graph into one whose gradient outputs are consumed inside
the step by ``ApplyUpdate`` nodes (our domain): one per trainable parameter, reading the
parameter and its gradient, calling the optimizer's update for that parameter, writing the
parameter in place. The planner (:mod:`edgetrain.plan.mutation`) runs each one right after the
last step that reads the old parameter, so a gradient's buffer lives from its last
accumulation to its update instead of to the end of the step, and no gradient is copied out.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..graph.ir import Graph, Node
from ..ops.registry import ET_DOMAIN, OpContext, TensorType, register


class UpdateHook:
    """The callable the ``ApplyUpdate`` nodes of a fused graph share: ``fn(param, grad)``, set
    for each step (its learning rate and step count) by :meth:`Optimizer.train_step`."""

    def __init__(self):
        self.fn: Callable[[str, np.ndarray], None] | None = None

    def __call__(self, name: str, grad: np.ndarray) -> None:
        if self.fn is None:
            raise RuntimeError("ApplyUpdate ran outside Optimizer.train_step")
        self.fn(name, grad)


def _apply_infer(ctx: OpContext, param: TensorType, grad: TensorType) -> list[TensorType]:
    if tuple(param.shape) != tuple(grad.shape):
        raise ctx.error(f"parameter is {list(param.shape)} but its gradient {list(grad.shape)}")
    return []


@register("ApplyUpdate", versions=(1,), infer=_apply_infer, domain=ET_DOMAIN, mutates=0)
def apply_update(ctx: OpContext, param: np.ndarray, grad: np.ndarray):
    ctx.attrs["hook"](ctx.attrs["param"], grad)  # the hook updates the state's parameter
    return ()


def fused_graph(graph: Graph, gradients: dict[str, str], hook: UpdateHook) -> Graph:
    """``graph`` with the gradient outputs (``gradients``: parameter -> output) replaced by
    ``ApplyUpdate`` nodes that hand each gradient to ``hook``."""
    grads = set(gradients.values())
    nodes = list(graph.nodes) + [
        Node("ApplyUpdate", [p, g], [], {"hook": hook, "param": p}, f"ApplyUpdate/{p}", ET_DOMAIN)
        for p, g in gradients.items()]
    opsets = {**graph.opsets, ET_DOMAIN: max(graph.opsets.get(ET_DOMAIN, 1), 1)}
    return Graph(nodes, list(graph.inputs), [v for v in graph.outputs if v.name not in grads],
                 dict(graph.initializers), opsets, graph.name + "_fused",
                 set(graph.overridable), dict(graph.doc))
