"""``edgetrain demo`` end to end: personalization helps by at least 15 points on the user's
held-out digits, the exported model exists, and ONNX Runtime reproduces edgetrain's accuracy."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from edgetrain import InferenceSession
from edgetrain.cli import demo, main


@pytest.fixture(scope="module")
def run_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run([sys.executable, "-m", "edgetrain", "demo", "--json", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_json_output_parses(run_json):
    _, stdout = run_json
    assert len(stdout.strip().splitlines()) == 1
    summary = json.loads(stdout)
    for key in ("accuracy_before", "accuracy_after", "improvement_points", "seconds",
                "peak_memory_mib", "personalized_model", "onnxruntime_accuracy", "seed"):
        assert key in summary
    assert summary["seed"] == 0 and summary["train_samples"] == 50


def test_personalization_improves_and_export_reproduces(run_json):
    out, stdout = run_json
    summary = json.loads(stdout)
    assert summary["accuracy_after"] - summary["accuracy_before"] >= 0.15
    path = out / "personalized.onnx"
    assert summary["personalized_model"] == str(path.resolve()) and path.is_file()
    assert (out / "artifacts" / "checkpoint").is_file()
    # the same held-out samples, in edgetrain and in ONNX Runtime
    images, labels = demo.load_digits()
    user = demo.split(len(labels))[2]
    x, y = demo.user_style(images[user]), labels[user]
    _, test = demo.calibration(y, 0)
    ours = InferenceSession(str(path)).run(None, {"input": x[test]})[0]
    theirs = ort.InferenceSession(str(path)).run(None, {"input": x[test]})[0]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    acc = float((ours.argmax(1) == y[test]).mean())
    assert acc == pytest.approx(summary["accuracy_after"], abs=1e-4)
    assert summary["onnxruntime_accuracy"] == summary["accuracy_after"]


def test_friendly_and_quiet_output(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "a"), "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "Personalized model:" in text and "Alpaydin" in text and "CC BY 4.0" in text
    assert len(text.splitlines()) <= 10
    assert main(["demo", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1


def test_help_credits_the_data(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    assert "Alpaydin" in capsys.readouterr().out


def test_unusable_out_folder_is_one_line_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["demo", "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "output folder" in err[0]


def test_user_style_is_deterministic_and_no_style_is_identity():
    images, _ = demo.load_digits()
    x = images[:20]
    np.testing.assert_array_equal(demo.user_style(x, 0.0, 0.0), x)
    a, b = demo.user_style(x), demo.user_style(x)
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert not np.allclose(a, x)
    assert os.path.getsize(demo.MODEL) < 200_000
