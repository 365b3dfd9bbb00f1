"""Whole models give onnxruntime's outputs, at batch sizes 1 and 8.

The committed exports in tests/data come from tools/export_test_models.py (torch, opset 17): an MLP,
a MobileNetV2-style CNN and a pre-norm transformer LM with torch's shape sub-graphs. Tolerance:
elementwise ``|ours - ort| <= rtol * (|ort| + max|ort|)`` — relative to the output's scale, so
values near zero do not demand more than float32 can give.
"""
from pathlib import Path

import numpy as np
import pytest
from onnx import helper, numpy_helper

import edgetrain
from oracle import make_model, run_both, value_info

DATA = Path(__file__).parent / "data"


def assert_close_to_scale(ours, ref, rtol):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    scale = np.abs(ref).max()
    err = np.abs(ours.astype(np.float64) - ref)
    bound = rtol * (np.abs(ref) + scale)
    assert np.all(err <= bound), f"max error {err.max():.3g} vs scale {scale:.3g}"


def inputs_for(name, batch, rng):
    if name == "tinylm_tiny":
        return {"input": rng.integers(0, 50, (batch, 8)).astype(np.int64)}
    shape = {"mlp": (1, 8, 8), "mobilenet_tiny": (3, 16, 16)}[name]
    return {"input": rng.standard_normal((batch, *shape)).astype(np.float32)}


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("name,rtol", [("mlp", 1e-5), ("mobilenet_tiny", 1e-5),
                                       ("tinylm_tiny", 1e-4)])
def test_exported_model_matches_onnxruntime(name, rtol, batch):
    path = DATA / f"{name}.onnx"
    feeds = inputs_for(name, batch, np.random.default_rng(batch))
    (ours,), (ref,) = run_both(path, feeds)
    assert_close_to_scale(ours, ref, rtol)


def test_transformer_shape_subgraphs_fold_away():
    sess = edgetrain.InferenceSession(DATA / "tinylm_tiny.onnx")
    plan = sess.plan_for({"input": np.zeros((4, 8), np.int64)})
    types = plan.inferred.types
    kinds = {s.node.op_type for s in plan.inferred.steps}
    graph_kinds = {n.op_type for n in sess.graph.nodes}
    assert {"Shape", "Concat", "Unsqueeze", "Constant", "Cast"} <= graph_kinds
    assert not kinds & {"Shape", "Concat", "Constant", "Cast"}, kinds
    for s in plan.inferred.steps:  # nothing foldable is left: each step reads run-time data
        assert any(types[x].value is None for x in s.node.inputs if x), s.node.name
    assert len(plan.inferred.steps) < len(sess.graph.nodes) / 2


def test_plan_is_cached_per_signature():
    sess = edgetrain.InferenceSession(DATA / "mlp.onnx")
    a = sess.plan_for({"input": np.zeros((2, 1, 8, 8), np.float32)})
    b = sess.plan_for({"input": np.ones((2, 1, 8, 8), np.float32)})
    c = sess.plan_for({"input": np.zeros((3, 1, 8, 8), np.float32)})
    assert a is b and a is not c


def _seq_model(kind, hidden=6, feat=5):
    """A sequence classifier built by hand: RNN -> last state -> Gemm -> Softmax."""
    rng = np.random.default_rng(0)
    gates = {"LSTM": 4, "GRU": 3}[kind]
    inits = [numpy_helper.from_array(rng.standard_normal((1, gates * hidden, feat)).astype(np.float32) * .3, "W"),
             numpy_helper.from_array(rng.standard_normal((1, gates * hidden, hidden)).astype(np.float32) * .3, "R"),
             numpy_helper.from_array(rng.standard_normal((1, 2 * gates * hidden)).astype(np.float32) * .1, "B"),
             numpy_helper.from_array(rng.standard_normal((hidden, 3)).astype(np.float32), "Wc"),
             numpy_helper.from_array(np.array([0], np.int64), "zero")]
    outs = ["Y", "Y_h"] + (["Y_c"] if kind == "LSTM" else [])
    nodes = [helper.make_node(kind, ["X", "W", "R", "B"], outs, hidden_size=hidden),
             helper.make_node("Squeeze", ["Y_h", "zero"], ["h"]),
             helper.make_node("MatMul", ["h", "Wc"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["P"], axis=-1)]
    return make_model(nodes, [value_info("X", np.float32, [7, "N", feat])],
                      [value_info("P", np.float32, ["N", 3])], inits)


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_built_sequence_model_matches_onnxruntime(kind, batch):
    m = _seq_model(kind)
    feeds = {"X": np.random.default_rng(3).standard_normal((7, batch, 5)).astype(np.float32)}
    (ours,), (ref,) = run_both(m, feeds)
    assert_close_to_scale(ours, ref, 1e-5)
