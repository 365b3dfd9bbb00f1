"""Offline artifact generation, with ONNX Runtime's names:
``from edgetrain import artifacts`` replaces ``from onnxruntime.training import artifacts``."""
from .training.artifacts import LossType, generate_artifacts
from .training.graphs import ArtifactError
from .training.losses import (BCEWithLogitsLoss, CrossEntropyLoss, CustomLoss, HuberLoss,
                              KLDivLoss, L1Loss, Loss, LossError, MSELoss, NLLLoss, SmoothL1Loss)
from .training.optim import SGD, Adam, AdamW, OptimType, TorchAdamW

__all__ = ["generate_artifacts", "LossType", "OptimType", "ArtifactError", "Loss", "LossError",
           "CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss",
           "BCEWithLogitsLoss", "KLDivLoss", "CustomLoss", "SGD", "Adam", "AdamW", "TorchAdamW"]
