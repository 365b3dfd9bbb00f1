"""Schedules under ONNX Runtime's module path (``onnxruntime.training.api.lr_scheduler``)."""
from ..training.lr_scheduler import *  # noqa: F401,F403
from ..training.lr_scheduler import __all__  # noqa: F401
