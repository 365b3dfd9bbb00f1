"""RNN / GRU / LSTM and Resize against onnxruntime on random inputs (one-node models)."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from edgetrain.errors import EdgetrainError
from edgetrain.runtime import InferenceSession
from oracle import (assert_all_close, check_against_ort, one_node, run_ort, run_ort_float32,
                    run_ours)


def _trim(inputs):
    """``inputs`` less its trailing absent (None) ones, which the node then leaves off."""
    names = list(inputs)
    while names and inputs[names[-1]] is None:
        names.pop()
    return {k: inputs[k] for k in names}


# --- recurrent ---------------------------------------------------------------------------------

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def _rnn_case(op, rng, dtype, *, direction="forward", seq=5, batch=3, inp=4, hidden=6,
              bias=True, init=False, lens=None, peep=False, layout=0, opset=17,
              outputs=("Y", "Y_h", "Y_c"), **attrs):
    nd = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    r = lambda *s: (rng.standard_normal(s) * 0.6).astype(dtype)  # noqa: E731
    x = r(batch, seq, inp) if layout else r(seq, batch, inp)
    state = (batch, nd, hidden) if layout else (nd, batch, hidden)
    ins = {"X": x, "W": r(nd, g * hidden, inp), "R": r(nd, g * hidden, hidden),
           "B": r(nd, 2 * g * hidden) if bias else None,
           "sequence_lens": None if lens is None else np.asarray(lens, np.int32),
           "initial_h": r(*state) if init else None}
    if op == "LSTM":
        ins["initial_c"] = r(*state) if init else None
        ins["P"] = r(nd, 3 * hidden) if peep else None
    else:
        outputs = tuple(o for o in outputs if o != "Y_c")
    attrs = dict(hidden_size=hidden, direction=direction, **attrs)
    if layout:
        attrs["layout"] = layout
    return one_node(op, _trim(ins), [dtype if o else None for o in outputs], opset, **attrs)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("extras", ["plain", "init", "lens", "all"])
def test_recurrent_directions(op, direction, extras):
    rng = np.random.default_rng(zlib.crc32(f"{op}{direction}{extras}".encode()))
    kw = {}
    if extras in ("init", "all"):
        kw["init"] = True
    if extras in ("lens", "all"):
        kw["lens"] = [5, 2, 4] if extras == "lens" else [0, 5, 3]
    if extras == "plain":
        kw["bias"] = False
    if extras == "all" and op == "LSTM":
        kw["peep"] = True
    model, feeds = _rnn_case(op, rng, np.float32, direction=direction, **kw)
    check_against_ort(model, feeds, 1e-4, 1e-5)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_recurrent_float64(op, direction):
    # onnxruntime has no double LSTM/GRU/RNN: check against its float32 run of the same data
    rng = np.random.default_rng(3)
    model, feeds = _rnn_case(op, rng, np.float64, direction=direction, init=True,
                             lens=[3, 5, 1])
    got, want = run_ours(model, feeds), run_ort_float32(model, feeds)
    assert all(g.dtype == np.float64 for g in got)
    assert_all_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrent_batch_first_layout(op):
    # onnxruntime refuses layout=1: compare with its layout=0 run on transposed data
    rng = np.random.default_rng(4)
    kw = dict(direction="bidirectional", init=True, lens=[2, 5, 4], opset=14)
    model, feeds = _rnn_case(op, rng, np.float32, layout=1, **kw)
    model0, _ = _rnn_case(op, rng, np.float32, **kw)
    feeds0 = {k: (v.transpose(1, 0, 2) if k in ("X", "initial_h", "initial_c") else v)
              for k, v in feeds.items()}
    want = run_ort(model0, feeds0)
    got = run_ours(model, feeds)
    np.testing.assert_allclose(got[0], want[0].transpose(2, 0, 1, 3), rtol=1e-4, atol=1e-5)
    for g, w in zip(got[1:], want[1:]):
        np.testing.assert_allclose(g, w.transpose(1, 0, 2), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_recurrent_only_last_state(op):
    rng = np.random.default_rng(5)
    model, feeds = _rnn_case(op, rng, np.float32, direction="reverse", lens=[1, 5, 3],
                             outputs=("", "Y_h"))
    check_against_ort(model, feeds, 1e-4, 1e-5)


def test_lstm_clip_and_input_forget():
    rng = np.random.default_rng(6)
    model, feeds = _rnn_case("LSTM", rng, np.float32, direction="bidirectional", init=True,
                             peep=True, clip=0.7, input_forget=1)
    check_against_ort(model, feeds, 1e-4, 1e-5)


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_linear_before_reset_and_clip(lbr):
    rng = np.random.default_rng(7 + lbr)
    model, feeds = _rnn_case("GRU", rng, np.float32, direction="bidirectional", init=True,
                             lens=[4, 5, 2], linear_before_reset=lbr, clip=0.9)
    check_against_ort(model, feeds, 1e-4, 1e-5)


@pytest.mark.parametrize("op,acts,alpha,beta", [
    ("LSTM", ["HardSigmoid", "LeakyRelu", "Tanh"], [0.3, 0.05], [0.4]),
    ("GRU", ["Sigmoid", "Relu", "HardSigmoid", "Tanh"], [0.25], [0.45]),
    ("RNN", ["Relu"], None, None),
    ("RNN", ["LeakyRelu"], [0.2], None),
])
def test_recurrent_activations(op, acts, alpha, beta):
    rng = np.random.default_rng(9)
    direction = "bidirectional" if len(acts) in (2, 4) and op != "LSTM" else "forward"
    if op == "RNN" and len(acts) == 1:
        direction = "forward"
    attrs = {"activations": acts}
    if alpha:
        attrs["activation_alpha"] = alpha
    if beta:
        attrs["activation_beta"] = beta
    model, feeds = _rnn_case(op, rng, np.float32, direction=direction, init=True, **attrs)
    check_against_ort(model, feeds, 1e-4, 1e-5)


def test_recurrent_bad_shapes_are_refused():
    rng = np.random.default_rng(10)
    model, feeds = _rnn_case("LSTM", rng, np.float32)
    feeds["W"] = feeds["W"][:, :-1]
    bad, _ = one_node("LSTM", {k: feeds[k] for k in ("X", "R")}, [np.float32],
                      consts={"W": feeds["W"]}, hidden_size=6)
    with pytest.raises(EdgetrainError, match="W should have shape"):
        InferenceSession(bad).run(None, {"X": feeds["X"], "R": feeds["R"]})


# --- Resize ------------------------------------------------------------------------------------

def _resize(x, opset=19, roi=None, scales=None, sizes=None, rtol=1e-4, atol=1e-5, **attrs):
    f32 = lambda v: None if v is None else np.asarray(v, np.float32)  # noqa: E731
    consts = {"roi": f32(roi), "scales": f32(scales),
              "sizes": None if sizes is None else np.asarray(sizes, np.int64)}
    if opset < 11:
        consts = {"scales": consts["scales"]}
    elif opset < 13:  # roi and scales are required inputs: empty tensors stand for absent
        consts["roi"] = consts["roi"] if roi is not None else np.zeros(0, np.float32)
        if scales is None:
            consts["scales"] = np.zeros(0, np.float32)
    model, feeds = one_node("Resize", {"x": x}, [x.dtype], opset, _trim(consts), **attrs)
    return check_against_ort(model, feeds, rtol, atol)[0]


@pytest.fixture
def img():
    return np.random.default_rng(11).standard_normal((2, 3, 7, 9)).astype(np.float32)


@pytest.mark.parametrize("ctm", ["half_pixel", "pytorch_half_pixel", "asymmetric",
                                 "align_corners", "half_pixel_symmetric"])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("sizes", [(2, 3, 13, 4), (2, 3, 3, 20), (2, 3, 1, 1)])
def test_resize_sizes(img, ctm, mode, sizes):
    _resize(img, sizes=sizes, mode=mode, coordinate_transformation_mode=ctm)


@pytest.mark.parametrize("ctm", ["half_pixel", "pytorch_half_pixel", "asymmetric",
                                 "half_pixel_symmetric"])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("scales", [(1, 1, 2.0, 3.0), (1, 1, 0.5, 0.34), (1, 1, 1.7, 0.6)])
def test_resize_scales(img, ctm, mode, scales):
    _resize(img, scales=scales, mode=mode, coordinate_transformation_mode=ctm)


@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor",
                                          "ceil"])
@pytest.mark.parametrize("ctm", ["half_pixel", "asymmetric", "align_corners"])
def test_resize_nearest_modes(img, nearest_mode, ctm):
    _resize(img, sizes=(2, 3, 17, 5), mode="nearest", nearest_mode=nearest_mode,
            coordinate_transformation_mode=ctm)


def test_resize_float64_and_5d():
    # onnxruntime has no double Resize: check against its float32 run of the same data
    x = np.random.default_rng(12).standard_normal((1, 2, 4, 5, 6))
    for x, kw in ((x, dict(scales=(1, 1, 1.5, 0.6, 2.0), mode="linear")),
                  (x, dict(sizes=(1, 2, 7, 3, 11), mode="nearest")),
                  (x[0], dict(sizes=(2, 4, 8, 4), mode="cubic"))):
        consts = {"roi": None,
                  "scales": None if "scales" not in kw else np.array(kw["scales"], np.float32),
                  "sizes": None if "sizes" not in kw else np.array(kw["sizes"], np.int64)}
        model, feeds = one_node("Resize", {"x": x}, [x.dtype], 13, _trim(consts),
                                mode=kw["mode"])
        (got,), (want,) = run_ours(model, feeds), run_ort_float32(model, feeds)
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_antialias(img, mode):
    _resize(img, scales=(1, 1, 0.5, 0.3), mode=mode, antialias=1)
    _resize(img, sizes=(5, 2), axes=[2, 3], mode=mode, antialias=1)


def test_resize_cubic_exclude_outside(img):
    _resize(img, opset=11, sizes=(2, 3, 12, 5), mode="cubic", exclude_outside=1,
            cubic_coeff_a=-0.5)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_tf_crop_and_resize(img, mode):
    _resize(img, sizes=(5, 11), axes=[2, 3], roi=(-0.1, 0.2, 0.9, 0.7), mode=mode,
            coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-2.0)
    _resize(img, opset=13, sizes=(2, 3, 4, 4), roi=(0, 0, 0.2, 0.3, 1, 1, 0.8, 1.2), mode=mode,
            coordinate_transformation_mode="tf_crop_and_resize")


@pytest.mark.parametrize("policy", ["not_larger", "not_smaller"])
def test_resize_keep_aspect_ratio(img, policy):
    y = _resize(img, sizes=(20, 6), axes=[2, 3], mode="linear", keep_aspect_ratio_policy=policy)
    _resize(img, sizes=(20, 6), axes=[3, 2], mode="nearest", keep_aspect_ratio_policy=policy)
    # negative axes (onnxruntime 1.x ignores them, so compare with the positive spelling)
    model, feeds = one_node("Resize", {"x": img}, [img.dtype], 19,
                            {"roi": None, "scales": None, "sizes": np.array([20, 6], np.int64)},
                            mode="linear", axes=[-2, -1], keep_aspect_ratio_policy=policy)
    np.testing.assert_array_equal(run_ours(model, feeds)[0], y)


def test_resize_opset10_and_11(img):
    _resize(img, opset=10, scales=(1, 1, 2.5, 0.5), mode="nearest")
    _resize(img, opset=10, scales=(1, 1, 0.6, 1.7), mode="linear")
    _resize(img, opset=11, scales=(1, 1, 1.4, 2.7), mode="nearest",
            coordinate_transformation_mode="tf_half_pixel_for_nn")


def test_resize_integer_nearest_is_exact():
    x = np.random.default_rng(13).integers(0, 255, (1, 5, 7, 3)).astype(np.uint8)
    _resize(x, scales=(1, 1.5, 2.3, 1), mode="nearest", rtol=0, atol=0)


def test_resize_scales_and_sizes_fed_at_run_time(img):
    # small feeds become plan-time values (the plan is keyed by them)
    for name, value, attrs in (("scales", np.array([1, 1, 1.5, 0.5], np.float32), {}),
                               ("sizes", np.array([2, 3, 4, 13], np.int64), {"mode": "linear"})):
        ins = {"x": img, "roi": None, "scales": None, "sizes": None, name: value}
        model, feeds = one_node("Resize", _trim(ins), [img.dtype], 19, **attrs)
        check_against_ort(model, feeds, 1e-5, 1e-6)


def test_resize_needs_scales_or_sizes(img):
    model, feeds = one_node("Resize", {"x": img}, [img.dtype], 19,
                            {"roi": None, "scales": np.ones(4, np.float32),
                             "sizes": np.array([2, 3, 7, 9])})
    with pytest.raises(EdgetrainError, match="exactly one"):
        InferenceSession(model).run(None, feeds)
