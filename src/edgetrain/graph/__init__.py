"""The intermediate representation: loading, the IR, shape inference with constant folding."""
from .infer import Inferred, Step, infer
from .ir import Graph, Node, Value
from .load import load_graph, read_model

__all__ = ["Graph", "Node", "Value", "Inferred", "Step", "infer", "load_graph", "read_model"]
