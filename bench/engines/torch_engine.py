"""PyTorch eager on the CPU: the same torch module that was exported, from the same weights,
in eval mode (BatchNorm normalizes with its running statistics, Dropout is off: the computation
of the inference export) with autograd on for the trainable parameters.

The optimizer is ONNX Runtime's AdamW (the Hugging Face variant: eps added to sqrt(v), bias
correction folded into the step size, weight decay 0), written out below, since
``torch.optim.AdamW`` is a different rule (see docs/benchmarks.md)."""
from __future__ import annotations

import math
import time

from ..measure import StepTimer, numpy_blas

ENGINE = "torch"
BETAS, EPS = (0.9, 0.999), 1e-6


def hf_adamw_step(params, moments, t: int, lr: float) -> None:
    """One Hugging Face AdamW update (weight decay 0) of ``params`` in place."""
    import torch

    b1, b2 = BETAS
    size = lr * math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    with torch.no_grad():
        for p, (m, v) in zip(params, moments):
            g = p.grad
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            p.addcdiv_(m, v.sqrt().add_(EPS), value=-size)


def run_job(spec: dict, weights_path: str, batches, steps: int, *, warmup: int = 1,
            lr: float = 1e-3, threads: int = 2, bn: str = "frozen") -> dict:
    """``bn``: "frozen" (running statistics: the export's computation, edgetrain's default) or
    "batch" (BatchNorm normalizes with batch statistics, Dropout still off: the computation ONNX
    Runtime's training model does, see ort_engine)."""
    result: dict = {"engine": ENGINE if bn == "frozen" else ENGINE + "-bnbatch"}
    t0 = time.perf_counter()
    import numpy as np
    import torch
    import torch.nn.functional as F
    result["import_s"] = round(time.perf_counter() - t0, 3)
    torch.set_num_threads(threads)

    t0 = time.perf_counter()
    from .. import models
    model = models.MODELS[spec["model"]]()
    with np.load(weights_path) as w:
        model.load_state_dict({k: torch.from_numpy(w[k]) for k in w.files})
    model.eval()
    if bn == "batch":
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.train()
    wanted = set(spec["trainable_torch"])
    params = []
    for k, p in model.named_parameters():
        p.requires_grad_(k in wanted)
        if k in wanted:
            params.append(p)
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    x, y = (torch.from_numpy(a) for a in batches)
    result["load_s"] = round(time.perf_counter() - t0, 3)

    def step(i: int):
        logits = model(x[i % len(x)])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i % len(y)].reshape(-1))
        loss.backward()
        hf_adamw_step(params, moments, i + 1, lr)
        for p in params:
            p.grad = None
        return loss.item()

    result.update(StepTimer(warmup, steps).run(step))
    result["versions"] = {"torch": torch.__version__}
    result["threads"] = {"torch_threads": torch.get_num_threads(),
                         "torch_interop_threads": torch.get_num_interop_threads(),
                         **numpy_blas()}
    return result
