"""Memory budgets measured the way a device enforces them: each job runs in edgetrain with
``memory_budget_mb`` at several fractions of what its step plans unconstrained, under a hard
cgroup cap of that budget plus the process's own baseline (interpreter, libraries, model and
batches loaded; measured the same way, with no step). Writes a table and a plot of peak memory
and step time against the budget.

    .venv/bin/python bench/budget_sweep.py --jobs mnv2_96_all,tinylm \\
        --out docs/budget_sweep.md --plot docs/budget_sweep.png

Needs root (bench/capped.py). The batches are one per step, drawn as in bench/run.py.
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
from bench.worker import PREFIX  # noqa: E402

FRACTIONS = [1.0, 0.5, 0.25, 0.1]


def worker(job_dir: str, batches: str, steps: int, warmup: int, knobs: dict) -> list[str]:
    return [sys.executable, os.path.join(HERE, "worker.py"), "--engine", "edgetrain",
            "--model-dir", os.path.join(job_dir, "model"), "--artifacts",
            os.path.join(job_dir, "artifacts_edgetrain"), "--data", batches, "--steps",
            str(steps), "--warmup", str(warmup), "--knobs", json.dumps(knobs)]


def result(run: dict) -> dict:
    lines = [ln for ln in run["output"].splitlines() if ln.startswith(PREFIX)]
    return json.loads(lines[-1][len(PREFIX):]) if lines else {"error": "no result (killed?)"}


def needs(job_dir: str, batches: str) -> tuple[float, float, float]:
    """MiB the step plans unconstrained, of which the model fixes (parameters, their optimizer
    state, the batch), and the least any budget can reach."""
    import numpy as np
    from edgetrain.api import CheckpointState, Module, Optimizer
    art = os.path.join(job_dir, "artifacts_edgetrain")
    state = CheckpointState.load_checkpoint(os.path.join(art, "checkpoint"))
    m = Module(os.path.join(art, "training_model.onnx"), state,
               os.path.join(art, "eval_model.onnx"), memory_budget_mb=1e-3)
    Optimizer(os.path.join(art, "optimizer_model.onnx"), m)
    x, y = data.load(batches)
    feeds = {**dict(zip(m.input_names(), (x[0], y[0]))), **m._state_feeds()}
    full = m._micro.need(feeds, len(x[0]))
    why = m._micro.why_not(feeds)
    least = m._micro.need(feeds, len(x[0]) if why else 1, swap=True)
    loaded = (sum(np.asarray(state._tensors[k]).nbytes for k in m._roles.params + m._roles.buffers)
              + x[0].nbytes + y[0].nbytes)
    fixed = loaded + m._micro.state_bytes
    return full / 2 ** 20, fixed / 2 ** 20, least / 2 ** 20, loaded / 2 ** 20


def sweep(job: str, work: str, steps: int, warmup: int, log) -> dict:
    job_dir = os.path.join(work, job)
    spec = models.export(job, os.path.join(job_dir, "model"))
    batches = os.path.join(job_dir, "sweep_batches.npz")
    data.save(batches, data.make_batches(models.JOBS[job], warmup + steps))
    subprocess_ok = capped.run_capped(
        [sys.executable, os.path.join(HERE, "worker.py"), "--engine", "edgetrain", "--phase",
         "prepare", "--model-dir", os.path.join(job_dir, "model"), "--artifacts",
         os.path.join(job_dir, "artifacts_edgetrain")], 1e6)
    assert subprocess_ok["completed"], subprocess_ok["output"][-2000:]
    base = capped.run_capped(worker(job_dir, batches, 0, 0, {}), 1e6)
    full, fixed, least, loaded = needs(job_dir, batches)
    baseline = base["max_usage_mb"] - loaded  # the budget counts the parameters and batch
    budgets = [(f"{int(f * 100)}%", fixed + f * (full - fixed)) for f in FRACTIONS]
    budgets = [(label, mb) for label, mb in budgets if mb > least] + [("least", least)]
    rows = []
    for label, mb in sorted(budgets, key=lambda b: -b[1]):
        mb = math.ceil(mb * 10) / 10
        cap = baseline + mb
        run = capped.run_capped(worker(job_dir, batches, steps, warmup,
                                       {"memory_budget_mb": mb}), cap)
        res = result(run)
        run["completed"] = run["completed"] and "error" not in res
        row = {"job": job, "budget": label, "budget_mb": round(mb, 1), "cap_mb": round(cap, 1),
               "completed": run["completed"], "max_usage_mb": run["max_usage_mb"],
               **{k: res.get(k) for k in ("median_step_ms", "losses", "micro_batch", "swapped",
                                          "swap_mb", "error")}}
        if not run["completed"] and "error" not in res:
            row["error"] = f"killed at the cap (exit {run['rc']}, OOM kills {run['oom_kills']})"
        log(row)
        rows.append(row)
    return {"job": job, "spec": spec, "baseline_mb": round(baseline, 1), "full_mb": full,
            "fixed_mb": fixed, "least_mb": least, "rows": rows}


def table(results: list[dict]) -> str:
    out = ["| job | budget | budget MiB | cap MB (baseline + budget) | completed | cgroup peak MB "
           "| median step ms | how | losses rel. diff vs 100% |",
           "|---|---|---:|---:|---|---:|---:|---|---:|"]
    for r in results:
        ref = next((x["losses"] for x in r["rows"] if x["budget"] == "100%" and x["losses"]),
                   None)
        for x in r["rows"]:
            how = ", ".join(filter(None, [
                f"micro-batches of {x['micro_batch']}" if x.get("micro_batch") else "",
                f"{x['swapped']} tensors swapped ({x['swap_mb']} MiB)" if x.get("swapped")
                else ""])) or "kept in memory"
            diff = "—"
            if ref and x.get("losses"):
                diff = f"{max(abs(a - b) / abs(b) for a, b in zip(x['losses'], ref)):.1e}"
            step = f"{x['median_step_ms']:.0f}" if x.get("median_step_ms") else "—"
            out.append(f"| {r['job']} | {x['budget']} | {x['budget_mb']} | {x['cap_mb']} | "
                       f"{'yes' if x['completed'] else 'no: ' + str(x.get('error'))} | "
                       f"{x['max_usage_mb']} | {step} | {how} | {diff} |")
    return "\n".join(out)


def plot(results: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results):
        rows = [x for x in r["rows"] if x["completed"]]
        b = [x["budget_mb"] for x in rows]
        ax.plot(b, [x["max_usage_mb"] for x in rows], "o-", label="peak memory under the cap (MB)")
        ax.plot(b, [x["cap_mb"] for x in rows], "k--", lw=0.8, label="cap = baseline + budget")
        ax.set_xlabel("memory budget (MiB)")
        ax.set_ylabel("MB")
        ax.invert_xaxis()
        t = ax.twinx()
        t.plot(b, [x["median_step_ms"] for x in rows], "s-", color="tab:red",
               label="step time (ms)")
        t.set_ylabel("median step (ms)", color="tab:red")
        ax.set_title(r["job"])
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", default="mnv2_96_all,tinylm")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "budget_sweep.md"))
    ap.add_argument("--plot", default=os.path.join(ROOT, "docs", "budget_sweep.png"))
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    why = capped.available()
    if why:
        print(f"cannot cap memory here: {why}", file=sys.stderr)
        return 2
    work = os.path.join(HERE, ".work")
    results = [sweep(j, work, a.steps, a.warmup, lambda r: print(json.dumps(r), flush=True))
               for j in a.jobs.split(",")]
    text = (f"# Memory budget sweep\n\nGenerated by `.venv/bin/python bench/budget_sweep.py "
            f"--jobs {a.jobs}`. A budget (`Module(memory_budget_mb=...)`) covers everything "
            "the step plans: the parameters, their optimizer state and the batch, which the "
            "model fixes, and the arena and gradients, which the planner can shrink. The rows "
            "are the fixed part plus 100/50/25/10% of the rest, and the least the planner can "
            "reach (" + ", ".join(f"{r['job']}: {r['full_mb']:.1f} MiB unconstrained, "
                                   f"{r['fixed_mb']:.1f} fixed, {r['least_mb']:.1f} least"
                                   for r in results) + "). "
            f"Each run: {a.warmup} warm-up + {a.steps} steps under a hard "
            "cgroup cap (page cache counted) of the budget plus the process's baseline (measured "
            "the same way with no step, less the parameters and batch it has loaded, which the "
            "budget counts: " + ", ".join(
                f"{r['job']} {r['baseline_mb']:.0f} MB" for r in results) + ").\n\n"
            + table(results) + "\n\n![budget sweep](budget_sweep.png)\n")
    with open(a.out, "w") as f:
        f.write(text)
    if a.plot:
        plot(results, a.plot)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
