"""Measuring a training job: resident memory from /proc, the BLAS NumPy uses and its thread
count, and a step timer. Used by ``edgetrain bench`` and by every engine of bench/ (PyTorch's and
ONNX Runtime's run in environments without edgetrain and load this file by path), so it imports
the standard library and NumPy only."""
from __future__ import annotations

import ctypes
import os
import statistics
import time

MB = 1024 * 1024


def proc_status_kb(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS: resident now; VmHWM: peak resident)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def rss_mb() -> float:
    return proc_status_kb("VmRSS") / 1024


def peak_rss_mb() -> float:
    return proc_status_kb("VmHWM") / 1024


def numpy_blas() -> dict:
    """NumPy's BLAS (name, version, configuration) and the threads it runs with, read from the
    loaded OpenBLAS library when it exposes its thread query."""
    import numpy as np

    info: dict = {"numpy": np.__version__}
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info.update(blas=blas.get("name"), blas_version=blas.get("version"),
                    blas_config=blas.get("openblas configuration"))
    except Exception as e:  # noqa: BLE001  (older NumPy: no dict mode)
        info["blas"] = f"unknown ({type(e).__name__})"
    info["blas_threads"] = _openblas_threads()
    info["env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                              "MKL_NUM_THREADS") if k in os.environ}
    return info


def _openblas(verb: str):
    """OpenBLAS's ``get`` or ``set`` thread-count function in this process, or None."""
    try:
        with open("/proc/self/maps") as f:
            libs = {ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln}
    except OSError:
        return None
    for path in sorted(libs):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for sym in (f"scipy_openblas_{verb}_num_threads64_", f"openblas_{verb}_num_threads64_",
                    f"openblas_{verb}_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                return fn
    return None


def _openblas_threads() -> int | None:
    fn = _openblas("get")
    if fn is None:
        return None
    fn.restype = ctypes.c_int
    return int(fn())


def set_num_threads(n: int) -> int | None:
    """Threads NumPy's BLAS (OpenBLAS) uses from now on, for this process; returns the count it
    reports after the change, or None when NumPy's BLAS is not OpenBLAS (then set
    OMP_NUM_THREADS / OPENBLAS_NUM_THREADS before starting Python)."""
    import numpy  # noqa: F401  (loads the BLAS library)
    if int(n) < 1:
        raise ValueError(f"threads must be at least 1, not {n}")
    fn = _openblas("set")
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_int]
    fn(int(n))
    return _openblas_threads()


def _cpu_busy_s() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class StepTimer:
    """Runs ``step(i) -> loss`` for ``warmup + steps`` steps and gathers what every engine
    reports: resident memory before the first step, per-step times, losses, peak memory."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps = warmup, steps

    def run(self, step) -> dict:
        rss_loaded = rss_mb()
        times, losses = [], []
        busy0, self0, wall0 = _cpu_busy_s(), _self_cpu_s(), time.perf_counter()
        for i in range(self.warmup + self.steps):
            t0 = time.perf_counter()
            loss = step(i)
            times.append(time.perf_counter() - t0)
            losses.append(float(loss))
        peak = peak_rss_mb()
        wall = time.perf_counter() - wall0
        other = (_cpu_busy_s() - busy0) - (_self_cpu_s() - self0)
        timed = times[self.warmup:] or times
        return {"rss_loaded_mb": round(rss_loaded, 1), "peak_rss_mb": round(peak, 1),
                "train_mb": round(peak - rss_loaded, 1),
                "median_step_ms": round(1000 * statistics.median(timed), 2) if timed else None,
                "min_step_ms": round(1000 * min(timed), 2) if timed else None,
                "first_step_ms": round(1000 * times[0], 2) if times else None,
                "step_ms": [round(1000 * t, 2) for t in times],
                "warmup": self.warmup, "steps": self.steps, "losses": losses,
                # CPU time other processes took while this one trained, in cores: the noise
                "other_load_cores": round(max(other, 0.0) / wall, 2) if wall > 0 else None}
