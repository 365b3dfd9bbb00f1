"""The measurements every engine's worker shares: src/edgetrain/measure.py, loaded by path so
that the engines whose environment has no edgetrain (ONNX Runtime's venv) use the same code."""
from __future__ import annotations

import importlib.util
import os

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "src", "edgetrain", "measure.py")
_spec = importlib.util.spec_from_file_location("_edgetrain_measure", _PATH)
_measure = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_measure)

MB = _measure.MB
StepTimer = _measure.StepTimer
numpy_blas = _measure.numpy_blas
peak_rss_mb = _measure.peak_rss_mb
proc_status_kb = _measure.proc_status_kb
rss_mb = _measure.rss_mb
