"""The on-device API: gradient accumulation, which parameters an optimizer step touches,
checkpoint round trips, nominal checkpoints, export, and bad input that changes nothing."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edgetrain import InputError, artifacts as A
from edgetrain.api import (CheckpointError, CheckpointState, LinearLRScheduler, Module, Optimizer,
                           OptimizerError, resume_scheduler)
from training_util import GOLDEN

MLP = str(GOLDEN / "mlp.onnx")
CNN = str(GOLDEN / "cnn.onnx")
RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 20)).astype(np.float32)
Y = RNG.integers(0, 5, 8)
XC = RNG.standard_normal((4, 3, 12, 12)).astype(np.float32)
YC = RNG.integers(0, 4, 4)


def setup(tmp_path, model=MLP, optimizer=A.SGD(lr=0.1, momentum=0.9), **kw):
    paths = A.generate_artifacts(model, loss=A.CrossEntropyLoss(), optimizer=optimizer,
                                 artifact_directory=tmp_path, **kw)
    state = CheckpointState.load_checkpoint(paths["checkpoint"])
    module = Module(paths["training_model"], state, paths["eval_model"])
    return paths, state, module, Optimizer(paths["optimizer_model"], module)


def snapshot(state):
    return {k: np.array(state.parameters[k].data) for k in state.parameters}


def test_lazy_reset_grad_accumulates_until_reset(tmp_path):
    _, state, module, _ = setup(tmp_path)
    module(X, Y)
    one = {k: np.array(state.parameters[k].grad) for k in state.parameters}
    for k in (2, 3):
        module(X, Y)
        for name, g in one.items():
            np.testing.assert_allclose(state.parameters[name].grad, k * g, rtol=1e-6, atol=1e-7)
    module.lazy_reset_grad()
    module(X, Y)
    for name, g in one.items():
        np.testing.assert_array_equal(state.parameters[name].grad, g)


def test_optimizer_step_changes_trainable_parameters_only(tmp_path):
    _, state, module, opt = setup(tmp_path, CNN, requires_grad=["fc.weight", "fc.bias",
                                                                 "conv3.weight"])
    before = snapshot(state)
    module(XC, YC)
    opt.step()
    after = snapshot(state)
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias", "conv3.weight"}
    assert not state.parameters["bn1.running_mean"].requires_grad


def test_batchnorm_train_mode_updates_running_statistics_and_eval_does_not(tmp_path):
    _, state, module, _ = setup(tmp_path, CNN, batchnorm="train")
    mean = np.array(state.parameters["bn1.running_mean"].data)
    module(XC, YC)
    new = np.array(state.parameters["bn1.running_mean"].data)
    assert not np.array_equal(mean, new)
    module.eval()
    module(XC, YC)
    np.testing.assert_array_equal(state.parameters["bn1.running_mean"].data, new)


def test_dropout_is_seeded_reproducible_and_off_in_eval(tmp_path):
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(RNG.standard_normal((20, 5)).astype(np.float32), "w")
    ratio = numpy_helper.from_array(np.asarray(0.5, np.float32), "ratio")
    nodes = [helper.make_node("Dropout", ["x", "ratio"], ["d"]),
             helper.make_node("MatMul", ["d", "w"], ["logits"])]
    g = helper.make_graph(nodes, "drop", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         ["N", 20])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])],
                          [w, ratio])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    def losses(folder, seed):
        _, state, module, _ = setup(folder, model, seed=seed)
        train = [float(module(X, Y)) for _ in range(3)]
        module.eval()
        return train, float(module(X, Y)), float(module(X, Y))

    a, b, c = losses(tmp_path / "a", 1), losses(tmp_path / "b", 1), losses(tmp_path / "c", 2)
    assert a == b                      # same seed, same masks
    assert a[0] != c[0]                # another seed, other masks
    assert len(set(a[0])) == 3         # a new mask each step
    assert a[1] == a[2]                # eval: no dropout


def test_checkpoint_round_trip_restores_everything(tmp_path):
    _, state, module, opt = setup(tmp_path, optimizer=A.TorchAdamW(lr=0.01))
    sched = LinearLRScheduler(opt, warmup_step_count=2, total_step_count=10, initial_lr=0.01)
    for _ in range(3):
        module(X, Y)
        opt.step()
        sched.scheduler_step()
        module.lazy_reset_grad()
    state.properties.update(epoch=3, best=0.125, tag="user-7")
    path = tmp_path / "ckpt"
    CheckpointState.save_checkpoint(state, path, include_optimizer_state=True)
    loaded = CheckpointState.load_checkpoint(path)
    for k in state.parameters:
        np.testing.assert_array_equal(loaded.parameters[k].data, state.parameters[k].data)
        assert loaded.parameters[k].requires_grad == state.parameters[k].requires_grad
    assert dict(loaded.properties) == {"epoch": 3, "best": 0.125, "tag": "user-7"}
    assert [type(loaded.properties[k]) for k in ("epoch", "best", "tag")] == [int, float, str]
    assert loaded.optimizer["step"] == 3 and loaded.optimizer["lr"] == opt.get_learning_rate()
    assert loaded.optimizer["schedule"]["type"] == "LinearLRScheduler"
    for moment, per in state.optimizer["moments"].items():
        for k, a in per.items():
            np.testing.assert_array_equal(loaded.optimizer["moments"][moment][k], a)
    # resuming continues exactly where the uninterrupted run goes
    m2 = Module(tmp_path / "training_model.onnx", loaded, tmp_path / "eval_model.onnx")
    o2 = Optimizer(tmp_path / "optimizer_model.onnx", m2)
    s2 = resume_scheduler(o2)
    assert isinstance(s2, LinearLRScheduler) and o2.get_learning_rate() == opt.get_learning_rate()
    for mod, o, s in ((module, opt, sched), (m2, o2, s2)):
        mod(X, Y)
        o.step()
        s.scheduler_step()
    for k in state.parameters:
        np.testing.assert_array_equal(loaded.parameters[k].data, state.parameters[k].data)
    # without optimizer state
    CheckpointState.save_checkpoint(state, path)
    assert CheckpointState.load_checkpoint(path).optimizer is None


def test_nominal_checkpoint_refuses_to_train_until_loaded(tmp_path):
    paths, full, _, _ = setup(tmp_path, nominal_checkpoint=True)
    nominal = CheckpointState.load_checkpoint(paths["nominal_checkpoint"])
    assert nominal.nominal and list(nominal.parameters) == list(full.parameters)
    module = Module(paths["training_model"], nominal, paths["eval_model"])
    with pytest.raises(CheckpointError, match="nominal"):
        module(X, Y)
    ref = Module(paths["training_model"], full, paths["eval_model"])
    module.copy_buffer_to_parameters(ref.get_contiguous_parameters(), trainable_only=False)
    np.testing.assert_array_equal(module(X, Y), ref(X, Y))


def test_contiguous_parameters_round_trip(tmp_path):
    _, state, module, _ = setup(tmp_path)
    flat = module.get_contiguous_parameters(trainable_only=True)
    assert flat.size == module.get_parameters_size(trainable_only=True) == 20 * 32 + 32 + 32 * 32 \
        + 32 + 32 * 5 + 5
    module.copy_buffer_to_parameters(flat * 2)
    np.testing.assert_array_equal(module.get_contiguous_parameters(True), flat * 2)
    before = snapshot(state)
    with pytest.raises(InputError, match="elements"):
        module.copy_buffer_to_parameters(flat[:-1])
    assert all(np.array_equal(before[k], state.parameters[k].data) for k in before)


@pytest.mark.parametrize("model,x,batchnorm", [(MLP, X, "auto"), (CNN, XC, "train")])
def test_export_runs_in_onnxruntime_and_matches_eval(tmp_path, model, x, batchnorm):
    _, state, module, opt = setup(tmp_path, model, batchnorm=batchnorm)
    y = Y if model == MLP else YC
    module(x, y)
    opt.step()
    out = tmp_path / "inference.onnx"
    module.export_model_for_inferencing(out, ["logits"])
    sess = ort.InferenceSession(str(out))
    assert [i.name for i in sess.get_inputs()] == ["x"]
    got = sess.run(None, {"x": x})[0]
    from edgetrain import InferenceSession
    want = InferenceSession(str(out)).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    module.eval()
    loss = module(x, y)
    logp = want - want.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    np.testing.assert_allclose(loss, -logp[np.arange(len(y)), y].mean(), rtol=1e-5)


# --- bad input: a clear error, nothing changed -------------------------------------------------

def test_unknown_requires_grad_name(tmp_path):
    with pytest.raises(A.ArtifactError, match=r"'fc1.weigth'.*did you mean 'fc1.weight'"):
        A.generate_artifacts(MLP, requires_grad=["fc1.weigth"], loss=A.CrossEntropyLoss(),
                             artifact_directory=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("labels,match", [
    (Y[:5], "dimension 'N' is 5 here but 8 in input 'x'"),
    (Y.astype(np.int32), "dtype int32, expected int64"),
    (Y.reshape(8, 1), r"shape \[8, 1\], expected int64\[N\]"),
])
def test_bad_labels(tmp_path, labels, match):
    _, state, module, _ = setup(tmp_path)
    module(X, Y)
    before, grads = snapshot(state), {k: np.array(state.parameters[k].grad) for k in state.parameters}
    with pytest.raises(InputError, match=match):
        module(X, labels)
    assert all(np.array_equal(before[k], state.parameters[k].data) for k in before)
    assert all(np.array_equal(grads[k], state.parameters[k].grad) for k in grads)


def test_checkpoint_of_another_model(tmp_path):
    paths, _, _, _ = setup(tmp_path / "mlp")
    other, _, _, _ = setup(tmp_path / "cnn", CNN)
    state = CheckpointState.load_checkpoint(other["checkpoint"])
    with pytest.raises(CheckpointError, match="another model"):
        Module(paths["training_model"], state)


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_corrupted_checkpoint(tmp_path, damage):
    paths, state, module, _ = setup(tmp_path)
    path = tmp_path / "checkpoint"
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[-5] ^= 0x10
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "garbage":
        raw = bytearray(b"not a checkpoint at all, just text" * 3)
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="checkpoint"):
        CheckpointState.load_checkpoint(path)


def test_failed_save_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    _, state, module, _ = setup(tmp_path)
    path = tmp_path / "checkpoint"
    good = path.read_bytes()
    import edgetrain.training.checkpoint as C
    monkeypatch.setattr(C.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "disk full")))
    with pytest.raises(CheckpointError, match="unchanged"):
        state.save(path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_optimizer_without_gradients_and_bad_learning_rate(tmp_path):
    _, state, module, opt = setup(tmp_path)
    before = snapshot(state)
    with pytest.raises(OptimizerError, match="run a training step"):
        opt.step()
    with pytest.raises(OptimizerError, match="learning rate"):
        opt.set_learning_rate(-1.0)
    assert all(np.array_equal(before[k], state.parameters[k].data) for k in before)


def test_last_layers_selects_the_head():
    from edgetrain import load_graph
    from edgetrain.training.graphs import last_layers, untie_aliases
    assert last_layers(load_graph(MLP)) == ["fc3.weight", "fc3.bias"]
    assert last_layers(load_graph(MLP), 2) == ["fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
    assert last_layers(load_graph(CNN)) == ["fc.weight", "fc.bias"]
    lm = untie_aliases(load_graph(str(GOLDEN / "lm.onnx")))
    assert last_layers(lm)[-1] == "head.bias" and len(last_layers(lm)) == 2  # MatMul + bias Add
    with pytest.raises(A.ArtifactError, match="3 layers"):
        last_layers(load_graph(MLP), 4)


def test_frozen_backbone_gets_no_backward(tmp_path):
    from edgetrain import load_graph

    def backward_ops(**kw):
        paths = A.generate_artifacts(CNN, loss=A.CrossEntropyLoss(), artifact_directory=tmp_path,
                                     **kw)
        return {n.op_type for n in load_graph(paths["training_model"]).nodes if n.domain}

    backbone = {"ConvGrad", "BatchNormalizationGrad", "ClipGrad", "ActivationGrad",
                "GlobalAveragePoolGrad"}
    assert backbone <= backward_ops()
    assert not backbone & backward_ops(requires_grad=["fc.weight", "fc.bias"])


def test_custom_loss_file_loss_none_and_additional_outputs(tmp_path):
    from onnx import TensorProto, helper, save
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])
    target = helper.make_tensor_value_info("target", TensorProto.FLOAT, ["N", 5])
    out = helper.make_tensor_value_info("l", TensorProto.FLOAT, [])
    nodes = [helper.make_node("Sub", ["logits", "target"], ["d"]),
             helper.make_node("Abs", ["d"], ["a"]),
             helper.make_node("ReduceMean", ["a"], ["l"], keepdims=0)]
    loss_path = tmp_path / "l1.onnx"
    save(helper.make_model(helper.make_graph(nodes, "l1", [logits, target], [out]),
                           opset_imports=[helper.make_opsetid("", 13)]), str(loss_path))
    t = RNG.standard_normal((8, 5)).astype(np.float32)
    results = []
    for name, loss in (("custom", str(loss_path)), ("builtin", A.L1Loss())):
        paths = A.generate_artifacts(MLP, loss=loss, artifact_directory=tmp_path / name,
                                     additional_output_names=["logits"])
        module = Module(paths["training_model"],
                        CheckpointState.load_checkpoint(paths["checkpoint"]))
        assert module.input_names() == ["x", "target"]
        assert len(module.output_names()) == 2
        results.append(module(X, t))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert results[0][1].shape == (8, 5)


def test_training_dropout_gradient_by_finite_differences():
    from gradcheck import check_gradients
    from edgetrain.graph import Graph, Node, Value
    g = Graph([Node("TrainingDropout", ["x", "step"], ["y", "mask"], {"ratio": 0.3, "seed": 5},
                    "drop", "ai.edgetrain")],
              [Value("x", np.dtype(np.float64), (6, 7)), Value("step", np.dtype(np.int64), ())],
              [Value("y", np.dtype(np.float64), (6, 7))], {}, {"": 17, "ai.edgetrain": 1})
    feeds = {"x": RNG.standard_normal((6, 7)), "step": np.asarray(3, np.int64)}
    assert check_gradients(g, feeds, ["x"]) <= 1e-6
