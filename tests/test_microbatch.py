"""Micro-batches and the memory budget: a batch run in parts gives the whole batch's loss and
gradients (float64: to 1e-12; the parts' gradients are summed in another order), steps that
mix samples are refused by name, and a budget picks the largest part that fits or refuses
before anything changes, with the least it needs."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgetrain import artifacts as A
from edgetrain.api import CheckpointState, Module, Optimizer
from edgetrain.graph import load_graph
from edgetrain.training.microbatch import MemoryBudgetError, part_weights
from training_util import GOLDEN, MANIFEST, as_float64, make_artifacts


def _pair(paths, **knobs):
    state = CheckpointState.load_checkpoint(paths["checkpoint"])
    module = Module(paths["training_model"], state, paths["eval_model"], **knobs)
    return module, Optimizer(paths["optimizer_model"], module)


def _train(paths, xs, ys, steps=3, fused=True, **knobs):
    module, opt = _pair(paths, **knobs)
    losses = []
    for i in range(steps):
        if fused:
            losses.append(float(opt.train_step(xs[i], ys[i])))
        else:
            losses.append(float(module(xs[i], ys[i])))
            opt.step()
            module.lazy_reset_grad()
    return np.array(losses), {k: p.data.copy() for k, p in module._state.parameters.items()}


@pytest.mark.parametrize("name", ["mlp_adamw", "cnn_adamw_frozen", "lm_sgd",
                                  "cnn_sgd_frozen_last"])
@pytest.mark.parametrize("fused", [True, False])
def test_micro_batches_give_the_whole_batch_step(tmp_path, name, fused):
    run = MANIFEST["runs"][name]
    paths = make_artifacts(run, tmp_path, float64=True)
    data = np.load(GOLDEN / run["data"])
    xs = data["x"].astype(np.float64) if data["x"].dtype == np.float32 else data["x"]
    ref_l, ref_p = _train(paths, xs, data["labels"], fused=fused)
    for k in (3, 1):  # 8 = 3 + 3 + 2, and one sample at a time
        got_l, got_p = _train(paths, xs, data["labels"], fused=fused, micro_batch=k)
        np.testing.assert_allclose(got_l, ref_l, rtol=1e-12)
        for p in ref_p:
            np.testing.assert_allclose(got_p[p], ref_p[p], rtol=1e-9, atol=1e-12, err_msg=p)


def test_ignored_labels_and_class_weights_weigh_the_parts(tmp_path):
    run = MANIFEST["runs"]["mlp_sgd"]
    graph = as_float64(load_graph(str(GOLDEN / run["onnx"])))
    loss = A.CrossEntropyLoss(weight=np.linspace(0.5, 2.0, 5), ignore_index=-1)
    paths = A.generate_artifacts(graph, loss=loss, optimizer=A.SGD(lr=0.1),
                                 artifact_directory=tmp_path)
    data = np.load(GOLDEN / run["data"])
    xs, ys = data["x"].astype(np.float64), data["labels"].copy()
    ys[:, :3] = -1  # the first part of 3 counts for nothing: it is skipped
    ys[:, 5] = -1
    ref_l, ref_p = _train(paths, xs, ys)
    got_l, got_p = _train(paths, xs, ys, micro_batch=3)
    np.testing.assert_allclose(got_l, ref_l, rtol=1e-12)
    for p in ref_p:
        np.testing.assert_allclose(got_p[p], ref_p[p], rtol=1e-9, atol=1e-12)


def test_part_weights():
    assert part_weights({"kind": "sum"}, None, 8, [0, 3, 6], 3) == [1.0, 1.0, 1.0]
    assert part_weights({"kind": "count"}, None, 8, [0, 3, 6], 3) == [3 / 8, 3 / 8, 2 / 8]
    labels = np.array([0, 1, -100, -100, 1, 0])
    w = part_weights({"kind": "label_weight", "ignore_index": -100, "weight": [1.0, 3.0]},
                     labels, 6, [0, 2, 4], 2)
    assert w == [4 / 8, 0.0, 4 / 8]
    with pytest.raises(MemoryBudgetError, match="does not split"):
        part_weights(None, None, 8, [0], 8)


@pytest.mark.parametrize("name,needle", [
    ("cnn_sgd_train", "BatchNorm runs on batch statistics"),
])
def test_steps_that_mix_samples_are_refused(tmp_path, name, needle):
    run = MANIFEST["runs"][name]
    module, opt = _pair(make_artifacts(run, tmp_path), micro_batch=2)
    data = np.load(GOLDEN / run["data"])
    before = {k: p.data.copy() for k, p in module._state.parameters.items()}
    with pytest.raises(MemoryBudgetError, match=needle):
        opt.train_step(data["x"][0], data["labels"][0])
    for k, p in module._state.parameters.items():
        np.testing.assert_array_equal(p.data, before[k])


def test_a_forward_pass_that_mixes_samples_is_refused_by_node(tmp_path):
    # y = x - mean over the batch (axis 0): each output sample reads every input sample
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12, np.float32))
    g = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1, name="batch_mean"),
         helper.make_node("Sub", ["x", "m"], ["c"]),
         helper.make_node("MatMul", ["c", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    paths = A.generate_artifacts(model, loss=A.CrossEntropyLoss(), optimizer=A.SGD(),
                                 artifact_directory=tmp_path)
    module, opt = _pair(paths, micro_batch=2)
    x = np.ones((6, 4), np.float32)
    with pytest.raises(MemoryBudgetError, match="ReduceMean node 'batch_mean'"):
        opt.train_step(x, np.zeros(6, np.int64))
    module, opt = _pair(paths, micro_batch=6)  # the batch fits one part: nothing to split
    opt.train_step(x, np.zeros(6, np.int64))


def test_budget_picks_the_largest_part_that_fits_or_refuses_with_the_least(tmp_path):
    run = MANIFEST["runs"]["cnn_adamw_frozen"]
    paths = make_artifacts(run, tmp_path)
    data = np.load(GOLDEN / run["data"])
    x, y = data["x"][0], data["labels"][0]  # batch 8
    probe, _ = _pair(paths, micro_batch=1)
    feeds = {"x": x, "labels": y, **probe._state_feeds()}
    probe._micro.state_bytes = 2 * sum(probe._state._tensors[k].nbytes
                                       for k in probe._roles.trainable)
    need = {k: probe._micro.need(feeds, k) for k in (8, 4, 2, 1)}
    assert need[8] > need[4] > need[2] > need[1]
    mib = 2 ** 20
    module, opt = _pair(paths, memory_budget_mb=(need[4] + need[2]) / 2 / mib)
    opt.train_step(x, y)
    assert list(module._micro._sizes.values()) == [2]
    module, opt = _pair(paths, memory_budget_mb=need[8] / mib + 1)
    opt.train_step(x, y)
    assert list(module._micro._sizes.values()) == [0]  # fits whole
    module, opt = _pair(paths, memory_budget_mb=need[1] / mib * 0.9)
    before = {k: p.data.copy() for k, p in module._state.parameters.items()}
    with pytest.raises(MemoryBudgetError, match=f"{need[1] / mib:.1f} MiB"):
        opt.train_step(x, y)
    for k, p in module._state.parameters.items():
        np.testing.assert_array_equal(p.data, before[k])


def test_a_mean_over_elements_weighs_parts_by_their_samples(tmp_path):
    run = MANIFEST["runs"]["mlp_sgd"]
    graph = as_float64(load_graph(str(GOLDEN / run["onnx"])))
    paths = A.generate_artifacts(graph, loss=A.MSELoss(), optimizer=A.SGD(lr=0.1),
                                 artifact_directory=tmp_path)
    data = np.load(GOLDEN / run["data"])
    xs = data["x"].astype(np.float64)
    ys = np.random.default_rng(0).standard_normal((len(xs), len(xs[0]), 5))
    ref_l, ref_p = _train(paths, xs, ys)
    got_l, got_p = _train(paths, xs, ys, micro_batch=3)
    np.testing.assert_allclose(got_l, ref_l, rtol=1e-12)
    for p in ref_p:
        np.testing.assert_allclose(got_p[p], ref_p[p], rtol=1e-9, atol=1e-12)
