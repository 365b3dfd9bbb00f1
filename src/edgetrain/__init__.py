"""edgetrain: train and personalize ONNX models on the device."""
from . import ops  # registers every op
from .errors import (EdgetrainError, InputError, KernelError, ModelLoadError, OpError, ShapeError,
                     UnsupportedDtypeError, UnsupportedOpError)
from .graph import load_graph
from .measure import set_num_threads
from .runtime import InferenceSession
from .training.trainer import Trainer

__version__ = "0.1.0"

__all__ = ["InferenceSession", "load_graph", "Trainer", "set_num_threads", "EdgetrainError", "InputError",
           "KernelError", "ModelLoadError", "OpError", "ShapeError", "UnsupportedDtypeError",
           "UnsupportedOpError", "__version__"]
