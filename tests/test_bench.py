"""The benchmark harness's edgetrain side (bench/): a tiny MLP built with onnx.helper trains two
steps through run_job and through the worker process, and the report renders. No torch, no
onnxruntime-training, nothing outside the repository."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import data, report  # noqa: E402
from bench.engines.edgetrain_engine import run_job  # noqa: E402
from bench.worker import PREFIX  # noqa: E402

FIELDS = {"engine", "median_step_ms", "min_step_ms", "first_step_ms", "step_ms", "losses",
          "rss_loaded_mb", "peak_rss_mb", "train_mb", "import_s", "load_s", "threads",
          "other_load_cores"}
JOB = dict(model="tiny", input=[6], dtype="float32", batch=4, trainable="all", classes=3)


def tiny_mlp(path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.3, n)
             for n, s in (("w1", (8, 6)), ("b1", (8,)), ("w2", (3, 8)), ("b2", (3,)))]
    nodes = [helper.make_node("Gemm", ["input", "w1", "b1"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["output"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(
        "input", TensorProto.FLOAT, ["N", 6])], [helper.make_tensor_value_info(
            "output", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)


def test_run_job_two_steps(tmp_path):
    tiny_mlp(tmp_path / "model.onnx")
    batches = data.make_batches(JOB, 3)
    r = run_job(str(tmp_path / "model.onnx"), ["w2", "b2"], (batches["x"], batches["y"]), 2,
                warmup=1, artifact_dir=str(tmp_path / "art"))
    assert FIELDS <= set(r)
    assert len(r["losses"]) == 3 and len(r["step_ms"]) == 3
    assert all(np.isfinite(r["losses"])) and r["losses"][0] > 0
    assert r["peak_rss_mb"] >= r["rss_loaded_mb"] > 0


def test_worker_process_and_report(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    tiny_mlp(model_dir / "model.onnx")
    spec = dict(JOB, job="tiny", onnx="model.onnx", trainable_onnx=["w1", "b1", "w2", "b2"],
                trainable_torch=[], n_params=83, n_trainable=83, batchnorm_nodes=0)
    (model_dir / "spec.json").write_text(json.dumps(spec))
    data.save(str(tmp_path / "b.npz"), data.make_batches(JOB, 3))
    common = [sys.executable, os.path.join(ROOT, "bench", "worker.py"), "--engine", "edgetrain",
              "--model-dir", str(model_dir), "--artifacts", str(tmp_path / "art")]
    results = {}
    for phase in ("prepare", "run"):
        out = subprocess.run([*common, "--phase", phase, "--data", str(tmp_path / "b.npz"),
                              "--steps", "2", "--warmup", "1"], capture_output=True, text=True,
                             timeout=60).stdout
        line = [ln for ln in out.splitlines() if ln.startswith(PREFIX)][-1]
        results[phase] = json.loads(line[len(PREFIX):])
        assert "error" not in results[phase], results[phase]
    run = results["run"]
    assert FIELDS <= set(run) and len(run["losses"]) == 3
    md = report.markdown({"command": "bench/run.py", "machine": {
        "cpu": "test", "cores": 2, "affinity": 2, "ram_gib": 1, "kernel": "x", "date": "today"},
        "jobs": [{"job": "tiny", "spec": spec, "steps": 2, "warmup": 1,
                  "engines": {"edgetrain": run, "ort": {"error": "no gradient for X"}}}]})
    assert "| tiny | edgetrain |" in md and "**not run**: no gradient for X" in md
