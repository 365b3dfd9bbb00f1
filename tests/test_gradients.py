"""Gradient rules against float64 finite differences (max relative error <= 1e-6)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes
from onnx import TensorProto, helper

from edgetrain.autodiff import GradientError, build_backward
from edgetrain.graph import load_graph
from gradcheck import check_gradients, one_node_graph

TOL = 1e-6
SETTINGS = settings(max_examples=15, deadline=None)


def rand(rng, shape, lo=None):
    x = rng.standard_normal(shape)
    if lo is not None:
        x = np.abs(x) + lo
    return np.asarray(x, dtype=np.float64)


@SETTINGS
@given(op=st.sampled_from(["Add", "Sub", "Mul", "Div", "Pow"]), seed=st.integers(0, 2**16),
       shapes=mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=3))
def test_binary_broadcasting_gradients(op, seed, shapes):
    rng = np.random.default_rng(seed)
    a_shape, b_shape = shapes.input_shapes
    positive = op in ("Div", "Pow")
    a = rand(rng, a_shape, 0.5 if positive else None)
    b = rand(rng, b_shape, 0.5 if positive else None)
    model = one_node_graph(op, {"a": a, "b": b})
    assert check_gradients(model, {"a": a, "b": b}, ["a", "b"]) <= TOL


@pytest.mark.parametrize("op", ["Neg", "Abs", "Sqrt", "Reciprocal", "Exp", "Log", "Sin", "Cos",
                                "Tanh", "Erf", "Sigmoid"])
def test_unary_gradients(op):
    rng = np.random.default_rng(1)
    positive = op in ("Sqrt", "Log", "Reciprocal")
    x = rand(rng, (3, 4), 0.3 if positive else None)
    if op == "Abs":
        x[np.abs(x) < 0.1] = 0.5  # away from the kink
    model = one_node_graph(op, {"x": x})
    assert check_gradients(model, {"x": x}, ["x"]) <= TOL


def test_value_used_twice_sums_gradients():
    # y = x * x + x  -> dy/dx = 2x + 1
    nodes = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Add", ["sq", "x"], ["y0"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [5])],
                          [helper.make_tensor_value_info("y0", TensorProto.DOUBLE, [5])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.linspace(-1, 1, 5)
    assert check_gradients(model, {"x": x}, ["x"]) <= TOL


def _chain_model():
    # frozen: h = exp(x * w0); trainable: y = h * w1 + b
    w = {k: helper.make_tensor(k, TensorProto.DOUBLE, [3], [0.5, -1.0, 2.0]) for k in ("w0", "w1", "b")}
    nodes = [helper.make_node("Mul", ["x", "w0"], ["a"]), helper.make_node("Exp", ["a"], ["h"]),
             helper.make_node("Mul", ["h", "w1"], ["c"]), helper.make_node("Add", ["c", "b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["N", 3])],
                          list(w.values()))
    return load_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_frozen_backbone_gets_no_backward():
    graph = _chain_model()
    back = build_backward(graph, "y", ["w1", "b"])
    new = back.graph.nodes[len(graph.nodes):]
    touched = {x for n in new for x in n.inputs}
    assert not touched & {"a", "x", "w0"}, "backward reaches into the frozen part"
    assert {n.op_type for n in new} <= {"OnesLike", "SumTo", "Mul", "Identity"}


def test_unknown_wrt_and_missing_rule_are_named():
    graph = _chain_model()
    with pytest.raises(GradientError, match="'nope'"):
        build_backward(graph, "y", ["nope"])
    graph.nodes[1].op_type = "Softsign"  # an op without a gradient rule on the path
    with pytest.raises(GradientError, match=r"'Softsign'.*node"):
        build_backward(graph, "y", ["w0"])


def test_parameter_not_reaching_loss_gets_zero_gradient():
    from edgetrain.runtime import InferenceSession
    graph = _chain_model()
    back = build_backward(graph, "c", ["w1", "b"])  # b comes after c
    x = np.ones((2, 3))
    db, dw1 = InferenceSession(back.graph).run([back.gradients["b"], back.gradients["w1"]], {"x": x})
    np.testing.assert_array_equal(db, np.zeros(3))
    np.testing.assert_allclose(dw1, 2 * np.exp(x[0] * [0.5, -1.0, 2.0]))
