"""Optimizer update rules and LR schedules against their defining formulas (float64), written
out independently of the vectorized implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from edgetrain import artifacts as A
from edgetrain.training.optim import UPDATES, OptimizerError, global_norm

RNG = np.random.default_rng(0)
P0 = RNG.standard_normal(50)
GRADS = [RNG.standard_normal(50) for _ in range(6)]


def run(config):
    p, st = P0.copy(), {}
    for t, g in enumerate(GRADS, start=1):
        UPDATES[type(config)](config, p, g.copy(), st, config.lr, t)
    return p


def ref_sgd(lr, momentum, dampening, nesterov, wd):
    p, buf = P0.copy(), None
    for g in GRADS:
        d = g + wd * p
        if momentum:
            buf = d.copy() if buf is None else momentum * buf + (1 - dampening) * d
            d = d + momentum * buf if nesterov else buf
        p = p - lr * d
    return p


def ref_adam(lr, b1, b2, eps, wd, mode):
    p, m, v = P0.copy(), np.zeros(50), np.zeros(50)
    for t, g in enumerate(GRADS, start=1):
        if mode == "adam":
            g = g + wd * p
        if mode == "torch_adamw":
            p = p * (1 - lr * wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if mode == "hf_adamw":  # ONNX Runtime's AdamW (adam_mode=1)
            step = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            p = p - step * m / (np.sqrt(v) + eps)
            p = p - lr * wd * p
        else:
            p = p - lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p


@pytest.mark.parametrize("momentum,dampening,nesterov,wd", [
    (0.0, 0.0, False, 0.0), (0.9, 0.0, False, 0.0), (0.9, 0.0, True, 0.0), (0.9, 0.1, False, 0.01),
    (0.8, 0.0, True, 0.05)])
def test_sgd(momentum, dampening, nesterov, wd):
    cfg = A.SGD(lr=0.1, momentum=momentum, dampening=dampening, nesterov=nesterov,
                weight_decay=wd)
    np.testing.assert_allclose(run(cfg), ref_sgd(0.1, momentum, dampening, nesterov, wd),
                               rtol=1e-13)


@pytest.mark.parametrize("cls,mode", [(A.Adam, "adam"), (A.TorchAdamW, "torch_adamw"),
                                      (A.AdamW, "hf_adamw")])
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_adam_family(cls, mode, wd):
    cfg = cls(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd)
    np.testing.assert_allclose(run(cfg), ref_adam(0.01, 0.8, 0.95, 1e-6, wd, mode), rtol=1e-12)


def test_ort_adamw_defaults_are_onnxruntimes():
    cfg = A.AdamW()
    assert (cfg.betas, cfg.eps, cfg.weight_decay, cfg.bias_correction) == ((0.9, 0.999), 1e-6,
                                                                            0.0, True)
    t = A.TorchAdamW()
    assert (t.eps, t.weight_decay) == (1e-8, 1e-2)


def test_global_norm_clipping(tmp_path):
    from edgetrain.api import CheckpointState, Module, Optimizer
    from training_util import GOLDEN
    x = RNG.standard_normal((4, 20)).astype(np.float32)
    y = RNG.integers(0, 5, 4)
    finals = []
    for clip in (None, 0.05):
        paths = A.generate_artifacts(str(GOLDEN / "mlp.onnx"), loss=A.CrossEntropyLoss(),
                                     optimizer=A.SGD(lr=1.0, max_grad_norm=clip),
                                     artifact_directory=tmp_path / str(clip))
        state = CheckpointState.load_checkpoint(paths["checkpoint"])
        module = Module(paths["training_model"], state)
        opt = Optimizer(paths["optimizer_model"], module)
        module(x, y)
        before = {k: state.parameters[k].data.copy() for k in state.parameters}
        grads = [state.parameters[k].grad.copy() for k in state.parameters]
        opt.step()
        delta = [before[k] - state.parameters[k].data for k in state.parameters]
        finals.append((global_norm(grads), global_norm(delta)))
    (norm, step_plain), (_, step_clipped) = finals
    assert norm > 0.05
    np.testing.assert_allclose(step_plain, norm, rtol=1e-5)       # lr 1: the step is the grad
    np.testing.assert_allclose(step_clipped, 0.05, rtol=1e-4)     # scaled to the max norm


def schedule_lrs(make, steps=12):
    from edgetrain.api import Optimizer
    opt = Optimizer.__new__(Optimizer)  # only the step count and learning rate matter here
    opt._st = {"step": 0, "lr": 1.0, "moments": {}}
    sched = make(opt)
    lrs = [opt.get_learning_rate()]
    for _ in range(steps):
        opt._st["step"] += 1
        sched.scheduler_step()
        lrs.append(opt.get_learning_rate())
    return np.array(lrs)


def test_linear_schedule_argument_order_as_named():
    from edgetrain.api import LinearLRScheduler
    lrs = schedule_lrs(lambda o: LinearLRScheduler(o, warmup_step_count=2, total_step_count=10,
                                                   initial_lr=0.1))
    want = [0.1 * (s / 2 if s < 2 else max(0.0, (10 - s) / 8)) for s in range(13)]
    np.testing.assert_allclose(lrs, want, rtol=1e-12, atol=1e-15)
    with pytest.raises(OptimizerError, match="warmup_step_count"):
        schedule_lrs(lambda o: LinearLRScheduler(o, 10, 2, 0.1))  # swapped: refused, not silent


def test_other_schedules():
    from edgetrain.api import (ConstantLRScheduler, CosineLRScheduler, ExponentialLRScheduler,
                               StepLRScheduler)
    s = np.arange(13)
    np.testing.assert_allclose(schedule_lrs(lambda o: StepLRScheduler(o, 4, 0.1, gamma=0.5)),
                               0.1 * 0.5 ** (s // 4), rtol=1e-12)
    np.testing.assert_allclose(schedule_lrs(lambda o: ExponentialLRScheduler(o, 0.1, 0.9)),
                               0.1 * 0.9 ** s, rtol=1e-12)
    np.testing.assert_allclose(schedule_lrs(lambda o: ConstantLRScheduler(o, 0.1, 4)),
                               0.1 * np.minimum(1, s / 4), rtol=1e-12)
    cos = schedule_lrs(lambda o: CosineLRScheduler(o, 2, 10, 0.1, min_lr_ratio=0.1))
    want = [0.1 * (t / 2 if t < 2 else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1, (t - 2) / 8))))
            for t in s]
    np.testing.assert_allclose(cos, want, rtol=1e-12)
