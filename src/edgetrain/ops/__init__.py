"""The op registry and the op families. Importing this package registers every op."""
from importlib import import_module

from .registry import (ET_DOMAIN, OpContext, OpDef, TensorType, differentiable_ops, gradient,
                       gradient_rule, lookup, register, supported_ops)

FAMILIES = (
    "elementwise", "activation", "normalization", "linalg", "reduce", "tensor", "tensor_grad",
    "index", "shape_ops", "conv", "pool", "conv_grad", "pool_grad", "rnn", "rnn_grad", "resize",
    "grad_ops",
)

for _family in FAMILIES:
    import_module(f"{__name__}.{_family}")

__all__ = ["ET_DOMAIN", "OpContext", "OpDef", "TensorType", "differentiable_ops", "gradient",
           "gradient_rule", "lookup", "register", "supported_ops", "FAMILIES"]
