"""The planned executor: results bit-identical with the planner on and off (random graphs and
real training runs), planned placements never overlap, and kernels write into the arena."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

import edgetrain
from edgetrain.plan import check
from training_util import GOLDEN, MANIFEST, make_artifacts
from edgetrain.api import CheckpointState, Module, Optimizer

SHAPE = [3, 4]
UNARY = ["Relu", "Neg", "Exp", "Sigmoid", "Tanh", "Abs", "Identity", "Clip"]
BINARY = ["Add", "Sub", "Mul", "Max"]


@st.composite
def random_graphs(draw):
    """Random DAGs of elementwise, view and matmul ops over [3, 4] values."""
    values, nodes = ["x", "w"], []
    for i in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["unary", "binary", "view", "matmul"]))
        a = draw(st.sampled_from(values))
        y = f"v{i}"
        if kind == "unary":
            op = draw(st.sampled_from(UNARY))
            extra = ["lo", "hi"] if op == "Clip" else []
            nodes.append(helper.make_node(op, [a] + extra, [y]))
        elif kind == "binary":
            nodes.append(helper.make_node(draw(st.sampled_from(BINARY)),
                                          [a, draw(st.sampled_from(values))], [y]))
        elif kind == "view":  # there and back again: two views of one buffer
            nodes.append(helper.make_node("Reshape", [a, "flat"], [y + "f"]))
            nodes.append(helper.make_node("Reshape", [y + "f", "shape"], [y]))
        else:  # [3,4] @ [4,3] @ [3,4]
            nodes.append(helper.make_node("Transpose", [a], [y + "t"]))
            nodes.append(helper.make_node("MatMul", [a, y + "t"], [y + "m"]))
            nodes.append(helper.make_node("MatMul", [y + "m", a], [y]))
        values.append(y)
    outs = sorted(set([values[-1]] + draw(st.lists(st.sampled_from(values[2:]), max_size=3))))
    inits = [helper.make_tensor("lo", TensorProto.FLOAT, [], [-0.5]),
             helper.make_tensor("hi", TensorProto.FLOAT, [], [0.7]),
             helper.make_tensor("flat", TensorProto.INT64, [1], [12]),
             helper.make_tensor("shape", TensorProto.INT64, [2], SHAPE)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, SHAPE)
                                       for n in ("x", "w")],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, SHAPE)
                           for o in outs], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@settings(max_examples=150, deadline=None)
@given(random_graphs(), st.integers(0, 2 ** 31 - 1))
def test_random_graphs_are_bit_identical_planned_or_not(model, seed):
    rng = np.random.default_rng(seed)
    feeds = {"x": rng.standard_normal(SHAPE, dtype=np.float32),
             "w": rng.standard_normal(SHAPE, dtype=np.float32)}
    ref = edgetrain.InferenceSession(model, planned=False).run(None, feeds)
    for inplace in (True, False):
        sess = edgetrain.InferenceSession(model, inplace=inplace)
        for _ in range(2):  # the second run reuses the arena
            got = sess.run(None, feeds)
            for a, b in zip(ref, got):
                np.testing.assert_array_equal(a, b)
        ex = sess.plan_for(feeds)
        check([b.interval() for b in ex.plan.buffers], ex.plan.placement)


def test_outputs_do_not_alias_the_arena():
    model = helper.make_model(helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)]),
        opset_imports=[helper.make_opsetid("", 17)])
    sess = edgetrain.InferenceSession(model)
    x = np.ones(SHAPE, np.float32)
    (first,) = sess.run(None, {"x": x})
    sess.run(None, {"x": -x})
    np.testing.assert_array_equal(first, x)  # not overwritten by the second run


def _train(run, folder, steps, **knobs):
    paths = make_artifacts(run, folder)
    data = np.load(GOLDEN / run["data"])
    state = CheckpointState.load_checkpoint(paths["checkpoint"])
    module = Module(paths["training_model"], state, paths["eval_model"], **knobs)
    opt = Optimizer(paths["optimizer_model"], module)
    losses = []
    for i in range(steps):
        losses.append(np.asarray(module(data["x"][i], data["labels"][i])))
        opt.step()
        module.lazy_reset_grad()
    return losses, state, module


@pytest.mark.parametrize("name", ["mlp_sgd", "cnn_sgd_train", "cnn_adamw_frozen", "lm_adamw",
                                  "cnn_sgd_frozen_last", "mlp_sgd_last", "lm_sgd_last"])
def test_training_is_bit_identical_with_every_memory_setting(tmp_path, name):
    run = MANIFEST["runs"][name]
    ref_losses, ref_state, _ = _train(run, tmp_path / "ref", 3, planned=False)
    for i, knobs in enumerate([{}, {"recompute": False}, {"inplace": False, "recompute": False},
                               {"chunk_frozen": False}, {"chunk_budget_mb": 1e-6},
                               {"recompute": 2}, {"recompute": 3}]):
        losses, state, module = _train(run, tmp_path / str(i), 3, **knobs)
        if name == "cnn_sgd_frozen_last" and knobs.get("chunk_frozen", True):
            assert module._prefix, "the frozen backbone should run in chunks"
            if "chunk_budget_mb" in knobs:
                assert set(module._prefix._chunk.values()) == {1}
        assert [l.tobytes() for l in losses] == [l.tobytes() for l in ref_losses], knobs
        for k, p in ref_state.parameters.items():
            np.testing.assert_array_equal(state.parameters[k].data, p.data)
        data = np.load(GOLDEN / run["data"])
        plan = module.memory_plan(data["x"][0], data["labels"][0])
        check([b.interval() for b in plan.buffers], plan.placement)
        assert plan.placement.arena <= 1.10 * plan.placement.lower_bound + 4096


def test_chunks_split_the_batch_evenly_or_overlap_the_last():
    from edgetrain.runtime.prefix import chunk_size, chunk_starts
    assert chunk_size(100, 16, 300) == 2      # 3 fit; 2 splits 16 evenly (one plan, one arena)
    assert chunk_size(100, 15, 300) == 3
    assert chunk_size(100, 17, 500) == 5      # nothing in 3..5 divides 17: overlap instead
    assert chunk_size(100, 4, 10 ** 6) == 4 and chunk_size(10 ** 6, 4, 1) == 1
    assert chunk_starts(17, 5) == [0, 5, 10, 12] and chunk_starts(16, 2) == list(range(0, 16, 2))
    assert chunk_starts(3, 3) == [0]


def test_overlapping_last_chunk_is_bit_identical(tmp_path, monkeypatch):
    import edgetrain.runtime.prefix as prefix
    run = MANIFEST["runs"]["cnn_sgd_frozen_last"]
    ref_losses, ref_state, _ = _train(run, tmp_path / "ref", 2, chunk_frozen=False)
    monkeypatch.setattr(prefix, "chunk_size", lambda per, batch, budget: 3)  # 8 = 3 + 3 + 2
    losses, state, module = _train(run, tmp_path / "chunked", 2)
    assert set(module._prefix._chunk.values()) == {3}
    assert len(module._prefix.session._plans) == 1  # one chunk shape, one arena
    assert [l.tobytes() for l in losses] == [l.tobytes() for l in ref_losses]
    for k, p in ref_state.parameters.items():
        np.testing.assert_array_equal(state.parameters[k].data, p.data)


def test_recompute_keeps_less_and_kernels_write_in_place(tmp_path):
    run = MANIFEST["runs"]["cnn_sgd_frozen"]
    data = np.load(GOLDEN / run["data"])
    feeds = (data["x"][0], data["labels"][0])
    plans = {}
    for knob in (True, False):
        _, _, module = _train(run, tmp_path / str(knob), 1, recompute=knob)
        module(*feeds)
        plans[knob] = module.memory_plan(*feeds)
        (ex,) = module._train_session._plans.values()
        # two runs; kernels write into their planned outputs, few bytes are copied there
        written = sum(v.nbytes for v in ex.views.values())
        assert ex.copied_bytes < 0.1 * 2 * written, (ex.copied_bytes, written)
    assert plans[True].recomputed > 0 and plans[False].recomputed == 0
    assert plans[True].placement.arena < plans[False].placement.arena


def test_segment_checkpointing_recomputes_expensive_steps_and_keeps_less(tmp_path):
    run = MANIFEST["runs"]["cnn_sgd_train"]
    data = np.load(GOLDEN / run["data"])
    plans = {}
    for knob in (True, 2):
        _, _, module = _train(run, tmp_path / str(knob), 1, recompute=knob)
        plans[knob] = module.memory_plan(data["x"][0], data["labels"][0])
    recomputed = {s.node.op_type for s in plans[2].inferred.steps if s.node.name.endswith(
        "::recomputed")}
    assert "Conv" in recomputed and plans[2].recomputed > plans[True].recomputed
    assert plans[2].placement.lower_bound < plans[True].placement.lower_bound
