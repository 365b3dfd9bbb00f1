"""Run the same training jobs in edgetrain, PyTorch and ONNX Runtime training, each engine in a
process of its own, and write docs/benchmarks.md (and a JSON of everything measured).

    .venv/bin/python bench/run.py                                   # every job, every engine
    .venv/bin/python bench/run.py --jobs mlp,mnv2_96_all --steps 5 --engines edgetrain,torch \
        --out /tmp/bench.md --json /tmp/bench.json

Per job: the torch module is built from a fixed seed and exported (bench/models.py), the batches
are drawn once (bench/data.py), then per engine one process prepares its artifacts and a fresh
one trains (bench/worker.py). ONNX Runtime runs in bench/.venv-ort, created here when missing.
Scratch files go to bench/.work/ (ignored by git).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench import data, models, report  # noqa: E402
from bench.worker import PREFIX  # noqa: E402

# torch-bnbatch: PyTorch with BatchNorm on batch statistics, which is what ORT's training model
# computes; run on BatchNorm models only, to check ORT's losses against (not a comparator).
# ort-ln3: ORT on the export with its one-output LayerNormalization nodes given their optional
# outputs (ORT has no gradient otherwise); run on such models only.
ENGINES = ["edgetrain", "torch", "ort", "torch-bnbatch", "ort-ln3"]
STEPS = {"mlp": 50, "mnv2_96_all": 20, "mnv2_96_last": 20, "mnv2_224_all": 6,
         "mnv2_224_last": 6, "tinylm": 20}
LOAD_OK = 0.25  # cores other processes may keep busy without the numbers counting as disturbed
ORT_PACKAGES = ["onnxruntime-training-cpu==1.19.2", "onnx==1.16.2", "torch==2.13.0"]


def ensure_ort_venv(venv: str, log) -> tuple[str | None, str | None]:
    """(python of the ORT venv, None), creating it when missing; (None, why) when that fails."""
    py = os.path.join(venv, "bin", "python")
    if os.path.exists(py):
        return py, None
    print(f"creating {venv} (pip install {' '.join(ORT_PACKAGES)}) ...", flush=True)
    for cmd in (["python3", "-m", "venv", venv],
                [py, "-m", "pip", "install", "-q", *ORT_PACKAGES]):
        r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
        if r.returncode != 0:
            return None, f"could not create the ONNX Runtime venv: `{' '.join(cmd)}` failed"
    return py, None


def run_worker(python: str, args: list[str], timeout: float, log_path: str) -> dict:
    """Run bench/worker.py; its JSON result, or an ``error`` saying why there is none."""
    cmd = [python, os.path.join(HERE, "worker.py"), *args]
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"did not finish within {timeout:.0f} s"}
    wall = round(time.perf_counter() - t0, 2)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(PREFIX)]
    if not lines:
        how = (f"killed by signal {-r.returncode}" + (" (out of memory?)" if r.returncode == -9
                                                       else "")
               if r.returncode < 0 else f"exit status {r.returncode}")
        return {"error": f"worker process died: {how}; see {os.path.relpath(log_path, ROOT)}"}
    out = json.loads(lines[-1][len(PREFIX):])
    out["wall_s"] = wall
    return out


def busy_cores(window: float = 2.0) -> float:
    """Cores kept busy by other processes over ``window`` seconds (this one sleeps)."""
    def busy():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")
    b0 = busy()
    time.sleep(window)
    return (busy() - b0) / window


def wait_idle(max_wait: float, threshold: float = LOAD_OK) -> dict:
    """Wait (at most ``max_wait`` s) until other processes keep less than ``threshold`` cores
    busy: the machine may be shared. Returns the load seen last and the seconds waited."""
    t0 = time.perf_counter()
    while True:
        load = busy_cores()
        waited = time.perf_counter() - t0
        if load < threshold or waited >= max_wait:
            return {"load_before": round(load, 2), "idle_wait_s": round(waited, 1)}


def import_time(python: str, module: str, repeat: int = 5) -> float | None:
    """Median wall time of ``import module`` in fresh processes (seconds)."""
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    times = []
    for _ in range(repeat):
        r = subprocess.run([python, "-c", code], capture_output=True, text=True)
        if r.returncode != 0:
            return None
        times.append(float(r.stdout.strip().splitlines()[-1]))
    return round(statistics.median(times), 3)


def versions(python: str, names: list[str]) -> dict:
    code = ("import importlib.metadata as m, json, sys; v = {}\n"
            f"for n in {names!r}:\n"
            "    try: v[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\n"
            "v['python'] = sys.version.split()[0]; print(json.dumps(v))")
    r = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def sizes(python: str, names: list[str]) -> dict:
    r = subprocess.run([python, os.path.join(HERE, "sizes.py"), *names], capture_output=True,
                       text=True)
    return json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-300:]}


def source_mb(folder: str) -> float:
    """Size of a source tree without bytecode caches."""
    total = 0
    for d, dirs, files in os.walk(folder):
        dirs[:] = [x for x in dirs if x != "__pycache__"]
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return round(total / 2**20, 2)


def machine() -> dict:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
    def git(*a):
        r = subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else "?"
    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "src").splitlines()]
    return {"git": git("rev-parse", "--short", "HEAD"), "src_changes": dirty,
            "cpu": cpu, "cores": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "ram_gib": round(mem_kb / 2**20, 1), "kernel": platform.release(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def run_job(job: str, engines: list[str], pythons: dict, args, work: str, log_dir: str) -> dict:
    spec_job = models.JOBS[job]
    steps = args.steps or STEPS[job]
    n = args.warmup + steps
    job_dir = os.path.join(work, job)
    t0 = time.perf_counter()
    spec = models.export(job, os.path.join(job_dir, "model"))
    batches = os.path.join(job_dir, "batches.npz")
    data.save(batches, data.make_batches(spec_job, n))
    out = {"job": job, "spec": spec, "steps": steps, "warmup": args.warmup, "engines": {},
           "export_s": round(time.perf_counter() - t0, 2)}
    for eng in engines:
        if (eng == "torch-bnbatch" and not spec["batchnorm_nodes"]) or (
                eng == "ort-ln3" and not spec["layernorm_1out_nodes"]):
            continue
        py = pythons.get(eng)
        if isinstance(py, dict):  # the engine cannot run at all here
            out["engines"][eng] = dict(py)
            continue
        art = os.path.join(job_dir, f"artifacts_{eng}")
        common = ["--engine", eng, "--model-dir", os.path.join(job_dir, "model"),
                  "--artifacts", art, "--threads", str(args.threads)]
        res: dict = {}
        if not eng.startswith("torch"):
            res = run_worker(py, [*common, "--phase", "prepare"], args.timeout,
                             os.path.join(log_dir, f"{job}_{eng}_prepare.log"))
            res = {"prepare": res} if "error" not in res else {"error": res["error"],
                                                               "detail": res.get("detail")}
        if "error" not in res:
            best = None
            for attempt in range(1 + args.retries):  # again when others loaded the CPUs
                idle = wait_idle(args.wait_idle) if args.wait_idle > 0 else {}
                run = run_worker(py, [*common, "--phase", "run", "--data", batches,
                                      "--steps", str(steps), "--warmup", str(args.warmup),
                                      "--lr", str(args.lr)], args.timeout,
                                 os.path.join(log_dir, f"{job}_{eng}_run.log"))
                run.update(idle, attempts=attempt + 1)
                load = run.get("other_load_cores")
                best_load = (best or {}).get("other_load_cores")
                if best is None or (load is not None and load < (9 if best_load is None
                                                                 else best_load)):
                    best = run
                if load is None or load <= LOAD_OK:
                    break
            res.update(best)
        out["engines"][eng] = res
        status = res.get("error") or f"{res.get('median_step_ms')} ms/step"
        print(f"  {job:14s} {eng:10s} {status}", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--jobs", default=",".join(models.JOBS),
                    help=f"comma-separated, from {', '.join(models.JOBS)}")
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help=f"comma-separated, from {', '.join(ENGINES)} (default: all)")
    ap.add_argument("--steps", type=int, help="timed steps for every job (default: per job, "
                    + ", ".join(f"{k} {v}" for k, v in STEPS.items()) + ")")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before (default 3)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2, help="torch / ORT intra-op threads")
    ap.add_argument("--retries", type=int, default=2,
                    help="run a timed process again (up to this many times) when other processes "
                    f"took more than {LOAD_OK} cores during it; the least disturbed run is kept")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per worker process")
    ap.add_argument("--wait-idle", type=float, default=300, metavar="S",
                    help="before each timed run, wait up to S s for other processes to leave "
                    "the CPUs idle (0: do not wait; default 300)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"),
                    help="markdown report (default docs/benchmarks.md)")
    ap.add_argument("--json", default=os.path.join(HERE, ".work", "results.json"),
                    help="everything measured (default bench/.work/results.json)")
    ap.add_argument("--work", default=os.path.join(HERE, ".work"),
                    help="scratch: models, batches, artifacts, logs (default bench/.work)")
    ap.add_argument("--ort-venv", default=os.path.join(HERE, ".venv-ort"),
                    help="ONNX Runtime training venv, created when missing")
    ap.add_argument("--render-only", action="store_true",
                    help="run nothing: rewrite --out from the results in --json")
    a = ap.parse_args(argv)
    if a.render_only:
        with open(a.json) as f:
            results = json.load(f)
        with open(a.out, "w") as f:
            f.write(report.markdown(results))
        print(f"wrote {a.out} from {a.json}")
        return 0
    jobs = [j for j in a.jobs.split(",") if j]
    engines = [e for e in a.engines.split(",") if e]
    bad = [j for j in jobs if j not in models.JOBS] + [e for e in engines if e not in ENGINES]
    if bad:
        ap.error(f"unknown job/engine {bad}")
    log_dir = os.path.join(a.work, "logs")
    os.makedirs(log_dir, exist_ok=True)
    t_start = time.perf_counter()

    pythons: dict = {"edgetrain": sys.executable, "torch": sys.executable,
                     "torch-bnbatch": sys.executable}
    if "ort" in engines or "ort-ln3" in engines:
        with open(os.path.join(log_dir, "ort_venv.log"), "a") as log:
            py, why = ensure_ort_venv(a.ort_venv, log)
        pythons["ort"] = pythons["ort-ln3"] = py if py else {"error": why}

    results = {"command": " ".join(["bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
               "machine": machine(), "settings": {"warmup": a.warmup, "lr": a.lr,
                                                  "threads": a.threads,
                                                  "wait_idle": a.wait_idle}, "jobs": []}
    for job in jobs:
        print(f"{job}:", flush=True)
        results["jobs"].append(run_job(job, engines, pythons, a, a.work, log_dir))

    print("import times and installed sizes ...", flush=True)
    main_py = sys.executable
    results["versions"] = {"main": versions(main_py, ["edgetrain", "numpy", "onnx",
                                                      "safetensors", "torch"])}
    results["import_s"] = {"edgetrain": import_time(main_py, "edgetrain"),
                           "torch": import_time(main_py, "torch")}
    results["sizes"] = {"edgetrain_runtime": sizes(main_py, ["numpy", "onnx", "safetensors"]),
                        "edgetrain_source_mb": source_mb(os.path.join(ROOT, "src", "edgetrain"))}
    if isinstance(pythons.get("ort"), str):
        ort_py = pythons["ort"]
        results["versions"]["ort"] = versions(ort_py, ["onnxruntime-training-cpu", "onnx",
                                                       "torch", "numpy"])
        results["import_s"]["onnxruntime.training.api"] = import_time(
            ort_py, "onnxruntime.training.api")
        results["sizes"]["ort_training"] = sizes(ort_py, ["onnxruntime-training-cpu", "torch"])
    results["total_s"] = round(time.perf_counter() - t_start, 1)

    os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
    with open(a.json, "w") as f:
        json.dump(results, f, indent=1)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(report.markdown(results))
    print(f"wrote {a.out} and {a.json} in {results['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
