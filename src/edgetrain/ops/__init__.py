"""The op registry and the op families. Importing this package registers every op."""
from importlib import import_module

from .registry import OpContext, OpDef, TensorType, lookup, register, supported_ops

FAMILIES = (
    "elementwise", "activation", "normalization", "linalg", "reduce", "tensor", "index",
    "shape_ops", "conv", "pool", "rnn", "resize",
)

for _family in FAMILIES:
    try:
        import_module(f"{__name__}.{_family}")
    except ModuleNotFoundError as _e:  # a family still being written
        if _e.name != f"{__name__}.{_family}":
            raise

__all__ = ["OpContext", "OpDef", "TensorType", "lookup", "register", "supported_ops", "FAMILIES"]
