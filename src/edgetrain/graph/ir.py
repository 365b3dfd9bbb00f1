"""The intermediate representation: a graph of nodes over named values.

Kept deliberately plain: the autodiff and the planner read and extend it, and it converts back to
ONNX (training, eval and inference models are ONNX again).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import onnx
from onnx import helper, numpy_helper

Dim = Union[int, str, None]  # concrete size, symbolic name, or unknown


@dataclass
class Value:
    """A graph input or output as declared by the model (shape may be symbolic)."""

    name: str
    dtype: np.dtype | None
    shape: tuple[Dim, ...] | None  # None: rank unknown

    def describe(self) -> str:
        if self.shape is None:
            dims = "?"
        else:
            dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype if self.dtype is not None else '?'}[{dims}]"


@dataclass
class Node:
    op_type: str
    inputs: list[str]  # "" marks an absent optional input
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = ""


@dataclass
class Graph:
    nodes: list[Node]
    inputs: list[Value]  # run-time inputs (initializers excluded)
    outputs: list[Value]
    initializers: dict[str, np.ndarray]
    opsets: dict[str, int]  # domain ("" for ai.onnx) -> version
    name: str = "graph"
    # initializers that are also declared graph inputs may be overridden by a feed
    overridable: set[str] = field(default_factory=set)
    doc: dict[str, str] = field(default_factory=dict)  # model metadata_props

    def opset(self, domain: str) -> int | None:
        return self.opsets.get("" if domain == "ai.onnx" else domain)

    @property
    def parameters(self) -> dict[str, np.ndarray]:
        """Float initializers: what training can update."""
        return {k: v for k, v in self.initializers.items() if v.dtype.kind == "f"}

    def to_onnx(self, ir_version: int | None = None) -> onnx.ModelProto:
        """Back to an ONNX model (inference, training and eval models are written this way)."""

        def vinfo(v: Value) -> onnx.ValueInfoProto:
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(v.dtype)) if v.dtype is not None else 0
            return helper.make_tensor_value_info(v.name, elem, v.shape)

        nodes = [helper.make_node(n.op_type, n.inputs, n.outputs, name=n.name or None,
                                  domain=n.domain or None, **_attrs_to_onnx(n.attrs))
                 for n in self.nodes]
        inits = [numpy_helper.from_array(a, name) for name, a in self.initializers.items()]
        g = helper.make_graph(nodes, self.name, [vinfo(v) for v in self.inputs],
                              [vinfo(v) for v in self.outputs], inits)
        model = helper.make_model(
            g, opset_imports=[helper.make_opsetid(d, v) for d, v in self.opsets.items()],
            producer_name="edgetrain")
        if ir_version is None:  # the oldest IR that carries these opsets: readable by more tools
            ir_version = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
        model.ir_version = ir_version
        for k, v in self.doc.items():
            helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, k: v})
        return model


def _attrs_to_onnx(attrs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, np.ndarray):
            out[k] = numpy_helper.from_array(v)
        else:
            out[k] = v
    return out


def attrs_from_onnx(node: onnx.NodeProto) -> dict[str, Any]:
    """Attributes as plain Python values: str for strings, np.ndarray for tensors."""
    out: dict[str, Any] = {}
    for a in node.attribute:
        if a.ref_attr_name:
            raise ValueError(f"attribute {a.name!r} of node {node.name!r} refers to a function "
                             "attribute; only top-level graphs are supported")
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode("utf-8") for s in v]
        elif isinstance(v, list) and v and isinstance(v[0], onnx.TensorProto):
            v = [numpy_helper.to_array(t) for t in v]
        out[a.name] = v
    return out
