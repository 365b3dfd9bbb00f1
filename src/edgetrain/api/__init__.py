"""The on-device training API, with ONNX Runtime's names: moving over is one import line,
``from edgetrain.api import CheckpointState, Module, Optimizer, LinearLRScheduler``."""
from ..training.checkpoint import CheckpointError, CheckpointState, Parameter
from ..training.lr_scheduler import (ConstantLRScheduler, CosineLRScheduler,
                                     ExponentialLRScheduler, LinearLRScheduler, LRScheduler,
                                     StepLRScheduler, resume_scheduler)
from ..training.module import Module
from ..training.optim import Optimizer, OptimizerError
from ..training.callbacks import Callback, EarlyStopping, Logger, LRSchedule, ProgressBar
from ..training.trainer import Trainer, TrainerError

__all__ = ["CheckpointState", "CheckpointError", "Parameter", "Module", "Optimizer",
           "OptimizerError", "LRScheduler", "LinearLRScheduler", "CosineLRScheduler",
           "StepLRScheduler", "ExponentialLRScheduler", "ConstantLRScheduler", "resume_scheduler",
           "Trainer", "TrainerError", "Callback", "EarlyStopping", "LRSchedule", "Logger",
           "ProgressBar"]
