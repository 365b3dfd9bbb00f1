"""Learning-rate schedules (ONNX Runtime's ``LinearLRScheduler`` and more).

A schedule sets ``lr = initial_lr * factor(step)`` where ``step`` is the optimizer's step count,
which the checkpoint keeps: a schedule rebuilt after loading a checkpoint carries on where it
stopped. The factor is applied when the schedule is built and at each ``scheduler_step()``
(call it after ``optimizer.step()``), like ``torch.optim.lr_scheduler.LambdaLR``.
"""
from __future__ import annotations

import math

from .optim import Optimizer, OptimizerError


__all__ = ["resume_scheduler", "LRScheduler", "LinearLRScheduler", "CosineLRScheduler",
           "StepLRScheduler", "ExponentialLRScheduler", "ConstantLRScheduler"]


class LRScheduler:
    def __init__(self, optimizer: Optimizer, initial_lr: float):
        if not isinstance(optimizer, Optimizer):
            raise OptimizerError(f"a schedule needs an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.initial_lr = float(initial_lr)
        self.optimizer._st["schedule"] = {"type": type(self).__name__, **self._settings()}
        self.scheduler_step()

    def _settings(self) -> dict:
        return {k: v for k, v in vars(self).items() if k != "optimizer"}

    def factor(self, step: int) -> float:
        raise NotImplementedError

    def scheduler_step(self) -> None:
        self.optimizer.set_learning_rate(self.initial_lr * self.factor(self.optimizer.step_count))


class LinearLRScheduler(LRScheduler):
    """Linear warm-up from 0 to ``initial_lr`` over ``warmup_step_count`` steps, then linear decay
    to 0 at ``total_step_count``. Arguments in the order their names say (ONNX Runtime 1.19.2
    passes warm-up and total swapped to its native code; edgetrain does not)."""

    def __init__(self, optimizer, warmup_step_count: int, total_step_count: int, initial_lr: float):
        if not 0 <= warmup_step_count <= total_step_count:
            raise OptimizerError(f"LinearLRScheduler needs 0 <= warmup_step_count "
                                 f"({warmup_step_count}) <= total_step_count ({total_step_count})")
        self.warmup_step_count, self.total_step_count = int(warmup_step_count), int(total_step_count)
        super().__init__(optimizer, initial_lr)

    def factor(self, step):
        if step < self.warmup_step_count:
            return step / max(1, self.warmup_step_count)
        return max(0.0, (self.total_step_count - step)
                   / max(1, self.total_step_count - self.warmup_step_count))


class CosineLRScheduler(LRScheduler):
    """Linear warm-up, then half a cosine from ``initial_lr`` down to ``min_lr_ratio * initial_lr``
    at ``total_step_count`` (held there after)."""

    def __init__(self, optimizer, warmup_step_count: int, total_step_count: int, initial_lr: float,
                 min_lr_ratio: float = 0.0):
        if not 0 <= warmup_step_count <= total_step_count:
            raise OptimizerError(f"CosineLRScheduler needs 0 <= warmup_step_count "
                                 f"({warmup_step_count}) <= total_step_count ({total_step_count})")
        self.warmup_step_count, self.total_step_count = int(warmup_step_count), int(total_step_count)
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, initial_lr)

    def factor(self, step):
        if step < self.warmup_step_count:
            return step / max(1, self.warmup_step_count)
        span = max(1, self.total_step_count - self.warmup_step_count)
        progress = min(1.0, (step - self.warmup_step_count) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class StepLRScheduler(LRScheduler):
    """``initial_lr * gamma ** (step // step_size)``."""

    def __init__(self, optimizer, step_size: int, initial_lr: float, gamma: float = 0.1):
        if step_size < 1:
            raise OptimizerError(f"StepLRScheduler needs step_size >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, initial_lr)

    def factor(self, step):
        return self.gamma ** (step // self.step_size)


class ExponentialLRScheduler(LRScheduler):
    """``initial_lr * gamma ** step``."""

    def __init__(self, optimizer, initial_lr: float, gamma: float):
        self.gamma = float(gamma)
        super().__init__(optimizer, initial_lr)

    def factor(self, step):
        return self.gamma ** step


class ConstantLRScheduler(LRScheduler):
    """``initial_lr`` throughout, after an optional linear warm-up."""

    def __init__(self, optimizer, initial_lr: float, warmup_step_count: int = 0):
        self.warmup_step_count = int(warmup_step_count)
        super().__init__(optimizer, initial_lr)

    def factor(self, step):
        return min(1.0, step / self.warmup_step_count) if self.warmup_step_count else 1.0


def resume_scheduler(optimizer: Optimizer) -> LRScheduler | None:
    """The schedule recorded in the optimizer's state (a loaded checkpoint saved with its optimizer
    state), rebuilt with its settings; None when there is none."""
    spec = dict(optimizer._st.get("schedule") or {})
    if not spec:
        return None
    cls = {c.__name__: c for c in LRScheduler.__subclasses__()}.get(spec.pop("type"))
    if cls is None:
        raise OptimizerError(f"unknown schedule in the checkpoint: {optimizer._st['schedule']}")
    return cls(optimizer, **spec)
