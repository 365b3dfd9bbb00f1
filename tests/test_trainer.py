"""The Trainer: data forms, seeded batching, metrics, callbacks, checkpoints, and resuming after an
interruption (or a SIGKILL) to the bit."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import edgetrain
from edgetrain import InputError, artifacts as A
from edgetrain.api import (Callback, CheckpointState, EarlyStopping, LinearLRScheduler, Module,
                           Optimizer, Trainer, TrainerError)
from edgetrain.training.data import batch_indices, epoch_order
from training_util import GOLDEN

RNG = np.random.default_rng(0)
X = RNG.standard_normal((96, 20)).astype(np.float32)
Y = (X @ RNG.standard_normal((20, 5))).argmax(1).astype(np.int64)
QUIET = dict(quiet=True, progress=False)


def dropout_mlp():
    from onnx import TensorProto, helper, numpy_helper
    r = np.random.default_rng(1)
    inits = [numpy_helper.from_array((r.standard_normal(s) * 0.3).astype(np.float32), n)
             for n, s in (("w1", (20, 16)), ("b1", (16,)), ("w2", (16, 5)))]
    inits.append(numpy_helper.from_array(np.asarray(0.3, np.float32), "ratio"))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"],
             ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Dropout", ["r", "ratio"], ["d"]),
             helper.make_node("MatMul", ["d", "w2"], ["logits"])]
    g = helper.make_graph(nodes, "drop", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 20])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["N", 5])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def artifacts(folder, model=None, optimizer=None, **kw):
    A.generate_artifacts(model or str(GOLDEN / "mlp.onnx"), loss=A.CrossEntropyLoss(),
                         optimizer=optimizer or A.AdamW(lr=0.01), artifact_directory=folder, **kw)
    return folder


def params(trainer):
    state = trainer.module._state
    return {k: np.array(state.parameters[k].data) for k in state.parameters}


def same_bits(a, b):
    return a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


class StopAfter(Callback):
    """Simulates a crash: raises after ``n`` steps in this process."""

    def __init__(self, n):
        self.n = n

    def on_batch_end(self, trainer, batch, logs):
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt("simulated crash")


class Sizes(Callback):
    def __init__(self):
        self.seen = []

    def on_batch_end(self, trainer, batch, logs):
        self.seen.append((logs["batch_size"], logs["samples"]))


# --- data forms, metrics ---------------------------------------------------------------------

def test_fit_and_evaluate_on_arrays_dict_npz_and_batches(tmp_path):
    art = artifacts(tmp_path / "art")
    np.savez(tmp_path / "named.npz", x=X, labels=Y)
    batches = [(X[i:i + 16], Y[i:i + 16]) for i in range(0, 96, 16)]
    forms = {"arrays": (X, Y), "dict": {"x": X, "labels": Y}, "npz": tmp_path / "named.npz",
             "list of batches": batches,
             "dict batches": [{"x": x, "labels": y} for x, y in batches]}
    results = {}
    for name, data in forms.items():
        t = Trainer(art, batch_size=16, shuffle=False, **QUIET)
        before = t.evaluate((X, Y))
        history = t.fit(data, epochs=3)
        assert len(history["loss"]) == 3 and history["loss"][-1] < history["loss"][0], name
        results[name] = params(t)
    first = results.pop("arrays")
    assert all(same_bits(first, p) for p in results.values())  # the same batches in each form
    after = t.evaluate(str(tmp_path / "named.npz"))
    assert after["accuracy"] > before["accuracy"] and after["loss"] < before["loss"]
    t.module.eval()
    np.testing.assert_allclose(after["loss"], float(t.module(X, Y)), rtol=1e-5)
    np.savez(tmp_path / "xy.npz", x=X, y=Y)  # x/y keys are the inputs in order
    assert Trainer(art, **QUIET).evaluate(tmp_path / "xy.npz") == \
        Trainer(art, **QUIET).evaluate({"x": X, "labels": Y})


def test_module_optimizer_pair_schedule_and_training_accuracy(tmp_path):
    paths = A.generate_artifacts(str(GOLDEN / "mlp.onnx"), loss=A.CrossEntropyLoss(),
                                 optimizer=A.SGD(lr=0.1), artifact_directory=tmp_path,
                                 additional_output_names=["logits"])
    state = CheckpointState.load_checkpoint(paths["checkpoint"])
    module = Module(paths["training_model"], state, paths["eval_model"])
    opt = Optimizer(paths["optimizer_model"], module)
    sched = LinearLRScheduler(opt, 2, 6, 0.1)
    t = Trainer((module, opt), batch_size=32, scheduler=sched, **QUIET)
    h = t.fit((X, Y.astype(np.int32)), epochs=2, validation_data=(X, Y))  # int32 labels: cast
    assert opt.step_count == 6 and opt.get_learning_rate() == 0.0
    assert h["lr"] == [pytest.approx(0.075), 0.0]  # 0.1 * (6 - 3) / (6 - 2), then 0
    assert set(h) == {"loss", "accuracy", "lr", "val_loss", "val_accuracy"}
    assert 0 <= h["accuracy"][0] <= 1


# --- batching --------------------------------------------------------------------------------

def test_shuffling_is_seeded(tmp_path):
    a, b = epoch_order(50, 3, seed=1), epoch_order(50, 3, seed=1)
    assert np.array_equal(a, b) and sorted(a) == list(range(50))
    assert not np.array_equal(a, epoch_order(50, 4, seed=1))
    assert not np.array_equal(a, epoch_order(50, 3, seed=2))
    assert np.array_equal(epoch_order(50, 3, shuffle=False), np.arange(50))
    art = artifacts(tmp_path / "art")
    runs = [Trainer(art, seed=s, batch_size=16, **QUIET) for s in (5, 5, 6)]
    for t in runs:
        t.fit((X, Y), epochs=2)
    assert same_bits(params(runs[0]), params(runs[1]))
    assert not same_bits(params(runs[0]), params(runs[2]))


@pytest.mark.parametrize("last,want", [
    ("drop", [(16, 16)] * 3), ("keep", [(16, 16)] * 3 + [(2, 2)]),
    ("pad", [(16, 16)] * 3 + [(16, 2)])])
def test_last_partial_batch(tmp_path, last, want):
    sizes = Sizes()
    Trainer(artifacts(tmp_path), batch_size=16, last_batch=last, callbacks=[sizes],
            **QUIET).fit((X[:50], Y[:50]))
    assert sizes.seen == want
    batches = batch_indices(50, 16, epoch=0, seed=0, last_batch=last)
    if last == "pad":  # filled with the epoch's first samples again
        order = epoch_order(50, 0, seed=0)
        assert np.array_equal(batches[-1][0], np.concatenate([order[48:], order[:14]]))


# --- callbacks -------------------------------------------------------------------------------

def test_early_stopping_stops(tmp_path, capsys):
    art = artifacts(tmp_path, optimizer=A.SGD(lr=0.0))  # nothing improves
    stop = EarlyStopping("val_loss", patience=2, min_delta=1e-3)
    h = Trainer(art, batch_size=32, callbacks=[stop], progress=False).fit(
        (X, Y), epochs=20, validation_data=(X, Y))
    assert len(h["val_loss"]) == 3 and stop.stopped_epoch == 2
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("epoch 1/20: loss ")
    h = Trainer(artifacts(tmp_path / "b"), batch_size=32, progress=True, quiet=True,
                callbacks=[EarlyStopping("val_loss", patience=2)]).fit(
        (X, Y), epochs=4, validation_data=(X, Y))
    assert len(h["loss"]) == 4 and capsys.readouterr().out == ""  # it learns: no stop


# --- checkpoints and resuming ----------------------------------------------------------------

def test_checkpoint_every_n_steps_keeps_the_last_k(tmp_path):
    ck = tmp_path / "ck"
    t = Trainer(artifacts(tmp_path / "art"), checkpoint_dir=ck, checkpoint_every=5, keep_last=2,
                batch_size=24, **QUIET)   # 4 steps an epoch
    t.fit((X, Y), epochs=3)
    assert sorted(os.listdir(ck)) == ["ckpt-00000010", "ckpt-00000012"]
    last = CheckpointState.load_checkpoint(ck / "ckpt-00000012")
    assert (last.properties["trainer.epoch"], last.properties["trainer.batch"]) == (3, 0)
    assert last.optimizer["step"] == 12 and last.train_step == 12
    assert all(same_bits({k: last.parameters[k].data}, {k: v}) for k, v in params(t).items())
    with pytest.raises(TrainerError, match="resume=True"):  # a new run would mix with it
        Trainer(tmp_path / "art", checkpoint_dir=ck, **QUIET).fit((X, Y))
    # resuming a finished run does nothing more; asking for more epochs goes on
    t2 = Trainer(tmp_path / "art", checkpoint_dir=ck, checkpoint_every=5, keep_last=2,
                 batch_size=24, **QUIET)
    assert t2.fit((X, Y), epochs=3, resume=True) == t.history
    assert same_bits(params(t2), params(t))
    assert len(t2.fit((X, Y), epochs=4, resume=True)["loss"]) == 4


def run_dropout(tmp_path, name, steps_before_crash=(), corrupt_newest=False):
    """Train the dropout MLP (AdamW, linear schedule, validation, early stopping) 4 epochs of 7
    steps, crashing after each count of ``steps_before_crash`` and resuming."""
    art = tmp_path / "art"
    if not art.exists():
        artifacts(art, dropout_mlp(), A.AdamW(lr=0.02, weight_decay=0.01), seed=3)

    def trainer(*extra):
        return Trainer(art, checkpoint_dir=tmp_path / name, checkpoint_every=3, keep_last=2,
                       seed=11, batch_size=14, last_batch="keep",
                       scheduler=lambda o: LinearLRScheduler(o, 3, 28, 0.02),
                       callbacks=[EarlyStopping("val_loss", patience=50), *extra], **QUIET)
    for n in steps_before_crash:
        with pytest.raises(KeyboardInterrupt):
            trainer(StopAfter(n)).fit((X, Y), epochs=4, resume=True, validation_data=(X, Y))
    if corrupt_newest:
        newest = trainer().checkpoints()[-1][1]
        Path(newest).write_bytes(Path(newest).read_bytes()[:1000])
        with pytest.warns(UserWarning, match="skipping checkpoint"):
            t = trainer()
            h = t.fit((X, Y), epochs=4, resume=True, validation_data=(X, Y))
        assert os.path.exists(newest + ".corrupt")
    else:
        t = trainer()
        h = t.fit((X, Y), epochs=4, resume=True, validation_data=(X, Y))
    return params(t), h, t


def test_resume_after_interruptions_is_bit_identical(tmp_path, monkeypatch):
    ref, h_ref, t_ref = run_dropout(tmp_path, "ref")
    assert t_ref.optimizer.step_count == 28 and t_ref.module._state.train_step == 28
    # crashes between checkpoints (twice from the same one), and right after the checkpoint
    # that ends epoch 3 (step 21: the epoch's end, validation and early stopping are redone)
    got, h, t = run_dropout(tmp_path, "crashy", steps_before_crash=(8, 2, 13, 4))
    assert same_bits(got, ref) and h == h_ref
    assert t.resumed_from.endswith("ckpt-00000021")
    for moment, per in t_ref.optimizer._st["moments"].items():
        assert same_bits(per, t.optimizer._st["moments"][moment])
    # the module's step in the checkpoint is what keeps the dropout masks: without it, no match
    load = CheckpointState.load_checkpoint

    def without_step(path):
        state = load(path)
        state.train_step = 0
        return state
    monkeypatch.setattr(CheckpointState, "load_checkpoint", without_step)
    other, _, _ = run_dropout(tmp_path, "no-step", steps_before_crash=(13,))
    assert not same_bits(other, ref)


def test_corrupt_newest_checkpoint_is_skipped(tmp_path):
    ref, h_ref, _ = run_dropout(tmp_path, "ref")
    got, h, t = run_dropout(tmp_path, "bad", steps_before_crash=(17,), corrupt_newest=True)
    assert same_bits(got, ref) and h == h_ref
    assert t.resumed_from.endswith("ckpt-00000012")  # 15 was cut short


def test_resume_with_other_settings_is_refused(tmp_path):
    ck = tmp_path / "ck"
    Trainer(artifacts(tmp_path / "art"), checkpoint_dir=ck, seed=1, **QUIET).fit((X, Y))
    with pytest.raises(TrainerError, match="seed=1.*seed=2"):
        Trainer(tmp_path / "art", checkpoint_dir=ck, seed=2, **QUIET).fit((X, Y), resume=True)
    with pytest.raises(TrainerError, match="checkpoint_dir"):
        Trainer(tmp_path / "art", **QUIET).fit((X, Y), resume=True)


def test_sigkill_and_resume_is_bit_identical(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "kill_test", Path(__file__).parent.parent / "tools" / "kill_test.py")
    kill_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kill_test)
    r = kill_test.run(kills=3, epochs=6, work=tmp_path, hidden=64, samples=300, spread=0.5,
                      say=lambda s: None)
    assert r["kills"] == 3 and r["damaged_checkpoints"] == 0 and r["differences"] == []
    assert r["pass"]


# --- bad data --------------------------------------------------------------------------------

@pytest.mark.parametrize("data,match", [
    ({"x": X, "lables": Y}, r"unknown input 'lables'.*did you mean 'labels'"),
    ({"x": X}, r"missing input\(s\) 'labels'"),
    ((X, Y.reshape(-1, 1)), r"input 'labels' has shape \[96, 1\], expected int64\[N\]"),
    ((X[:, :10], Y), r"input 'x' has shape \[96, 10\], expected float32\[N, 20\]"),
    ((X, Y.astype(np.float32)), r"input 'labels' has dtype float32, expected int64"),
    ((X, Y[:90]), r"different numbers of samples: 'x' 96, 'labels' 90"),
    ((X,), r"1 arrays given; the model takes 2: x, labels"),
    ([(X[:8], Y[:8]), (X[:8], Y[:8, None])], r"batch 1 of the data: input 'labels' has shape"),
    (42, r"expected \(x, y\) arrays"),
])
def test_bad_data_names_the_input(tmp_path, data, match):
    t = Trainer(artifacts(tmp_path), batch_size=8, **QUIET)
    before = params(t)
    with pytest.raises(InputError, match=match):
        t.fit(data, epochs=1)
    if not isinstance(data, list):
        assert same_bits(before, params(t))  # checked before any step
    np.savez(tmp_path / "other.npz", images=X, y=Y)
    with pytest.raises(InputError, match=r"other.npz.*unknown input 'images'"):
        t.evaluate(tmp_path / "other.npz")


def test_one_shot_iterator_and_exports(tmp_path):
    t = Trainer(artifacts(tmp_path), batch_size=8, **QUIET)
    with pytest.raises(TrainerError, match="read once"):
        t.fit(((X[i:i + 8], Y[i:i + 8]) for i in range(0, 96, 8)), epochs=2)
    t.fit(((X[i:i + 8], Y[i:i + 8]) for i in range(0, 96, 8)), epochs=1)
    assert t.optimizer.step_count == 12
    assert edgetrain.Trainer is Trainer
    with pytest.raises(TrainerError, match="last_batch"):
        Trainer(tmp_path, last_batch="fill")
