"""Gradient rules of activations, normalizations, Where/Clip/Cast/Max/Min against float64 finite
differences (max relative error <= 1e-6), plus direct checks where differences cannot be taken
(Dropout's random mask, ties, non-differentiable casts)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes
from onnx import TensorProto, helper

from edgetrain.autodiff import GradientError, build_backward
from edgetrain.errors import EdgetrainError
from edgetrain.graph import load_graph
from edgetrain.graph.ir import Node, Value
from edgetrain.runtime import InferenceSession
from gradcheck import check_gradients, one_node_graph, with_sum_loss

TOL = 1e-6
SETTINGS = settings(max_examples=12, deadline=None)


def away(x, points, gap=0.02):
    """x with every element closer than ``gap`` to a kink moved ``gap`` away from it."""
    x = np.array(x, dtype=np.float64)
    for p in points:
        near = np.abs(x - p) < gap
        x[near] = p + np.where(x[near] >= p, gap, -gap)
    return x


def only_first_output(model):
    """The model with only the node's first output as a graph output."""
    del model.graph.output[1:]
    return model


def with_lse_loss(graph):
    """Below opset 7 there is no Mul for gradcheck's weighted-sum loss: loss = log sum exp(y0)
    instead (a norm would not do: BatchNormalization's output norm hardly depends on X)."""
    nodes = graph.nodes + [Node("ReduceLogSumExp", [graph.outputs[0].name], ["loss"],
                                {"keepdims": 0}, "loss__lse")]
    return type(graph)(nodes, graph.inputs, [Value("loss", None, None)], graph.initializers,
                       graph.opsets, graph.name)


def run_backward(model, feeds, wrt, extra=(), seed=0):
    """Run forward + backward of the loss: (gradients, extra values, {output: d loss / d output}).

    The loss is sum(y * R) (dL/dy = R), or log sum exp(y0) below opset 7 (dL/dy0 = softmax(y0)
    from the same run: Dropout draws a new mask on every run)."""
    graph = load_graph(model)
    lse = graph.opset("") < 7
    if lse:
        lossy = with_lse_loss(graph)
        extra = list(extra) + [graph.outputs[0].name]
    else:
        outs = InferenceSession(graph).run(None, feeds)
        lossy = with_sum_loss(graph, outs, np.random.default_rng(seed))
    back = build_backward(lossy, "loss", wrt)
    back.graph.outputs += [Value(n, None, None) for n in extra]
    got = InferenceSession(back.graph, check=True).run([back.gradients[w] for w in wrt] +
                                                       list(extra), feeds)
    if lse:
        e = np.exp(got[-1] - got[-1].max())
        return got[:len(wrt)], got[len(wrt):-1], {graph.outputs[0].name: e / e.sum()}
    rs = {v.name: lossy.initializers[f"{v.name}__R"] for v in graph.outputs
          if f"{v.name}__R" in lossy.initializers}
    return got[:len(wrt)], got[len(wrt):], rs


def gradient_error(model, feeds, wrt, h=1e-3):
    """gradcheck.check_gradients; below opset 7 the same error measure with the loss of
    with_lse_loss, whose finite differences take the five-point stencil (error O(h^4))."""
    graph = load_graph(model)
    if graph.opset("") >= 7:
        return check_gradients(model, feeds, wrt)
    lossy = with_lse_loss(graph)
    back = build_backward(lossy, "loss", wrt)
    analytic = InferenceSession(back.graph, check=True).run([back.gradients[w] for w in wrt],
                                                            feeds)
    fwd, worst = InferenceSession(lossy), 0.0
    for w, a in zip(wrt, analytic):
        x = feeds[w]
        assert a.shape == x.shape and a.dtype == x.dtype
        num = np.zeros(x.size)
        for i in range(x.size):
            step = np.zeros(x.size)
            step[i] = h
            f = [fwd.run(["loss"], {**feeds, w: x + k * step.reshape(x.shape)})[0]
                 for k in (2, 1, -1, -2)]
            num[i] = (8 * (f[1] - f[2]) - (f[0] - f[3])) / (12 * h)
        num = num.reshape(x.shape)
        floor = max(1e-3 * float(np.abs(num).max()), 1e-12)
        worst = max(worst, float((np.abs(a - num) / np.maximum(np.abs(num), floor)).max()))
    return worst


# --- pointwise activations ---------------------------------------------------------------------

def _kinks(op, attrs):
    if op in ("Relu", "LeakyRelu", "Elu", "Selu"):
        return [0.0]
    if op == "HardSigmoid":
        a, b = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
        return [-b / a, (1 - b) / a]
    if op == "HardSwish":
        return [-3.0, 3.0]
    return []


POINTWISE = [
    # (op, opset, attrs); opset 7 selects the version-6 schemas (gradcheck's loss needs Mul-7)
    ("Relu", 7, {}), ("Relu", 13, {}), ("Relu", 14, {}),
    ("LeakyRelu", 7, {}), ("LeakyRelu", 16, {"alpha": 0.3}),
    ("Elu", 7, {}), ("Elu", 22, {"alpha": 0.5}),
    ("Selu", 7, {}), ("Selu", 22, {"alpha": 2.0, "gamma": 0.5}),
    ("Softplus", 7, {}), ("Softplus", 22, {}),
    ("Gelu", 20, {}), ("Gelu", 20, {"approximate": "none"}), ("Gelu", 20, {"approximate": "tanh"}),
    ("HardSigmoid", 7, {}), ("HardSigmoid", 22, {"alpha": 0.3, "beta": 0.4}),
    ("HardSwish", 14, {}), ("HardSwish", 22, {}),
]


@pytest.mark.parametrize("op,opset,attrs", POINTWISE, ids=str)
@pytest.mark.parametrize("shape", [(7,), (2, 3, 4)], ids=str)
def test_pointwise_activation_gradients(op, opset, attrs, shape):
    rng = np.random.default_rng(len(shape) * 100 + opset)
    x = away(rng.standard_normal(shape) * 3.5, _kinks(op, attrs))
    model = one_node_graph(op, {"x": x}, opset=opset, **attrs)
    assert gradient_error(model, {"x": x}, ["x"]) <= TOL


def test_gelu_and_hard_swish_derivatives_far_out_are_finite():
    x = np.array([-1e30, -1e4, -30.0, 30.0, 1e4, 1e30], np.float32)
    for attrs in ({}, {"approximate": "tanh"}):
        (dx,), _, rs = run_backward(one_node_graph("Gelu", {"x": x}, opset=20, **attrs),
                                    {"x": x}, ["x"])
        np.testing.assert_allclose(dx, rs["y0"] * [0, 0, 0, 1, 1, 1], atol=1e-6)


# --- Softmax / LogSoftmax ----------------------------------------------------------------------

SOFTMAX_CASES = [  # (shape, opset, axis or None for the default)
    ((5,), 13, None), ((2, 3, 4), 13, None), ((2, 3, 4), 13, 1), ((2, 3, 4), 13, 0),
    ((2, 3, 4), 13, -2), ((3, 4), 11, None), ((2, 3, 4), 11, None), ((2, 3, 4), 11, 2),
    ((2, 3, 4), 7, 0), ((2, 3, 4), 11, -1), ((), 13, None),
]


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape,opset,axis", SOFTMAX_CASES, ids=str)
def test_softmax_gradients(op, shape, opset, axis):
    x = np.random.default_rng(opset + len(shape)).standard_normal(shape)
    attrs = {} if axis is None else {"axis": axis}
    model = one_node_graph(op, {"x": x}, opset=opset, **attrs)
    assert gradient_error(model, {"x": x}, ["x"]) <= TOL


# --- Dropout -----------------------------------------------------------------------------------

def _dropout_model(opset, n_out, p=None, training=None, mode_input=False, **attrs):
    consts, order = {}, ["x"]
    if opset >= 12 and (p is not None or training is not None or mode_input):
        if p is not None:
            consts["ratio"] = np.array(p, np.float64)
        order.append("ratio" if p is not None else "")
        if training is not None:
            consts["mode"] = np.array(training)
            order.append("mode")
        elif mode_input:
            order.append("mode")
    return consts, order, attrs, n_out


@pytest.mark.parametrize("opset,n_out,ratio,training,attrs", [
    (6, 1, None, None, {"is_test": 1}), (6, 2, None, None, {"is_test": 1, "ratio": 0.3}),
    (7, 1, None, None, {}), (10, 2, None, None, {}), (12, 1, None, None, {}),
    (13, 2, 0.4, None, {}), (13, 1, 0.5, False, {}), (13, 1, 0.0, True, {}),
    (22, 2, 0.0, True, {}), (6, 1, None, None, {"is_test": 0, "ratio": 0.0}),
], ids=str)
def test_dropout_inference_gradient_is_dy(opset, n_out, ratio, training, attrs):
    x = np.random.default_rng(opset).standard_normal((3, 4))
    consts, order, attrs, n_out = _dropout_model(opset, n_out, ratio, training, **attrs)
    model = one_node_graph("Dropout", {"x": x}, n_out, opset, consts, input_order=order, **attrs)
    assert gradient_error(model, {"x": x}, ["x"]) <= TOL


@pytest.mark.parametrize("opset,ratio,attrs", [(13, 0.3, {"seed": 5}), (22, 0.6, {}),
                                               (12, None, {}), (6, 0.25, {"ratio": 0.25})])
def test_dropout_training_gradient_uses_the_forward_mask(opset, ratio, attrs):
    x = np.random.default_rng(3).standard_normal((6, 7)) + 3.0  # nonzero everywhere
    consts, order, attrs, _ = _dropout_model(opset, 2, ratio if opset >= 12 else None,
                                             True if opset >= 12 else None, **attrs)
    model = one_node_graph("Dropout", {"x": x}, 2, opset, consts, input_order=order, **attrs)
    (dx,), (y, mask), rs = run_backward(model, {"x": x}, ["x"], extra=["y0", "y1"])
    p = 0.5 if ratio is None else ratio
    keep = mask.astype(bool)
    assert 0 < keep.sum() < keep.size  # really dropped some
    np.testing.assert_allclose(y, np.where(keep, x / (1 - p), 0), rtol=1e-12)
    np.testing.assert_allclose(dx, np.where(keep, rs["y0"] / (1 - p), 0), rtol=1e-12)
    assert dx.dtype == x.dtype


def test_dropout_training_without_mask_output_is_refused_by_name():
    x = np.ones((2, 3))
    consts, order, attrs, _ = _dropout_model(13, 1, 0.3, True)
    model = one_node_graph("Dropout", {"x": x}, 1, 13, consts, input_order=order)
    model.graph.node[0].name = "drop7"
    graph = load_graph(model)
    with pytest.raises(GradientError, match="drop7.*mask"):
        build_backward(graph, "y0", ["x"])
    old = one_node_graph("Dropout", {"x": x}, 1, 6, is_test=0)
    old.graph.node[0].name = "drop6"
    with pytest.raises(GradientError, match="drop6.*mask"):
        build_backward(load_graph(old), "y0", ["x"])


def test_dropout_run_time_training_mode():
    x = np.random.default_rng(0).standard_normal((4, 5)) + 3.0
    consts, order, attrs, _ = _dropout_model(13, 2, 0.5, None, mode_input=True)
    on, off = np.array(True), np.array(False)
    model = one_node_graph("Dropout", {"x": x, "mode": on}, 2, 13, consts, input_order=order)
    for mode in (on, off):
        (dx,), (mask,), rs = run_backward(model, {"x": x, "mode": mode}, ["x"], extra=["y1"])
        np.testing.assert_allclose(dx, np.where(mask, rs["y0"] * (2 if mode else 1), 0),
                                   rtol=1e-12)
        assert mask.all() == (not mode)
    # without the mask output: inference still differentiates, training is refused by name
    model = one_node_graph("Dropout", {"x": x, "mode": on}, 1, 13, consts, input_order=order)
    model.graph.node[0].name = "drop_rt"
    (dx,), _, rs = run_backward(model, {"x": x, "mode": off}, ["x"])
    np.testing.assert_allclose(dx, rs["y0"])
    with pytest.raises(EdgetrainError, match="drop_rt.*mask"):
        run_backward(model, {"x": x, "mode": on}, ["x"])


# --- BatchNormalization ------------------------------------------------------------------------

BN_CASES = [  # (opset, attrs, node outputs, training?)
    (15, {}, 1, False), (15, {"training_mode": 0, "epsilon": 1e-3}, 3, False),
    (14, {"training_mode": 1}, 1, True), (15, {"training_mode": 1, "momentum": 0.7}, 3, True),
    (9, {}, 1, False), (9, {}, 5, True),
    (7, {"spatial": 0}, 1, False), (7, {"spatial": 0}, 3, True), (7, {}, 5, True),
    (6, {"is_test": 1}, 1, False), (6, {}, 5, True), (6, {"spatial": 0}, 5, True),
]


@pytest.mark.parametrize("opset,attrs,n_out,training", BN_CASES, ids=str)
@pytest.mark.parametrize("shape", [(3, 2), (3, 2, 2, 2)], ids=str)  # N=2 is degenerate
def test_batch_normalization_gradients(opset, attrs, n_out, training, shape):
    rng = np.random.default_rng(opset * 10 + n_out)
    x = rng.standard_normal(shape) * 2 + 0.5
    stat = (shape[1],) if attrs.get("spatial", 1) else shape[1:]
    scale = rng.uniform(0.5, 2.0, stat) * rng.choice([-1, 1], stat)  # well conditioned
    b = rng.standard_normal(stat)
    mean, var = rng.standard_normal(stat) * 0.3, rng.uniform(0.5, 2.0, stat)
    model = only_first_output(one_node_graph(
        "BatchNormalization", {"x": x, "scale": scale, "b": b}, n_out, opset,
        {"mean": mean, "var": var}, input_order=["x", "scale", "b", "mean", "var"], **attrs))
    feeds = {"x": x, "scale": scale, "b": b}
    assert gradient_error(model, feeds, ["x", "scale", "b"]) <= TOL
    # the mode really differs: in training the x gradient sums to zero over each channel
    (dx,), _, _ = run_backward(model, feeds, ["x"])
    axes = (0,) + tuple(range(2, x.ndim)) if attrs.get("spatial", 1) else (0,)
    sums = np.abs(dx.sum(axis=axes)).max()
    assert (sums < 1e-9) == training


# --- LayerNormalization ------------------------------------------------------------------------

LN_CASES = [  # (x shape, axis, scale shape, B shape or None)
    ((2, 5), -1, (5,), (5,)), ((2, 3, 4), -1, (4,), None), ((2, 3, 4), 1, (3, 4), (3, 4)),
    ((2, 3, 4), 0, (2, 3, 4), (1, 4)), ((2, 3, 4), -2, (1, 4), (3, 1)), ((6,), 0, (6,), (1,)),
]


@pytest.mark.parametrize("shape,axis,s_shape,b_shape", LN_CASES, ids=str)
@pytest.mark.parametrize("stash", [1, 11])
def test_layer_normalization_gradients(shape, axis, s_shape, b_shape, stash):
    rng = np.random.default_rng(len(shape) + axis + 7 * stash)
    x = rng.standard_normal(shape) * 2 + 1
    feeds = {"x": x, "scale": rng.standard_normal(s_shape) + 1}
    if b_shape is not None:
        feeds["b"] = rng.standard_normal(b_shape)
    model = only_first_output(one_node_graph("LayerNormalization", feeds, 3, 17, axis=axis,
                                             stash_type=stash, epsilon=1e-4))
    assert gradient_error(model, feeds, list(feeds)) <= TOL


# --- Where, Clip, Cast, Max/Min, Mod -----------------------------------------------------------

@SETTINGS
@given(seed=st.integers(0, 2**16),
       shapes=mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=3))
def test_where_gradients_broadcast(seed, shapes):
    rng = np.random.default_rng(seed)
    c_shape, x_shape, y_shape = shapes.input_shapes
    cond = rng.random(c_shape) < 0.5
    feeds = {"x": rng.standard_normal(x_shape), "y": rng.standard_normal(y_shape)}
    model = one_node_graph("Where", {"cond": cond, **feeds}, opset=16)
    assert gradient_error(model, {"cond": cond, **feeds}, ["x", "y"]) <= TOL


@pytest.mark.parametrize("opset,lo,hi", [
    (10, -0.5, 0.7), (10, None, 0.3), (7, -0.2, None), (7, None, None),
    (11, -0.5, 0.7), (12, None, 0.3), (13, -0.2, None), (13, None, None), (13, 0.4, 0.4),
], ids=str)
def test_clip_gradients(opset, lo, hi):
    x = away(np.random.default_rng(opset).standard_normal((3, 5)),
             [v for v in (lo, hi) if v is not None])
    if opset < 11:  # Clip-6: bounds as attributes
        attrs = {k: v for k, v in (("min", lo), ("max", hi)) if v is not None}
        model = one_node_graph("Clip", {"x": x}, opset=opset, **attrs)
    else:
        consts = {k: np.array(v) for k, v in (("lo", lo), ("hi", hi)) if v is not None}
        order = ["x", "lo" if lo is not None else "", "hi" if hi is not None else ""]
        model = one_node_graph("Clip", {"x": x}, opset=opset, consts=consts, input_order=order)
    assert gradient_error(model, {"x": x}, ["x"]) <= TOL
    (dx,), _, rs = run_backward(model, {"x": x}, ["x"])
    inside = (x > (-np.inf if lo is None else lo)) & (x < (np.inf if hi is None else hi))
    np.testing.assert_array_equal(dx, np.where(inside, rs["y0"], 0))


def test_clip_gradient_is_zero_at_the_bounds():
    x = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    model = one_node_graph("Clip", {"x": x}, opset=13, consts={"lo": np.array(-0.5),
                                                               "hi": np.array(0.5)},
                           input_order=["x", "lo", "hi"])
    (dx,), _, rs = run_backward(model, {"x": x}, ["x"])
    np.testing.assert_array_equal(dx, [0, 0, rs["y0"][2], 0, 0])


def test_cast_gradients():
    x = np.random.default_rng(0).standard_normal((3, 4))
    model = one_node_graph("Cast", {"x": x}, opset=19, to=TensorProto.DOUBLE)
    assert gradient_error(model, {"x": x}, ["x"]) <= TOL
    # float64 -> float32: dy comes back as float64
    model = one_node_graph("Cast", {"x": x}, opset=13, to=TensorProto.FLOAT)
    (dx,), _, rs = run_backward(model, {"x": x}, ["x"])
    assert dx.dtype == np.float64
    np.testing.assert_array_equal(dx, rs["y0"].astype(np.float64))
    # through an integer cast nothing flows: y = x + double(int64(x)) has dy/dx = 1
    nodes = [helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
             helper.make_node("Cast", ["i"], ["f"], to=TensorProto.DOUBLE),
             helper.make_node("Add", ["x", "f"], ["y0"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [5])],
                          [helper.make_tensor_value_info("y0", TensorProto.DOUBLE, [5])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    xs = np.array([-2.5, -1.3, 0.4, 1.6, 3.2])
    assert gradient_error(model, {"x": xs}, ["x"]) <= TOL


@SETTINGS
@given(op=st.sampled_from(["Max", "Min"]), seed=st.integers(0, 2**16), data=st.data())
def test_max_min_gradients_broadcast(op, seed, data):
    n = data.draw(st.integers(1, 4))
    shapes = data.draw(mutually_broadcastable_shapes(num_shapes=n, max_dims=3, max_side=3))
    rng = np.random.default_rng(seed)
    feeds = {f"x{i}": rng.standard_normal(s) for i, s in enumerate(shapes.input_shapes)}
    model = one_node_graph(op, feeds, opset=13)
    assert gradient_error(model, feeds, list(feeds)) <= TOL


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_ties_share_the_gradient(op):
    a = np.array([1.0, 2.0, 3.0, 0.0])
    b = np.array([1.0, 2.0, -3.0, 5.0])
    c = np.array([1.0, -7.0, 3.0 if op == "Max" else -3.0, 0.0])
    model = one_node_graph(op, {"a": a, "b": b, "c": c}, opset=13)
    (da, db, dc), _, rs = run_backward(model, {"a": a, "b": b, "c": c}, ["a", "b", "c"])
    share = {"Max": ([1 / 3, .5, .5, 0], [1 / 3, .5, 0, 1], [1 / 3, 0, .5, 0]),
             "Min": ([1 / 3, 0, 0, .5], [1 / 3, 0, .5, 0], [1 / 3, 1, .5, .5])}[op]
    for got, want in zip((da, db, dc), share):
        np.testing.assert_allclose(got, rs["y0"] * want, rtol=1e-12)
    # an input given twice gets both its shares: Max(a, a, b)
    model = one_node_graph(op, {"a": a, "b": b}, opset=13, input_order=["a", "a", "b"])
    (da, db), _, rs = run_backward(model, {"a": a, "b": b}, ["a", "b"])
    ext = (np.maximum if op == "Max" else np.minimum)(a, b)
    count = 2 * (a == ext) + (b == ext)
    np.testing.assert_allclose(da, rs["y0"] * 2 * (a == ext) / count, rtol=1e-12)
    np.testing.assert_allclose(db, rs["y0"] * (b == ext) / count, rtol=1e-12)


def test_mod_on_the_path_is_refused_by_name():
    # float Mod has a gradient almost everywhere; stopping it silently would train wrongly
    from edgetrain.autodiff import GradientError, build_backward
    from edgetrain.graph import load_graph
    nodes = [helper.make_node("Mod", ["x", "m"], ["r"], fmod=1, name="the_mod"),
             helper.make_node("Add", ["x", "r"], ["y0"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [4])],
                          [helper.make_tensor_value_info("y0", TensorProto.DOUBLE, [4])],
                          [helper.make_tensor("m", TensorProto.DOUBLE, [], [1.5])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(GradientError, match=r"'Mod'.*'the_mod'"):
        build_backward(load_graph(model), "y0", ["x"])


# --- element types: the gradient keeps the forward input's type ---------------------------------

DTYPE_CASES = [("Relu", 14, {}), ("Gelu", 20, {"approximate": "tanh"}), ("Gelu", 20, {}),
               ("HardSwish", 22, {}), ("Selu", 22, {}), ("Softmax", 13, {}),
               ("LogSoftmax", 11, {"axis": 0}), ("Clip", 6, {"min": -0.5, "max": 0.5}),
               ("LayerNormalization", 17, {}), ("BatchNormalization", 15, {"training_mode": 1})]


@pytest.mark.parametrize("op,opset,attrs", DTYPE_CASES, ids=str)
@pytest.mark.parametrize("dtype,rtol", [(np.float32, 1e-4), (np.float16, 3e-2)], ids=str)
def test_gradients_keep_the_element_type(op, opset, attrs, dtype, rtol):
    x64 = away(np.random.default_rng(5).standard_normal((3, 4)) * 2, [-3, -0.5, 0, 0.5, 3], 0.1)
    grads = {}
    for dt in (np.float64, dtype):
        feeds = {"x": x64.astype(dt)}
        if op == "LayerNormalization":
            feeds["scale"] = np.linspace(0.5, 1.5, 4).astype(dt)
        if op == "BatchNormalization":
            feeds.update(scale=np.linspace(0.5, 1.5, 4).astype(dt), b=np.zeros(4, dt),
                         mean=np.zeros(4, dt), var=np.ones(4, dt))
        model = one_node_graph(op, feeds, opset=opset, **attrs)
        got, _, _ = run_backward(model, feeds, list(feeds)[:2])
        assert all(gr.dtype == dt for gr in got)
        grads[dt] = got
    for lo, hi in zip(grads[dtype], grads[np.float64]):
        np.testing.assert_allclose(lo, hi, rtol=rtol, atol=rtol * np.abs(hi).max())
