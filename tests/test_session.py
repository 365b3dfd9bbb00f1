"""Session behaviour: plan-time values fed at run time, overridable initializers, output selection."""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

import edgetrain


def _reduce_model():
    node = helper.make_node("ReduceSum", ["X", "axes"], ["Y"], keepdims=0)
    g = helper.make_graph([node], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3, 4]),
                           helper.make_tensor_value_info("axes", TensorProto.INT64, [None])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_axes_fed_at_run_time_replan_per_value():
    sess = edgetrain.InferenceSession(_reduce_model(), check=True)
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for axes in ([1], [0, 2], [2], [1]):
        (y,) = sess.run(None, {"X": x, "axes": np.array(axes, np.int64)})
        np.testing.assert_array_equal(y, x.sum(axis=tuple(axes)))
    assert len(sess._plans) == 3  # one plan per distinct axes value


def test_initializer_declared_as_input_can_be_overridden():
    w = numpy_helper.from_array(np.full((3,), 2.0, np.float32), "W")
    g = helper.make_graph([helper.make_node("Mul", ["X", "W"], ["Y"])], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, [3]),
                           helper.make_tensor_value_info("W", TensorProto.FLOAT, [3])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [3])], [w])
    sess = edgetrain.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    x = np.ones(3, np.float32)
    np.testing.assert_array_equal(sess.run(None, {"X": x})[0], [2, 2, 2])
    np.testing.assert_array_equal(sess.run(None, {"X": x, "W": np.full(3, 5, np.float32)})[0], [5, 5, 5])
    assert [v.name for v in sess.get_inputs()] == ["X"]


def test_select_outputs_and_intermediate_release():
    nodes = [helper.make_node("Relu", ["X"], ["A"]), helper.make_node("Neg", ["A"], ["B"]),
             helper.make_node("Exp", ["B"], ["C"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("C", TensorProto.FLOAT, [4]),
                           helper.make_tensor_value_info("A", TensorProto.FLOAT, [4])])
    sess = edgetrain.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    x = np.array([-1, 0, 1, 2], np.float32)
    c, a = sess.run(None, {"X": x})
    (only_a,) = sess.run(["A"], {"X": x})
    np.testing.assert_array_equal(a, np.maximum(x, 0))
    np.testing.assert_array_equal(only_a, a)
    np.testing.assert_allclose(c, np.exp(-np.maximum(x, 0)))
    unplanned = edgetrain.InferenceSession(sess.graph, planned=False)
    plan = unplanned.plan_for({"X": x})
    released = {n for r in plan.release for n in r}
    assert "B" in released and "A" not in released and "C" not in released
    # planned: Exp writes C over B, which dies there; A is an output and keeps its bytes
    owner = sess.plan_for({"X": x}).plan.owner
    assert owner["C"] == owner["B"] != owner["A"]


def test_constant_outputs_and_folded_graph():
    # a graph whose output depends only on the input's shape is fully folded: no steps remain
    g = helper.make_graph([helper.make_node("Shape", ["X"], ["S"])], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("S", TensorProto.INT64, [2])])
    sess = edgetrain.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    (s,) = sess.run(None, {"X": np.zeros((5, 3), np.float32)})
    np.testing.assert_array_equal(s, [5, 3])
    assert sess.plan_for({"X": np.zeros((5, 3), np.float32)}).inferred.steps == []


def test_feeds_seen_before_skip_the_checks_but_new_ones_do_not(monkeypatch):
    """A run on feeds with the names, dtypes and shapes of an earlier run reuses its checks and
    plan; any other feeds are checked again (a wrong dtype, shape or name still fails)."""
    import pytest
    from edgetrain.errors import InputError
    from edgetrain.runtime import session as S

    g = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "g",
                          [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["n", 3])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["n", 3])])
    sess = edgetrain.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    calls, real = [], S.check_feeds

    def counted(graph, feeds):
        calls.append(1)
        return real(graph, feeds)
    monkeypatch.setattr(S, "check_feeds", counted)
    x = np.array([[-1, 2, -3]], np.float32)
    for _ in range(3):
        np.testing.assert_array_equal(sess.run(None, {"X": x})[0], [[0, 2, 0]])
    assert len(calls) == 1
    np.testing.assert_array_equal(sess.run(None, {"X": -x})[0], [[1, 0, 3]])  # new values
    assert len(calls) == 1
    sess.run(None, {"X": np.zeros((2, 3), np.float32)})  # a new shape: checked
    assert len(calls) == 2
    with pytest.raises(InputError, match="dtype float64"):
        sess.run(None, {"X": x.astype(np.float64)})
    with pytest.raises(InputError, match="shape"):
        sess.run(None, {"X": np.zeros((1, 4), np.float32)})
    with pytest.raises(InputError, match="unknown input"):
        sess.run(None, {"X": x, "Z": x})
    with pytest.raises(InputError, match="unknown output"):
        sess.run(["Q"], {"X": x})
