"""Run a command under a hard memory cap, the way a device enforces one: the cgroup v1 memory
controller (as root), which counts the page cache too, so that data "swapped" to a file that
still sits in the cache has not left memory. A process over the cap is killed.

    python bench/capped.py --cap 157 -- python bench/worker.py ...        # completes or not
    python bench/capped.py --find 60 400 -- python bench/worker.py ...    # the smallest cap (MB)

Prints one JSON line per run: cap, exit code, whether it completed, the cgroup's peak usage
(memory.max_usage_in_bytes) and the OOM kills. Standard library only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = "/sys/fs/cgroup/memory"
MB = 1024 * 1024


def available() -> str | None:
    """None when capped runs work here, else why not."""
    if not os.path.isdir(ROOT):
        return f"no cgroup v1 memory controller at {ROOT}"
    if not os.access(ROOT, os.W_OK):
        return f"{ROOT} is not writable (run as root)"
    return None


def _write(path: str, value) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def run_capped(cmd: list[str], cap_mb: float, timeout: float = 1800) -> dict:
    """Run ``cmd`` in a fresh cgroup capped at ``cap_mb``; what happened."""
    why = available()
    if why:
        raise RuntimeError(why)
    group = os.path.join(ROOT, f"edgetrain_cap_{os.getpid()}_{time.monotonic_ns()}")
    os.mkdir(group)
    try:
        _write(os.path.join(group, "memory.limit_in_bytes"), int(cap_mb * MB))
        memsw = os.path.join(group, "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):  # no escape to swap either
            _write(memsw, int(cap_mb * MB))
        procs = os.path.join(group, "cgroup.procs")
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=lambda: _write(procs, os.getpid()))
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
        wall = time.perf_counter() - t0
        oom = _read(os.path.join(group, "memory.oom_control"))
        kills = next((int(ln.split()[1]) for ln in oom.splitlines()
                      if ln.startswith("oom_kill ")), None)
        peak = int(_read(os.path.join(group, "memory.max_usage_in_bytes"))) / MB
        return {"cap_mb": cap_mb, "rc": p.returncode, "completed": p.returncode == 0,
                "max_usage_mb": round(peak, 1), "oom_kills": kills, "wall_s": round(wall, 1),
                "output": out}
    finally:
        for _ in range(50):  # the cgroup can be removed once its last process is reaped
            try:
                os.rmdir(group)
                break
            except OSError:
                time.sleep(0.1)


def smallest_cap(cmd, lo: float, hi: float, tol: float = 2.0, log=None, ok=None) -> dict:
    """Bisect the smallest cap in [lo, hi] MB under which ``cmd`` (a list, or a function of the
    cap giving one) completes (to ``tol`` MB), ``ok(run)`` deciding what completing is: the run
    at that cap, plus ``failed_below``: the largest cap that failed."""
    make = cmd if callable(cmd) else (lambda cap: cmd)
    ok = ok or (lambda r: r["completed"])

    def run(cap):
        r = run_capped(make(cap), cap)
        r["completed"] = ok(r)
        return r
    best = run(hi)
    if log:
        log(best)
    if not best["completed"]:
        return {**best, "failed_below": hi}
    failed = lo
    while hi - failed > tol:
        mid = round((failed + hi) / 2, 1)
        r = run(mid)
        if log:
            log(r)
        if r["completed"]:
            hi, best = mid, r
        else:
            failed = mid
    return {**best, "failed_below": failed}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cap", type=float, help="the cap in MB")
    ap.add_argument("--find", nargs=2, type=float, metavar=("LO", "HI"),
                    help="bisect the smallest cap in [LO, HI] MB")
    ap.add_argument("--tol", type=float, default=2.0)
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- the command")
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not cmd or (a.cap is None) == (a.find is None):
        ap.error("give --cap MB or --find LO HI, and the command after --")

    def log(r):
        print(json.dumps({k: v for k, v in r.items() if k != "output"}), flush=True)

    if a.cap is not None:
        r = run_capped(cmd, a.cap)
        log(r)
        print(r["output"][-3000:], file=sys.stderr)
        return 0 if r["completed"] else 1
    r = smallest_cap(cmd, *a.find, tol=a.tol, log=log)
    print(json.dumps({"smallest_cap_mb": r["cap_mb"], "failed_below_mb": r["failed_below"],
                      "max_usage_mb": r["max_usage_mb"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
