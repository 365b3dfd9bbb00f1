"""One engine, one job, one process; prints one JSON line (prefixed ``BENCH_RESULT``).

    python bench/worker.py --engine edgetrain --phase prepare --model-dir DIR --artifacts ART
    python bench/worker.py --engine edgetrain --phase run --model-dir DIR --artifacts ART \
        --data batches.npz --steps 10 --warmup 1

``--model-dir`` holds what ``bench.models.export`` wrote (model.onnx, weights.npz, spec.json).
Artifacts are prepared in a process of their own so that the training process's peak memory
is the training's. Errors are reported in the JSON (``error``: a short reason, ``detail``: the
end of the traceback), never as a crash.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import data  # noqa: E402
from bench.reasons import short_reason  # noqa: E402

PREFIX = "BENCH_RESULT "


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True, choices=["edgetrain", "torch", "torch-bnbatch", "ort", "ort-ln3"])
    ap.add_argument("--phase", default="run", choices=["prepare", "run"])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--artifacts", help="artifact folder (edgetrain, ort)")
    ap.add_argument("--data", help="batches .npz (run phase)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--knobs", default="{}", help="edgetrain Module options as JSON, e.g. "
                                                  "'{\"memory_budget_mb\": 90}'")
    a = ap.parse_args(argv)
    with open(os.path.join(a.model_dir, "spec.json")) as f:
        spec = json.load(f)
    model = os.path.join(a.model_dir, spec["onnx"])
    out = {"engine": a.engine, "job": spec["job"], "phase": a.phase}
    try:
        if a.engine == "edgetrain":
            from bench.engines import edgetrain_engine as eng
        elif a.engine.startswith("torch"):
            from bench.engines import torch_engine as eng
        else:
            from bench.engines import ort_engine as eng
        if a.phase == "prepare":
            if a.engine.startswith("ort"):
                out.update(eng.prepare(model, spec["trainable_onnx"], a.artifacts,
                                       patch_ln=a.engine == "ort-ln3"))
            elif a.engine == "edgetrain":
                out.update(eng.prepare(model, spec["trainable_onnx"], a.artifacts))
        else:
            batches = data.load(a.data)
            kw = dict(warmup=a.warmup, lr=a.lr)
            if a.engine == "edgetrain":
                out.update(eng.run_job(model, spec["trainable_onnx"], batches, a.steps,
                                       artifact_dir=a.artifacts, knobs=json.loads(a.knobs),
                                       **kw))
            elif a.engine.startswith("torch"):
                out.update(eng.run_job(spec, os.path.join(a.model_dir, "weights.npz"), batches,
                                       a.steps, threads=a.threads,
                                       bn="batch" if a.engine == "torch-bnbatch" else "frozen",
                                       **kw))
            else:
                out.update(eng.run_job(a.artifacts, batches, a.steps, threads=a.threads, **kw))
    except Exception as e:  # noqa: BLE001  (reported, not raised: the table says why)
        out["error"] = short_reason(e)
        out["detail"] = "".join(traceback.format_exception(e)[-3:])[-2000:]
    print(PREFIX + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
