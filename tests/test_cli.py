"""The command line, end to end in-process: each subcommand's output, --json, and bad input
(a non-zero exit and one line naming the problem)."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from edgetrain.cli import main
from training_util import GOLDEN

MLP = str(GOLDEN / "mlp.onnx")
CNN = str(GOLDEN / "cnn.onnx")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *needles):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_run(capsys):
    code, out, _ = run(capsys, "run", MLP, "--batch", 4, "--json")
    assert code == 0 and json.loads(out)


def test_artifacts_list_and_select(capsys, tmp_path):
    code, out, _ = run(capsys, "artifacts", CNN, "--list", "--json")
    assert code == 0 and "fc.weight" in json.loads(out)["parameters"]
    code, out, _ = run(capsys, "artifacts", CNN, "--out", tmp_path, "--trainable", "fc.*",
                       "*3.bias", "--json")
    summary = json.loads(out)
    assert code == 0 and summary["trainable"] == ["bn3.bias", "fc.weight", "fc.bias"]
    assert (tmp_path / "training_model.onnx").exists() and (tmp_path / "checkpoint").exists()
    code, out, _ = run(capsys, "artifacts", CNN, "--out", tmp_path / "last", "--last", 1,
                       "--optimizer", "sgd", "--momentum", 0.9, "--json")
    assert code == 0 and json.loads(out)["trainable"] == ["fc.weight", "fc.bias"]


def test_export_runs_in_onnxruntime(capsys, tmp_path):
    assert run(capsys, "artifacts", MLP, "--out", tmp_path)[0] == 0
    code, out, _ = run(capsys, "export", tmp_path, "--out", tmp_path / "m.onnx", "--json")
    assert code == 0 and json.loads(out)["model"].endswith("m.onnx")
    x = np.random.default_rng(0).standard_normal((3, 20)).astype(np.float32)
    assert ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x})[0].shape == (3, 5)


@pytest.mark.parametrize("argv,needles", [
    (["artifacts", "missing.onnx", "--out", "x"], ["missing.onnx", "does not exist"]),
    (["artifacts", MLP, "--out", "{tmp}", "--trainable", "fc9.*"], ["fc9.*", "matches no"]),
    (["artifacts", MLP, "--out", "{tmp}", "--frozen", "fc1.weigth"], ["fc1.weigth"]),
    (["artifacts", MLP, "--out", "{tmp}", "--last", "7"], ["3 layers"]),
    (["artifacts", MLP], ["--out"]),
    (["artifacts", MLP, "--out", "{tmp}", "--optimizer", "adamw", "--momentum", "0.9"],
     ["--momentum"]),
    (["export", "{tmp}", "--out", "{tmp}/m.onnx"], ["checkpoint"]),
    (["run", "missing.onnx"], ["missing.onnx"]),
    (["plan", "missing.onnx"], ["missing.onnx"]),
    (["plan", MLP, "--dim", "seq:4"], ["NAME=SIZE"]),
    (["plan", MLP, "--trainable", "fc9.*"], ["fc9.*", "matches no"]),
    (["plan", "{tmp}"], ["training_model.onnx"]),
    (["bench", "missing.onnx"], ["missing.onnx"]),
    (["bench", MLP, "--steps", "0"], ["--steps"]),
    (["bench", MLP, "--last", "1", "--trainable", "fc1.*"], ["--trainable or --last"]),
])
def test_bad_input_one_line(capsys, tmp_path, argv, needles):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, _, err = run(capsys, *argv)
    one_line_error(code, err, *needles)


def test_plan_report_json_and_artifacts_folder(capsys, tmp_path):
    code, out, _ = run(capsys, "plan", CNN, "--batch", 8)
    assert code == 0 and "arena:" in out and "lower bound:" in out and "parameters:" in out
    code, out, _ = run(capsys, "plan", CNN, "--batch", 8, "--json")
    full = json.loads(out)
    assert full["arena_bytes"] >= full["lower_bound_bytes"] > 0 and full["largest"]
    code, out, _ = run(capsys, "plan", CNN, "--batch", 8, "--json", "--last", 1)
    assert json.loads(out)["arena_bytes"] < full["arena_bytes"]  # a frozen backbone keeps less
    code, out, _ = run(capsys, "plan", CNN, "--batch", 8, "--json", "--no-recompute")
    assert json.loads(out)["arena_bytes"] > full["arena_bytes"]
    assert run(capsys, "artifacts", MLP, "--out", tmp_path)[0] == 0
    code, out, _ = run(capsys, "plan", tmp_path, "--batch", 4, "--eval", "--json")
    assert code == 0 and json.loads(out)["recomputed"] == 0
    from onnx import TensorProto, helper, numpy_helper, save
    g = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T"])],
                          [numpy_helper.from_array(np.ones(1, np.float32), "w")])
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "t.onnx")
    code, _, err = run(capsys, "plan", tmp_path / "t.onnx", "--loss", "mse")
    one_line_error(code, err, "'T'", "--dim T=SIZE")
    code, out, _ = run(capsys, "plan", tmp_path / "t.onnx", "--loss", "mse", "--dim", "T=5",
                       "--json")
    assert code == 0 and json.loads(out)["arena_bytes"] > 0


def test_plan_memory_budget_says_what_it_would_do(capsys):
    code, out, _ = run(capsys, "plan", CNN, "--batch", 8, "--memory-budget", 100)
    assert code == 0 and out.startswith("memory budget 100 MiB: fits as it is")
    code, out, _ = run(capsys, "plan", CNN, "--batch", 8, "--json")
    full = json.loads(out)
    code, out, _ = run(capsys, "plan", CNN, "--batch", 8, "--memory-budget", 0.1, "--json")
    got = json.loads(out)
    assert code == 0 and "micro-batches of" in got["budget"]
    assert got["arena_bytes"] < full["arena_bytes"]
    code, _, err = run(capsys, "plan", CNN, "--batch", 8, "--memory-budget", 0.01)
    one_line_error(code, err, "budget of 0.0 MiB", "the least it can reach")


def test_plan_plot(capsys, tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        code, _, err = run(capsys, "plan", MLP, "--plot", tmp_path / "m.png")
        one_line_error(code, err, "matplotlib")
        return
    code, out, _ = run(capsys, "plan", MLP, "--batch", 4, "--plot", tmp_path / "m.png")
    assert code == 0 and (tmp_path / "m.png").stat().st_size > 1000


def test_bench_measures_training_in_its_own_process(capsys, tmp_path):
    code, out, _ = run(capsys, "bench", MLP, "--batch", 4, "--steps", 3, "--json")
    m = json.loads(out)
    assert code == 0 and len(m["losses"]) == 4 and np.isfinite(m["losses"]).all()
    assert 0 < m["min_step_ms"] <= m["median_step_ms"] and m["samples_per_s"] > 0
    assert m["peak_rss_mb"] >= m["rss_loaded_mb"] > 0 and m["plan"]["arena_bytes"] > 0
    code, out, _ = run(capsys, "bench", CNN, "--batch", 2, "--steps", 1, "--last", 1)
    assert code == 0 and "samples/s" in out and "peak resident" in out and "arena" in out
    code, out, _ = run(capsys, "bench", MLP, "--batch", 8, "--steps", 1, "--micro-batch", 2)
    assert code == 0 and "micro-batches of 2" in out
    assert run(capsys, "artifacts", MLP, "--out", tmp_path, "--json")[0] == 0
    (tmp_path / "optimizer_model.onnx").unlink()
    code, _, err = run(capsys, "bench", tmp_path)
    one_line_error(code, err, "optimizer_model.onnx")


def test_bench_batches_respect_class_count_and_vocabulary(tmp_path):
    from onnx import TensorProto, helper, numpy_helper, save

    from edgetrain.cli.bench import make_batches
    from edgetrain.cli.plan import load_module
    emb = numpy_helper.from_array(np.ones((7, 3), np.float32), "emb")
    g = helper.make_graph([helper.make_node("Gather", ["emb", "ids"], ["h"]),
                           helper.make_node("ReduceMean", ["h"], ["logits"], axes=[1],
                                            keepdims=0)], "lm",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                          [emb])
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "lm.onnx")
    from edgetrain import artifacts as A
    A.generate_artifacts(str(tmp_path / "lm.onnx"), loss=A.CrossEntropyLoss(),
                         optimizer=A.AdamW(), artifact_directory=tmp_path / "art")
    batches = make_batches(load_module(str(tmp_path / "art")), 64, {}, 0)
    ids, labels = batches.values()
    assert ids.shape == (4, 64, 5) and ids.max() == 6 and ids.min() == 0
    assert labels.shape == (4, 64) and labels.max() == 2


def test_train_memory_budget_refuses_with_the_least_it_needs(capsys, tmp_path):
    assert run(capsys, "artifacts", MLP, "--out", tmp_path / "art")[0] == 0
    _data(tmp_path / "d.npz")
    code, _, err = run(capsys, "train", tmp_path / "art", tmp_path / "d.npz", "--batch-size", 8,
                       "--memory-budget", 0.01, "--quiet")
    one_line_error(code, err, "budget of 0.0 MiB", "the least it can reach")
    code, out, _ = run(capsys, "train", tmp_path / "art", tmp_path / "d.npz", "--batch-size", 8,
                       "--memory-budget", 100, "--json")
    assert code == 0 and json.loads(out)["history"]


def _data(path, width=20, n=40):
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.standard_normal((n, width)).astype(np.float32),
             labels=rng.integers(0, 5, n))
    return path


def test_train_resume_and_eval(capsys, tmp_path):
    art, data = tmp_path / "art", _data(tmp_path / "d.npz")
    assert run(capsys, "artifacts", MLP, "--out", art, "--optimizer", "sgd", "--lr", 0.1)[0] == 0
    code, out, _ = run(capsys, "train", art, data, "--epochs", 2, "--batch-size", 8, "--json",
                       "--checkpoint-dir", tmp_path / "a")
    first = json.loads(out)
    assert code == 0 and first["checkpoint"].endswith("ckpt-00000010")
    code, out, _ = run(capsys, "train", art, data, "--epochs", 4, "--batch-size", 8, "--json",
                       "--checkpoint-dir", tmp_path / "a", "--resume")
    resumed = json.loads(out)
    code, out, _ = run(capsys, "train", art, data, "--epochs", 4, "--batch-size", 8, "--json",
                       "--checkpoint-dir", tmp_path / "b")
    straight = json.loads(out)
    assert resumed["history"]["loss"] == straight["history"]["loss"]
    code, out, _ = run(capsys, "eval", art, data, "--checkpoint", straight["checkpoint"], "--json")
    metrics = json.loads(out)
    assert code == 0 and set(metrics) >= {"loss", "accuracy"}


@pytest.mark.parametrize("which,needles", [
    ("bad-width", ["input 'x'", "[40, 21]"]),
    ("missing", ["does not exist"]),
])
def test_train_bad_data(capsys, tmp_path, which, needles):
    art = tmp_path / "art"
    assert run(capsys, "artifacts", MLP, "--out", art)[0] == 0
    data = _data(tmp_path / "d.npz", width=21) if which == "bad-width" else tmp_path / "no.npz"
    code, _, err = run(capsys, "train", art, data)
    one_line_error(code, err, *needles)
