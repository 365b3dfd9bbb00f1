"""Gradient rules of RNN, GRU, LSTM and Resize against float64 finite differences (max relative
error <= 1e-6), plus the backward nodes' wiring (what they read, which outputs they give), the
refusal of an activation without a derivative, and the float32 path.

The finite-difference step is 1e-5: recurrent losses sum many terms, and with 1e-6 the rounding
of the loss alone comes near the tolerance. Random (hypothesis) cases use smooth activations only;
kinks (Relu-like activations, ``clip``) are checked on fixed seeds, where no finite-difference
step crosses one.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from edgetrain.autodiff import build_backward
from edgetrain.errors import EdgetrainError
from edgetrain.graph import load_graph
from edgetrain.ops import resize, rnn_grad
from edgetrain.runtime import InferenceSession
from gradcheck import check_gradients, one_node_graph, with_sum_loss

TOL = 1e-6
EPS = 1e-5
SETTINGS = settings(max_examples=10, deadline=None)
GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
N_OUT = {"RNN": 2, "GRU": 2, "LSTM": 3}


def _only_outputs(model, keep):
    """Blank the node outputs not in ``keep`` (indices) and drop them from the graph outputs:
    only the kept outputs then carry a gradient."""
    node = model.graph.node[0]
    for i in range(len(node.output)):
        if i not in keep:
            node.output[i] = ""
    outs = [o for o in model.graph.output if o.name in set(node.output)]
    model.graph.ClearField("output")
    model.graph.output.extend(outs)
    return model


def rnn_case(op, rng, *, direction="forward", seq=3, batch=2, inp=2, hidden=2, bias=True,
             init=True, lens=None, peep=False, layout=0, opset=17, dtype=np.float64, **attrs):
    """(model, feeds, differentiable input names) of one recurrent node. Values have magnitudes
    in [0.2, 0.7]: a near-zero R, or saturated gates, would make the gradients to early steps
    vanish below what finite differences resolve."""
    nd, g = 2 if direction == "bidirectional" else 1, GATES[op]

    def r(*shape):
        return (rng.choice([-1.0, 1.0], shape) * rng.uniform(0.2, 0.7, shape)).astype(dtype)

    state = (batch, nd, hidden) if layout else (nd, batch, hidden)
    ins = {"X": r(batch, seq, inp) if layout else r(seq, batch, inp), "W": r(nd, g * hidden, inp),
           "R": r(nd, g * hidden, hidden)}
    order = ["X", "W", "R"]
    extra = [("B", r(nd, 2 * g * hidden) if bias else None),
             ("L", None if lens is None else np.asarray(lens, np.int32)),
             ("H0", r(*state) if init else None)]
    if op == "LSTM":
        extra += [("C0", r(*state) if init else None), ("P", r(nd, 3 * hidden) if peep else None)]
    for name, value in extra:
        order.append("" if value is None else name)
        if value is not None:
            ins[name] = value
    while order[-1] == "":
        order.pop()
    if layout:
        attrs["layout"] = layout
    model = one_node_graph(op, ins, N_OUT[op], opset, input_order=order, hidden_size=hidden,
                           direction=direction, **attrs)
    return model, ins, [k for k in ins if k != "L"]


def gradient_error(model, feeds, wrt) -> float:
    """check_gradients at step EPS. An input whose gradient is tiny next to the loss (vanishing
    through time) can miss the tolerance by the loss's rounding alone: each input over it gets
    a second look with a 10x larger step, and the better of its two errors counts."""
    err = check_gradients(model, feeds, wrt, eps=EPS)
    if err <= TOL:
        return err
    return max(min(check_gradients(model, feeds, [w], eps=e) for e in (EPS, 10 * EPS))
               for w in wrt)


def _check(model, feeds, wrt, what=""):
    err = gradient_error(model, feeds, wrt)
    assert err <= TOL, (what, wrt, err)
    return err


# --- recurrent: random cases -------------------------------------------------------------------

def _random_rnn(op, rng, **extra):
    direction = str(rng.choice(["forward", "reverse", "bidirectional"]))
    seq, batch = int(rng.integers(1, 5)), int(rng.integers(1, 4))
    kw = dict(direction=direction, seq=seq, batch=batch, inp=int(rng.integers(1, 4)),
              hidden=int(rng.integers(1, 4)), bias=bool(rng.random() < 0.8),
              init=bool(rng.random() < 0.7), layout=int(rng.random() < 0.3), **extra)
    if rng.random() < 0.6:
        kw["lens"] = [int(v) for v in rng.integers(0, seq + 1, batch)]
    return kw


@SETTINGS
@given(seed=st.integers(0, 2**16), outs=st.sampled_from([(0, 1), (0,), (1,)]))
def test_rnn_gradients(seed, outs):
    rng = np.random.default_rng(seed)
    model, feeds, wrt = rnn_case("RNN", rng, **_random_rnn("RNN", rng))
    _check(_only_outputs(model, outs), feeds, wrt, ("RNN", seed, outs))


@SETTINGS
@given(seed=st.integers(0, 2**16), lbr=st.sampled_from([0, 1]),
       outs=st.sampled_from([(0, 1), (0,), (1,)]))
def test_gru_gradients(seed, lbr, outs):
    rng = np.random.default_rng(seed)
    model, feeds, wrt = rnn_case("GRU", rng, linear_before_reset=lbr, **_random_rnn("GRU", rng))
    _check(_only_outputs(model, outs), feeds, wrt, ("GRU", seed, lbr, outs))


@SETTINGS
@given(seed=st.integers(0, 2**16), peep=st.booleans(), coupled=st.sampled_from([0, 0, 1]),
       outs=st.sampled_from([(0, 1, 2), (0,), (1,), (2,), (1, 2)]))
def test_lstm_gradients(seed, peep, coupled, outs):
    rng = np.random.default_rng(seed)
    model, feeds, wrt = rnn_case("LSTM", rng, peep=peep, input_forget=coupled,
                                 **_random_rnn("LSTM", rng))
    _check(_only_outputs(model, outs), feeds, wrt, ("LSTM", seed, peep, coupled, outs))


# --- recurrent: fixed cases (kinks, activations, clip, opsets, subsets of inputs) --------------

@pytest.mark.parametrize("op, kw", [
    ("RNN", dict(direction="bidirectional", activations=["Relu", "LeakyRelu"],
                 activation_alpha=[0.2])),
    ("RNN", dict(activations=["ThresholdedRelu"], activation_alpha=[0.1], seq=2)),
    ("RNN", dict(direction="reverse", activations=["Elu"], activation_alpha=[0.7],
                 lens=[2, 3])),
    ("RNN", dict(activations=["Affine"], activation_alpha=[0.8], activation_beta=[0.3])),
    ("RNN", dict(direction="bidirectional", activations=["Softsign", "Softplus"], layout=1)),
    ("RNN", dict(activations=["ScaledTanh"], activation_alpha=[1.3], activation_beta=[0.7])),
    ("GRU", dict(direction="bidirectional", activations=["HardSigmoid", "Relu", "Sigmoid",
                                                         "Softsign"],
                 activation_alpha=[0.3], activation_beta=[0.45], linear_before_reset=1)),
    ("LSTM", dict(activations=["HardSigmoid", "LeakyRelu", "Tanh"], activation_alpha=[0.3, 0.05],
                  activation_beta=[0.4], peep=True)),
    ("RNN", dict(direction="bidirectional", clip=0.6, lens=[3, 1])),
    ("GRU", dict(direction="bidirectional", clip=0.5, lens=[2, 3], linear_before_reset=0)),
    ("GRU", dict(direction="reverse", clip=0.5, linear_before_reset=1)),
    ("LSTM", dict(direction="bidirectional", clip=0.7, peep=True, lens=[3, 0])),
    ("LSTM", dict(direction="reverse", clip=0.7, peep=True, input_forget=1, layout=1)),
])
def test_recurrent_activations_and_clip(op, kw):
    model, feeds, wrt = rnn_case(op, np.random.default_rng(21), **kw)
    _check(model, feeds, wrt, (op, kw))


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("opset", [7, 22])
def test_recurrent_gradients_other_opsets(op, opset):
    model, feeds, wrt = rnn_case(op, np.random.default_rng(22), direction="bidirectional",
                                 lens=[1, 3], opset=opset, peep=op == "LSTM")
    _check(model, feeds, wrt, (op, opset))


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("wrt", [["X"], ["W"], ["R", "B"], ["H0"], ["C0", "P"]])
def test_recurrent_gradients_to_some_inputs(op, wrt):
    """Only the needed gradients: the others are '' outputs of the backward node."""
    wrt = [w for w in wrt if op == "LSTM" or w not in ("C0", "P")] or ["X"]
    model, feeds, _ = rnn_case(op, np.random.default_rng(23), direction="bidirectional",
                               lens=[3, 2], peep=True)
    _check(model, feeds, wrt, (op, wrt))
    graph = load_graph(model)
    back = build_backward(with_sum_loss(graph, InferenceSession(graph).run(None, feeds),
                                        np.random.default_rng(0)), "loss", wrt)
    (node,) = [n for n in back.graph.nodes if n.op_type == op + "Grad"]
    given = [i for i, o in enumerate(node.outputs) if o]
    assert [node.inputs[3 + i] for i in given] == wrt
    assert node.attrs["need"] == [int(x in wrt) for x in graph.nodes[0].inputs]


def test_recurrent_gradient_refuses_activation_without_derivative(monkeypatch):
    model, feeds, wrt = rnn_case("GRU", np.random.default_rng(24),
                                 activations=["Sigmoid", "Softplus"])
    monkeypatch.delitem(rnn_grad._DERIVATIVES, "softplus")
    graph = load_graph(model)
    lossy = with_sum_loss(graph, InferenceSession(graph).run(None, feeds),
                          np.random.default_rng(0))
    with pytest.raises(EdgetrainError, match="GRU node .*activation 'softplus' has no derivative"):
        build_backward(lossy, "loss", ["W"])


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
def test_recurrent_float32_backward_matches_float64(op):
    kw = dict(direction="bidirectional", seq=4, batch=3, inp=3, hidden=4, lens=[4, 2, 3],
              peep=op == "LSTM")
    grads = []
    for dtype in (np.float64, np.float32):
        model, feeds, wrt = rnn_case(op, np.random.default_rng(25), dtype=dtype, **kw)
        graph = load_graph(model)
        lossy = with_sum_loss(graph, InferenceSession(graph).run(None, feeds),
                              np.random.default_rng(0))
        back = build_backward(lossy, "loss", wrt)
        got = InferenceSession(back.graph, check=True).run([back.gradients[w] for w in wrt],
                                                           feeds)
        assert all(gv.dtype == dtype for gv in got)
        grads.append(got)
    for g64, g32 in zip(*grads):
        np.testing.assert_allclose(g32, g64, rtol=1e-4, atol=1e-5 * np.abs(g64).max())


# --- Resize ------------------------------------------------------------------------------------

def resize_case(shape, rng, opset=19, roi=None, scales=None, sizes=None, **attrs):
    x = rng.standard_normal(shape)
    consts, order = {}, ["x"]
    if opset < 11:
        consts["scales"] = np.asarray(scales, np.float32)
        order.append("scales")
    else:
        for name, v, dt in (("roi", roi, np.float32), ("scales", scales, np.float32),
                            ("sizes", sizes, np.int64)):
            if v is not None:
                consts[name] = np.asarray(v, dt)
            order.append("" if v is None else name)
        while order[-1] == "":
            order.pop()
    return one_node_graph("Resize", {"x": x}, 1, opset, consts=consts, input_order=order,
                          **attrs), {"x": x}


CTMS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
        "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize"]
NEAREST = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), mode=st.sampled_from(["nearest", "linear", "cubic"]),
       ctm=st.sampled_from(CTMS), by_sizes=st.booleans(), axes=st.booleans(),
       antialias=st.booleans(), exclude=st.booleans(), nearest=st.sampled_from(NEAREST))
def test_resize_gradients(seed, mode, ctm, by_sizes, axes, antialias, exclude, nearest):
    rng = np.random.default_rng(seed)
    rank = int(rng.integers(2, 5))
    shape = [int(v) for v in rng.integers(1, 6, rank)]
    shape[0] = min(shape[0], 2)
    resized = sorted(rng.choice(rank, size=int(rng.integers(1, min(rank, 2) + 1)),
                                replace=False).tolist())
    attrs = dict(mode=mode, coordinate_transformation_mode=ctm, nearest_mode=nearest,
                 exclude_outside=int(exclude), antialias=int(antialias and mode != "nearest"),
                 cubic_coeff_a=float(rng.choice([-0.75, -0.5])))
    if mode != "nearest" and ctm == "tf_half_pixel_for_nn":
        attrs["coordinate_transformation_mode"] = "half_pixel"
    kept = resized if axes else list(range(rank))
    if axes:
        attrs["axes"] = resized
    kw = {}
    if by_sizes:
        kw["sizes"] = [int(rng.integers(1, 8)) if a in resized else shape[a] for a in kept]
    else:
        kw["scales"] = [float(rng.choice([0.4, 0.6, 1.5, 2.0, 2.7])) if a in resized else 1.0
                        for a in kept]
    if ctm == "tf_crop_and_resize":
        lo, hi = rng.uniform(-0.2, 0.4, len(kept)), rng.uniform(0.6, 1.2, len(kept))
        kw["roi"] = np.concatenate([lo, hi])
        attrs["extrapolation_value"] = 1.5
    model, feeds = resize_case(shape, rng, **kw, **attrs)
    _check(model, feeds, ["x"], ("Resize", seed, attrs, kw))


@pytest.mark.parametrize("opset, kw", [
    (10, dict(scales=(1, 1, 2.5, 0.5), mode="nearest")),
    (10, dict(scales=(1, 1, 0.6, 1.7), mode="linear")),
    (11, dict(sizes=(1, 2, 9, 4), mode="cubic", exclude_outside=1, cubic_coeff_a=-0.5)),
    (11, dict(scales=(1, 1, 1.4, 2.7), mode="nearest",
              coordinate_transformation_mode="tf_half_pixel_for_nn")),
    (13, dict(roi=(0, 0, 0.2, -0.3, 1, 1, 0.8, 1.2), sizes=(1, 2, 4, 4), mode="cubic",
              coordinate_transformation_mode="tf_crop_and_resize")),
    (18, dict(scales=(0.5, 0.3), axes=[2, 3], mode="linear", antialias=1)),
    (18, dict(sizes=(3, 2), axes=[2, 3], mode="cubic", antialias=1)),
    (19, dict(sizes=(9, 3), axes=[3, 2], mode="linear", keep_aspect_ratio_policy="not_larger")),
    (19, dict(sizes=(9, 3), axes=[-1, -2], mode="nearest",
              keep_aspect_ratio_policy="not_smaller")),
    (19, dict(sizes=(1, 2, 1, 1), mode="linear", coordinate_transformation_mode="align_corners")),
    (19, dict(scales=(1, 1, 1, 1), mode="cubic")),
])
def test_resize_gradients_cases(opset, kw):
    model, feeds = resize_case((1, 2, 6, 7), np.random.default_rng(31), opset, **kw)
    _check(model, feeds, ["x"], (opset, kw))


def test_resize_backward_reads_only_dy_and_x_shape():
    model, feeds = resize_case((1, 2, 4, 5), np.random.default_rng(32), sizes=(1, 2, 7, 3),
                               mode="linear")
    graph = load_graph(model)
    back = build_backward(graph, "y0", ["x"])
    (node,) = [n for n in back.graph.nodes if n.op_type == "ResizeGrad"]
    assert "x" not in node.inputs and node.attrs["of_version"] == 19


def test_resize_float32_backward_matches_float64():
    x = np.random.default_rng(33).standard_normal((2, 3, 5, 6))
    grads = []
    for dtype in (np.float64, np.float32):
        feeds = {"x": x.astype(dtype)}
        graph = load_graph(one_node_graph(
            "Resize", feeds, 1, 19, consts={"scales": np.array([1, 1, 1.7, 0.6], np.float32)},
            input_order=["x", "", "scales"], mode="cubic"))
        lossy = with_sum_loss(graph, InferenceSession(graph).run(None, feeds),
                              np.random.default_rng(0))
        back = build_backward(lossy, "loss", ["x"])
        (dx,) = InferenceSession(back.graph, check=True).run([back.gradients["x"]], feeds)
        assert dx.dtype == dtype
        grads.append(dx)
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-6)


# --- the check itself ---------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM", "Resize"])
def test_a_wrong_rule_fails_the_check(op, monkeypatch):
    """The check is sharp: a sign error in a derivative or in the adjoint's scatter (one resized
    axis: two would cancel) fails it."""
    if op == "Resize":
        scatter = resize._scatter_rows
        monkeypatch.setattr(resize, "_scatter_rows", lambda d, i, s: scatter(d, i, -s))
        model, feeds = resize_case((1, 2, 4, 5), np.random.default_rng(26), sizes=(1, 2, 7, 5),
                                   mode="linear")
        wrt = ["x"]
    else:
        tanh = rnn_grad._DERIVATIVES["tanh"]
        monkeypatch.setitem(rnn_grad._DERIVATIVES, "tanh", lambda x, a, b: -tanh(x, a, b))
        model, feeds, wrt = rnn_case(op, np.random.default_rng(26))
    assert gradient_error(model, feeds, wrt) > 1e-2

