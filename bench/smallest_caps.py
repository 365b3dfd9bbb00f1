"""The smallest hard memory cap under which each engine completes a training job, and edgetrain
under a cap of a fraction of PyTorch's whole-process peak (its budget: the cap less its own
baseline), with its step time against its own unconstrained step.

    .venv/bin/python bench/smallest_caps.py --job mnv2_224_all --fraction 0.05 \\
        --json bench/.work/caps.json

Each run: warm-up + steps on one batch, under bench/capped.py (cgroup v1, page cache counted).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench import capped, data, models  # noqa: E402
from bench.budget_sweep import result  # noqa: E402


def cmd(python: str, engine: str, job_dir: str, batches: str, steps: int, warmup: int,
        knobs: dict | None = None) -> list[str]:
    c = [python, os.path.join(HERE, "worker.py"), "--engine", engine, "--model-dir",
         os.path.join(job_dir, "model"), "--data", batches, "--steps", str(steps),
         "--warmup", str(warmup), "--artifacts", os.path.join(job_dir, f"artifacts_{engine}")]
    return c + (["--knobs", json.dumps(knobs)] if knobs else [])


def loaded_mb(job_dir: str, batches: str) -> float:
    """What both the process's baseline and a budget count: the parameters and the batch."""
    import numpy as np
    from edgetrain.api import CheckpointState
    state = CheckpointState.load_checkpoint(
        os.path.join(job_dir, "artifacts_edgetrain", "checkpoint"))
    params = sum(np.asarray(p.data).nbytes for p in state.parameters.values())
    x, y = data.load(batches)
    return (params + x[0].nbytes + y[0].nbytes) / 2 ** 20


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job", default="mnv2_224_all")
    ap.add_argument("--engines", default="edgetrain,torch,ort")
    ap.add_argument("--fraction", type=float, default=0.05, help="of PyTorch's peak (1/20)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--tol", type=float, default=0.03, help="bisection tolerance, relative")
    ap.add_argument("--torch-peak", type=float, metavar="MB",
                    help="PyTorch's peak RSS on the job, measured before (skips running it)")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    why = capped.available()
    if why:
        print(f"cannot cap memory here: {why}", file=sys.stderr)
        return 2
    pythons = {"edgetrain": sys.executable, "torch": sys.executable,
               "ort": os.path.join(HERE, ".venv-ort", "bin", "python")}
    job_dir = os.path.join(HERE, ".work", a.job)
    models.export(a.job, os.path.join(job_dir, "model"))
    batches = os.path.join(job_dir, "one_batch.npz")
    data.save(batches, data.make_batches(models.JOBS[a.job], 1))
    out: dict = {"job": a.job, "engines": {}}
    log = lambda r: print(json.dumps({k: v for k, v in r.items() if k != "output"}),  # noqa
                          flush=True)
    for eng in a.engines.split(","):
        py = pythons[eng]
        if eng != "torch":  # artifacts, in a process of their own
            prep = capped.run_capped([py, os.path.join(HERE, "worker.py"), "--engine", eng,
                                      "--phase", "prepare", "--model-dir",
                                      os.path.join(job_dir, "model"), "--artifacts",
                                      os.path.join(job_dir, f"artifacts_{eng}")], 1e6)
            assert prep["completed"], prep["output"][-2000:]
        free = capped.run_capped(cmd(py, eng, job_dir, batches, a.steps, a.warmup), 1e6)
        res = result(free)
        peak = max(free["max_usage_mb"], res.get("peak_rss_mb") or 0)
        lo = 0.0 if eng != "edgetrain" else 20.0
        best = capped.smallest_cap(cmd(py, eng, job_dir, batches, a.steps, a.warmup),
                                   lo, math.ceil(peak * 1.05), tol=max(2.0, peak * a.tol),
                                   log=log)
        out["engines"][eng] = {"uncapped": {k: res.get(k) for k in (
            "peak_rss_mb", "median_step_ms", "losses", "error")},
            "uncapped_cgroup_peak_mb": free["max_usage_mb"],
            "smallest_cap_mb": best["cap_mb"], "failed_at_mb": best["failed_below"]}
        if eng == "edgetrain":  # and with a budget: the cap less the process's own baseline
            # (the baseline holds the parameters and the batch, which the budget counts too)
            base = capped.run_capped(cmd(py, eng, job_dir, batches, 0, 0), 1e6)["max_usage_mb"]
            base -= loaded_mb(job_dir, batches)
            budgeted = capped.smallest_cap(
                lambda cap: cmd(py, eng, job_dir, batches, a.steps, a.warmup,
                                {"memory_budget_mb": round(max(cap - base, 1.0), 1)}),
                base, best["cap_mb"], tol=4.0, log=log,
                ok=lambda r: r["completed"] and "error" not in result(r))
            out["engines"][eng].update(baseline_mb=base,
                                       smallest_cap_with_budget_mb=budgeted["cap_mb"],
                                       budgeted_failed_at_mb=budgeted["failed_below"])
        log({"engine": eng, **out["engines"][eng]})
    torch_peak = a.torch_peak or out["engines"].get("torch", {}).get("uncapped", {}).get(
        "peak_rss_mb")
    if torch_peak and "edgetrain" in out["engines"]:
        cap = round(torch_peak * a.fraction, 1)
        base = capped.run_capped(cmd(sys.executable, "edgetrain", job_dir, batches, 0, 0), 1e6)
        budget = round(cap - base["max_usage_mb"] + loaded_mb(job_dir, batches), 1)
        run = capped.run_capped(cmd(sys.executable, "edgetrain", job_dir, batches, a.steps,
                                    a.warmup, {"memory_budget_mb": budget}), cap)
        res = result(run)
        ref = out["engines"]["edgetrain"]["uncapped"]
        out["at_fraction"] = {
            "fraction": a.fraction, "cap_mb": cap, "baseline_mb": base["max_usage_mb"],
            "budget_mb": budget, "completed": run["completed"] and "error" not in res,
            "cgroup_peak_mb": run["max_usage_mb"],
            **{k: res.get(k) for k in ("median_step_ms", "losses", "micro_batch", "swapped",
                                       "swap_mb", "error")}}
        if ref.get("median_step_ms") and res.get("median_step_ms"):
            out["at_fraction"]["step_vs_unconstrained"] = round(
                res["median_step_ms"] / ref["median_step_ms"], 2)
        if ref.get("losses") and res.get("losses"):
            out["at_fraction"]["loss_rel_diff"] = max(
                abs(x - y) / abs(y) for x, y in zip(res["losses"], ref["losses"]))
        log(out["at_fraction"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
