"""edgetrain: ONNX Runtime's on-device training API over edgetrain's artifacts. The steps are
``edgetrain bench``'s (``edgetrain.cli.bench.run_job``), so both measure the same thing."""
from __future__ import annotations

import os
import tempfile
import time


ENGINE = "edgetrain"


def prepare(model_path: str, trainable: list[str] | None, artifact_dir: str) -> dict:
    """Write the training artifacts (AdamW in ONNX Runtime's flavour, cross-entropy, BatchNorm
    following the export) into ``artifact_dir``."""
    from edgetrain import artifacts

    t0 = time.perf_counter()
    artifacts.generate_artifacts(model_path, requires_grad=trainable,
                                 loss=artifacts.LossType.CrossEntropyLoss,
                                 optimizer=artifacts.OptimType.AdamW,
                                 artifact_directory=artifact_dir)
    return {"artifacts_s": round(time.perf_counter() - t0, 2)}


def run_job(model_path: str, trainable: list[str] | None, batches, steps: int, *,
            warmup: int = 1, lr: float = 1e-3, artifact_dir: str | None = None,
            knobs: dict | None = None) -> dict:
    """Train ``model_path`` for ``warmup + steps`` steps on ``batches`` (``(x, y)`` with a
    leading step axis; step i uses batch i modulo their number) and return the measurements.

    ``trainable``: the parameters to train (None: all). ``artifact_dir``: artifacts written by
    :func:`prepare`; when None or empty they are generated here first (in this process: the peak
    memory then includes the generation). Peak memory is the whole process's (VmHWM)."""
    result: dict = {"engine": ENGINE}
    if artifact_dir is None or not os.path.exists(os.path.join(artifact_dir, "checkpoint")):
        artifact_dir = artifact_dir or tempfile.mkdtemp(prefix="edgetrain-bench-")
        result.update(prepare(model_path, trainable, artifact_dir))
    t0 = time.perf_counter()
    import edgetrain
    from edgetrain.cli.bench import run_job as train_steps
    result["import_s"] = round(time.perf_counter() - t0, 3)
    result.update(train_steps(artifact_dir, list(batches), steps, warmup=warmup, lr=lr,
                              **(knobs or {})))
    result["versions"] = {"edgetrain": getattr(edgetrain, "__version__", "?")}
    return result
