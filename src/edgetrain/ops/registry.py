"""The op registry: for each op, the schema versions it implements, its shape rule and its kernel.

An op family file registers its ops with :func:`register`::

    @register("Relu", versions=(6, 13, 14), infer=same_as(0))
    def relu(ctx, x):
        return np.maximum(x, 0).astype(x.dtype, copy=False)

* ``versions`` lists the ONNX schema ``since_version`` s the kernel implements. A model's opset is
  resolved to the schema in force through the table in ``schema_versions.py`` (generated from
  ``onnx.defs``, whose first call costs ~6 MB of resident memory; ``onnx.defs`` itself only for
  opsets newer than the table); if that schema's version is not listed the
  node is refused with :class:`UnsupportedOpError`. Behaviour that changed between versions is
  handled in the kernel by looking at ``ctx.version``.
* ``infer(ctx, *types) -> list[TensorType]`` is the shape rule: from the input types (dtype, concrete
  shape, and the value when it is a constant) it gives the output types. It may give the output's
  ``value`` when it is known without running the kernel (``Shape``, ``Size``): that is what folds
  the shape sub-graphs of torch exports. Missing optional inputs are ``None``.
* ``kernel(ctx, *arrays)`` returns one array or a tuple of arrays, one per node output.
  Missing optional inputs are ``None``.
* ``foldable=False`` keeps a node out of constant folding (random ops).
* ``any_dtype=True`` lets an op take and give element types that have no NumPy arithmetic
  (bfloat16, float8, int4: storage types from ml_dtypes); every other op refuses them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import onnx.defs

from ..errors import OpError, UnsupportedOpError
from .schema_versions import MAX_OPSET, SINCE


@dataclass(frozen=True)
class TensorType:
    """What is known of a tensor while planning: dtype, concrete shape, and its value if constant."""

    dtype: np.dtype
    shape: tuple[int, ...]
    value: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    @staticmethod
    def of(array: np.ndarray) -> "TensorType":
        array = np.asarray(array)
        return TensorType(array.dtype, tuple(int(d) for d in array.shape), array)


def planned(ctx: "OpContext", k: int = 0) -> np.ndarray | None:
    """Where output ``k`` must go: its view of the arena, or None (then return a new array).

    Kernels pass it as ``out=`` to NumPy. For ops that the planner runs in place
    (``edgetrain.plan.lifetimes.INPLACE_OPS``) the view may be input 0's own bytes, so such a
    kernel must read each element of input 0 before it writes that element's output.
    """
    out = ctx.out
    return None if out is None else out[k]


class OpContext:
    """Everything a shape rule or kernel needs to know about its node, fixed at plan time."""

    __slots__ = ("op_type", "domain", "name", "opset", "version", "attrs", "n_inputs",
                 "n_outputs", "extra", "out")

    def __init__(self, op_type: str, domain: str, name: str, opset: int, version: int,
                 attrs: dict[str, Any], n_inputs: int, n_outputs: int):
        self.op_type, self.domain, self.name = op_type, domain, name
        self.opset, self.version = opset, version
        self.attrs = attrs
        self.n_inputs, self.n_outputs = n_inputs, n_outputs
        self.extra: dict[str, Any] = {}  # per-node scratch a rule may leave for its kernel
        # the planned output views (one per node output, None where unplanned); set by the
        # executor when it binds a plan, None when folding constants or running unplanned
        self.out: tuple | None = None

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def error(self, message: str) -> OpError:
        return OpError(f"{self.op_type} node {self.name!r}: {message}")

    def __repr__(self) -> str:
        return f"<{self.op_type}-{self.version} {self.name!r}>"


InferFn = Callable[..., Sequence[TensorType]]
KernelFn = Callable[..., Any]


@dataclass(frozen=True)
class OpDef:
    op_type: str
    domain: str
    versions: tuple[int, ...]
    infer: InferFn
    kernel: KernelFn
    foldable: bool = True
    any_dtype: bool = False
    mutates: int | None = None  # the kernel writes this input in place (an optimizer update)


_REGISTRY: dict[tuple[str, str], OpDef] = {}

# Our own domain, for backward and optimizer ops (training graphs are ONNX with these nodes).
ET_DOMAIN = "ai.edgetrain"

# op_type (default domain or ours) -> gradient rule; see edgetrain.autodiff for the contract
_GRADIENTS: dict[tuple[str, str], Callable] = {}


def gradient(op_type: str, domain: str = "") -> Callable[[Callable], Callable]:
    """Register the gradient rule of ``op_type`` (decorator), beside its kernel.

    A rule ``rule(g, node, dys) -> list`` gets a :class:`edgetrain.autodiff.GradBuilder`, the
    forward node and one gradient value name per node output (``None`` where no gradient flows),
    and returns one gradient value name per node input (``None`` for no gradient). It emits the
    backward computation as nodes with ``g.op(...)``; it must only emit for inputs where
    ``g.needs(node, i)`` is true.
    """

    def deco(rule: Callable) -> Callable:
        key = (domain, op_type)
        if key in _GRADIENTS:
            raise RuntimeError(f"gradient of {op_type!r} registered twice")
        _GRADIENTS[key] = rule
        return rule

    return deco


def gradient_rule(op_type: str, domain: str = "") -> Callable | None:
    return _GRADIENTS.get((_norm_domain(domain), op_type))


def differentiable_ops() -> list[str]:
    return sorted(op for (dom, op) in _GRADIENTS if dom == "")


def register(op_type: str, *, versions: Sequence[int], infer: InferFn, domain: str = "",
             foldable: bool = True, any_dtype: bool = False, mutates: int | None = None
             ) -> Callable[[KernelFn], KernelFn]:
    """Register ``kernel`` for ``op_type`` (decorator). One registration per op and domain.
    ``mutates=k``: the kernel writes input k in place; the planner runs it after every other
    reader of that input (and of views of it), and it is never folded."""

    def deco(kernel: KernelFn) -> KernelFn:
        key = (domain, op_type)
        if key in _REGISTRY:
            raise RuntimeError(f"op {op_type!r} in domain {domain!r} registered twice")
        _REGISTRY[key] = OpDef(op_type, domain, tuple(sorted(versions)), infer, kernel,
                               foldable and mutates is None, any_dtype, mutates)
        return kernel

    return deco


def supported_ops(domain: str = "") -> list[str]:
    return sorted(op for (dom, op) in _REGISTRY if dom == domain)


def _norm_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


def schema_version(op_type: str, opset: int) -> int | None:
    """The ``since_version`` of the default-domain schema of ``op_type`` in force at ``opset``."""
    known = SINCE.get(op_type)
    if known is not None and opset <= MAX_OPSET:
        return max((v for v in known if v <= opset), default=None)
    try:
        return onnx.defs.get_schema(op_type, opset, "").since_version
    except onnx.defs.SchemaError:
        return None


def lookup(op_type: str, domain: str, opset: int | None, node_name: str) -> tuple[OpDef, int]:
    """The op definition for a node, and the schema version in force at ``opset``."""
    domain = _norm_domain(domain)
    opdef = _REGISTRY.get((domain, op_type))
    if opdef is None:
        raise UnsupportedOpError(op_type, domain, opset, node_name, supported_ops(domain))
    if opset is None:
        raise UnsupportedOpError(op_type, domain, opset, node_name, supported_ops(domain),
                                 f"the model imports no opset for domain {domain or 'ai.onnx'!r}")
    if domain != "":  # our own domains: versions are ours
        version = max((v for v in opdef.versions if v <= opset), default=None)
    else:
        version = schema_version(op_type, opset)
    if version is None or version not in opdef.versions:
        raise UnsupportedOpError(
            op_type, domain, opset, node_name, supported_ops(domain),
            f"opset {opset} selects {op_type}-{version}, edgetrain implements versions "
            f"{', '.join(map(str, opdef.versions))}")
    return opdef, version


def make_context(op_type: str, domain: str, name: str, opset: int, attrs: dict[str, Any],
                 n_inputs: int, n_outputs: int) -> tuple[OpDef, OpContext]:
    opdef, version = lookup(op_type, domain, opset, name)
    return opdef, OpContext(op_type, _norm_domain(domain), name, opset, version, attrs,
                            n_inputs, n_outputs)
