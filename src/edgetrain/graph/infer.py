"""Shape and type inference for a concrete input signature, with constant folding.

Every value gets a :class:`TensorType` with a concrete shape. A node whose inputs are all known
constants is run once here (folded), and shape rules may give values outright (``Shape``,
``Size``), so the Shape→Gather→Unsqueeze→Concat→Reshape chains of torch exports vanish before
anything is planned. What is left is the list of steps that depend on run-time data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..errors import EdgetrainError, KernelError, ShapeError, UnsupportedDtypeError
from ..ops import registry
from ..ops.registry import OpContext, OpDef, TensorType
from .ir import Graph, Node

SUPPORTED_DTYPES = frozenset(np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.object_))


@dataclass
class Step:
    """One node to run at run time, resolved to its op definition and context."""

    node: Node
    opdef: OpDef
    ctx: OpContext


@dataclass
class Inferred:
    types: dict[str, TensorType]      # every value of the graph
    steps: list[Step]                 # nodes that depend on run-time data, in order
    constants: dict[str, np.ndarray]  # known values that the steps or outputs read


def describe_types(types: Iterable[TensorType | None]) -> str:
    return ", ".join("absent" if t is None else f"{t.dtype}{list(t.shape)}" for t in types)


def as_outputs(result) -> tuple:
    """Normalize what a kernel returned into a tuple of arrays."""
    if isinstance(result, (tuple, list)):
        return tuple(result)
    return (result,)


def check_dtype(t: TensorType, what: str) -> None:
    """Refuse element types NumPy has no native arithmetic for (bfloat16, float8, int4...)."""
    if np.dtype(t.dtype) not in SUPPORTED_DTYPES:
        raise UnsupportedDtypeError(f"{what} has element type {np.dtype(t.dtype).name}, which "
                                    "edgetrain does not support (supported: bool, int8-64, "
                                    "uint8-64, float16/32/64, string)")


def node_context(graph: Graph, node: Node) -> tuple[OpDef, OpContext]:
    return registry.make_context(node.op_type, node.domain, node.name,
                                 graph.opset(node.domain), node.attrs,
                                 len(node.inputs), len(node.outputs))


def _fold(step_opdef: OpDef, ctx: OpContext, ins: list[TensorType | None]) -> list[TensorType]:
    values = [None if t is None else t.value for t in ins]
    try:
        with np.errstate(all="ignore"):
            outs = as_outputs(step_opdef.kernel(ctx, *values))
    except EdgetrainError:
        raise
    except Exception as e:
        raise KernelError(f"{ctx.op_type} node {ctx.name!r} failed while folding constants "
                          f"(inputs {describe_types(ins)}): {type(e).__name__}: {e}") from e
    return [TensorType.of(np.asarray(o)) for o in outs]


def infer(graph: Graph, signature: dict[str, TensorType], *,
          variables: Iterable[str] = ()) -> Inferred:
    """Types of every value for the given input types.

    ``signature`` maps each run-time input (and any overridden initializer) to its type; a type
    that carries a value makes that input known while planning (the plan is then only valid for
    that value).
    ``variables`` names initializers that must not be folded (trainable parameters).
    """
    variables = set(variables) | set(signature)
    types: dict[str, TensorType] = {}
    for name, arr in graph.initializers.items():
        if name in variables:
            types[name] = TensorType(arr.dtype, tuple(arr.shape))
        else:
            types[name] = TensorType.of(arr)
    for name, t in signature.items():
        types[name] = TensorType(np.dtype(t.dtype), tuple(t.shape), t.value)

    steps: list[Step] = []
    for node in graph.nodes:
        opdef, ctx = node_context(graph, node)
        ins = [types[x] if x else None for x in node.inputs]
        if not opdef.any_dtype:
            for x, t in zip(node.inputs, ins):
                if t is not None:
                    check_dtype(t, f"input {x!r} of {node.op_type} node {node.name!r}")
        present = [t for t in ins if t is not None]
        if opdef.foldable and all(t.value is not None for t in present):
            outs = _fold(opdef, ctx, ins)
        else:
            try:
                outs = list(opdef.infer(ctx, *ins))
            except EdgetrainError:
                raise
            except Exception as e:
                raise ShapeError(f"{node.op_type} node {node.name!r}: cannot infer output shapes "
                                 f"from inputs {describe_types(ins)}: {type(e).__name__}: {e}"
                                 ) from e
            # a step unless every output is known (a node without outputs acts by its effect)
            if not node.outputs or not all(t.value is not None for t in outs[:len(node.outputs)]):
                steps.append(Step(node, opdef, ctx))
        if len(outs) < sum(1 for o in node.outputs if o):
            raise ShapeError(f"{node.op_type} node {node.name!r} has {len(node.outputs)} outputs "
                             f"but its op gives {len(outs)}")
        for name, t in zip(node.outputs, outs):
            if name:
                if not opdef.any_dtype:
                    check_dtype(t, f"output {name!r} of {node.op_type} node {node.name!r}")
                types[name] = t

    needed = {x for s in steps for x in s.node.inputs if x} | {v.name for v in graph.outputs}
    constants = {n: types[n].value for n in needed
                 if types[n].value is not None and n not in variables}
    return Inferred(types, steps, constants)
