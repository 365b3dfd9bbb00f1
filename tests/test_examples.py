"""The examples run end to end with short settings and deliver what they claim: the CNN learns the
user's new classes with its backbone frozen (and resumes to the bit), the language model gets
better on the user's held-out text; the exported models run in edgetrain and ONNX Runtime."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgetrain import InferenceSession

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cnn():
    return load("transfer_learning_cnn")


@pytest.fixture(scope="module")
def lm():
    return load("finetune_lm")


# --- transfer learning -------------------------------------------------------------------------

def test_cnn_learns_the_new_classes_with_a_frozen_backbone(cnn, tmp_path, capsys):
    s = cnn.main(["--out", str(tmp_path), "--epochs", "15", "--quiet"])
    before, after = s["accuracy_before"], s["accuracy_after"]
    assert before["new_classes"] == 0.0 and before["original_classes"] > 0.95
    assert after["all"] >= before["all"] + 0.2
    assert after["new_classes"] >= 0.85 and after["original_classes"] >= 0.85
    assert s["onnxruntime_agrees"] in (True, None)
    assert len(capsys.readouterr().out.strip().splitlines()) == 1
    # the export: 15 classes, the backbone exactly as shipped
    sess = InferenceSession(s["personalized_model"])
    x = np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32)
    assert sess.run(None, {"input": x})[0].shape == (4, 15)
    shipped = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(
        str(cnn.DATA / "digits_classifier.onnx")).graph.initializer}
    exported = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(
        s["personalized_model"]).graph.initializer}
    for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight",
                 "fc1.bias"):
        np.testing.assert_array_equal(exported[name], shipped[name])
    assert not np.array_equal(exported["fc2.weight"][:10], shipped["fc2.weight"])


def test_cnn_new_label_set_from_the_users_npz(cnn, tmp_path):
    x, y = cnn.held_out_digits()
    np.savez(tmp_path / "even_odd.npz", images=x, labels=y % 2)
    s = cnn.main(["--data", str(tmp_path / "even_odd.npz"), "--head", "new", "--out",
                  str(tmp_path / "out"), "--epochs", "20", "--quiet"])
    assert s["accuracy_after"]["all"] >= s["accuracy_before"]["all"] + 0.15
    assert s["accuracy_after"]["all"] >= 0.7
    (logits,) = InferenceSession(s["personalized_model"]).run(None, {"input": x[:3]})
    assert logits.shape == (3, 2)


def test_cnn_resume_gives_the_uninterrupted_model(cnn, tmp_path):
    common = ["--quiet", "--patience", "100"]
    whole = cnn.main(["--out", str(tmp_path / "a"), "--epochs", "6", *common])
    cnn.main(["--out", str(tmp_path / "b"), "--epochs", "3", *common])
    resumed = cnn.main(["--out", str(tmp_path / "b"), "--epochs", "6", "--resume", *common])
    assert resumed["epochs_run"] == whole["epochs_run"] == 6
    assert resumed["history"] == whole["history"]
    assert (Path(resumed["personalized_model"]).read_bytes()
            == Path(whole["personalized_model"]).read_bytes())


def test_cnn_operators_look_like_the_digits(cnn):
    x, y = cnn.draw_symbols(3, seed=0)
    assert x.shape == (15, 1, 8, 8) and x.dtype == np.float32
    assert list(y) == [k for k in range(10, 15) for _ in range(3)]
    assert 0.0 <= x.min() and x.max() <= 1.0 and np.all(x.reshape(15, -1).max(1) > 0.5)
    assert np.all((x * 16) == np.round(x * 16))   # block counts 0..16, as in digits.npz


# --- language model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lm_run(lm, tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    return out, lm.main(["--out", str(out), "--pretrain-epochs", "3", "--epochs", "5", "--quiet"])


def test_lm_personalization_lowers_the_loss_on_held_out_user_text(lm_run):
    _, s = lm_run
    assert s["heldout_loss_after"] <= s["heldout_loss_before"] - 0.7
    assert s["perplexity_after"] < s["perplexity_before"]
    assert s["sample_after"].startswith(s["prompt"])
    if s["onnxruntime_loss"] is not None:
        assert s["onnxruntime_loss"] == pytest.approx(s["heldout_loss_after"], abs=1e-3)


def test_lm_exports_run_and_keep_the_vocabulary(lm, lm_run):
    out, s = lm_run
    for path in (s["pretrained_model"], s["personalized_model"]):
        vocab, context, inp, outp = lm.describe(path, None)
        assert (vocab, context, inp, outp) == (lm.VOCAB, 48, "tokens", "logits")
        tokens = lm.encode("Checked hive 2: calm".ljust(48), vocab)[None]
        (logits,) = InferenceSession(path).run(None, {"tokens": tokens})
        assert logits.shape == (1, 48, len(vocab)) and np.isfinite(logits).all()


def test_lm_with_the_users_model_and_text(lm, lm_run, tmp_path):
    _, first = lm_run
    notes = tmp_path / "notes.txt"
    notes.write_text("\n".join(f"Standup: reviewed patch {k}, merging after lunch." for k in
                               range(8)) + "\n", encoding="utf-8")
    s = lm.main(["--model", first["pretrained_model"], "--text", str(notes), "--out",
                 str(tmp_path / "out"), "--epochs", "4", "--quiet"])
    assert "pretrain_seconds" not in s
    assert s["prompt"] == "Standup: rev"
    assert s["heldout_loss_after"] < s["heldout_loss_before"]


def test_lm_model_is_causal(lm):
    model = lm.build_char_lm(len(lm.VOCAB), 16, dim=16, heads=2, hidden=32)
    sess = InferenceSession(model)
    a = np.random.default_rng(0).integers(0, len(lm.VOCAB), (1, 16))
    b = a.copy()
    b[0, 10:] = (b[0, 10:] + 1) % len(lm.VOCAB)    # change the future only
    (la,), (lb,) = sess.run(None, {"tokens": a}), sess.run(None, {"tokens": b})
    np.testing.assert_allclose(la[0, :10], lb[0, :10], rtol=1e-5, atol=1e-6)
    assert not np.allclose(la[0, 10:], lb[0, 10:])


def test_lm_rejects_a_model_that_is_not_a_char_lm(lm, cnn):
    with pytest.raises(SystemExit, match="int64"):
        lm.describe(str(cnn.DATA / "digits_classifier.onnx"), None)


def test_lm_windows_pad_with_ignored_labels(lm):
    x, y = lm.windows(np.arange(5), context=8, stride=8, pad_id=0)
    assert x.tolist() == [[0, 1, 2, 3, 0, 0, 0, 0]]
    assert y.tolist() == [[1, 2, 3, 4] + [lm.IGNORE] * 4]
    x, y = lm.windows(np.arange(10), context=4, stride=2, pad_id=0)
    assert x.tolist() == [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 0]]
    assert y.tolist() == [[1, 2, 3, 4], [3, 4, 5, 6], [5, 6, 7, 8], [7, 8, 9, lm.IGNORE]]
