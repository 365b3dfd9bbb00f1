"""Errors a user can meet. Each one names the thing at fault."""
from __future__ import annotations


class EdgetrainError(Exception):
    """Base class of every error edgetrain raises on purpose."""


class ModelLoadError(EdgetrainError):
    """The model file or proto cannot be read: malformed, truncated, unsafe external data."""


class UnsupportedOpError(EdgetrainError):
    """A node uses an op (or an op version) that edgetrain has no kernel for."""

    def __init__(self, op_type: str, domain: str, opset: int | None, node_name: str,
                 supported: list[str], reason: str = ""):
        self.op_type, self.domain, self.opset, self.node_name = op_type, domain, opset, node_name
        self.supported = supported
        dom = domain or "ai.onnx"
        what = reason or "no kernel for this op"
        msg = (f"unsupported op {op_type!r} (domain {dom!r}, opset {opset}) in node {node_name!r}: "
               f"{what}. Supported ops in domain {dom!r}: {', '.join(supported) or 'none'}")
        super().__init__(msg)


class UnsupportedDtypeError(EdgetrainError):
    """A tensor has an element type edgetrain has no kernels for (bfloat16, float8, int4...)."""


class InputError(EdgetrainError):
    """A feed does not match the model's inputs: unknown name, missing, wrong dtype or shape."""


class ShapeError(EdgetrainError):
    """Shapes do not fit together at some node (found while planning, before any kernel runs)."""


class OpError(EdgetrainError):
    """A node's attributes or inputs are invalid for its op."""


class ConstantRequiredError(OpError):
    """An input that must be known while planning (axes, shape, pads...) depends on run-time data."""


class KernelError(EdgetrainError):
    """A kernel failed while running a node; names the node, op and input shapes."""
