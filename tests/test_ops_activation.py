"""Activation and normalization ops against onnxruntime, plus Dropout modes and error cases."""
import numpy as np
import pytest

import edgetrain
from edgetrain.errors import EdgetrainError, OpError, ShapeError
from oracle import (assert_all_close, assert_close, one_node, run_both, run_ort,
                    run_ort_float32, run_ours)


def ort_or_float32(model, feeds):
    """onnxruntime's answer; for float64 ops it lacks, its float32 answer widened back."""
    try:
        return run_ort(model, feeds), 1e-6
    except Exception as e:  # NOT_IMPLEMENTED for this element type
        if "NOT_IMPLEMENTED" not in str(e) or next(iter(feeds.values())).dtype != np.float64:
            raise
        return run_ort_float32(model, feeds), 2e-6


POINTWISE = [
    ("Relu", 14, {}), ("LeakyRelu", 16, {}), ("LeakyRelu", 16, {"alpha": 0.3}),
    ("Elu", 22, {}), ("Elu", 22, {"alpha": 0.5}), ("Selu", 22, {}),
    ("Selu", 22, {"alpha": 2.0, "gamma": 0.5}), ("Softplus", 22, {}),
    ("Gelu", 20, {}), ("Gelu", 20, {"approximate": "tanh"}),
    ("HardSigmoid", 22, {}), ("HardSigmoid", 22, {"alpha": 0.3, "beta": 0.4}),
    ("HardSwish", 22, {}), ("Identity", 21, {}),
    ("Relu", 6, {}), ("Elu", 6, {}), ("Softplus", 1, {}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op,opset,attrs", POINTWISE, ids=lambda v: str(v))
def test_pointwise_matches_onnxruntime(op, opset, attrs, dtype):
    rng = np.random.default_rng(hash((op, opset)) % 2**32)
    x = (rng.standard_normal((3, 4, 5)) * 4).astype(dtype)
    x.flat[:8] = [0.0, -0.0, 1e-7, -1e-7, 60.0, -60.0, 95.0, -95.0]  # edges and large values
    model, feeds = one_node(op, [x], [x.dtype], opset, **attrs)
    (got,) = run_ours(model, feeds)
    (want,), rtol = ort_or_float32(model, feeds)
    assert_close(got, want, rtol, atol=1e-6)
    assert np.isfinite(got).all()


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.float16])
def test_relu_other_types(dtype):
    x = np.arange(-6, 6).reshape(3, 4).astype(dtype)
    (got,) = run_ours(*one_node("Relu", [x], [dtype], 14))
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, np.maximum(x, 0))


def test_softplus_and_gelu_stable_for_huge_inputs():
    x = np.array([-1e30, -1e4, -50, 0, 50, 1e4, 1e30], np.float32)
    (sp,) = run_ours(*one_node("Softplus", [x], [np.float32], 22))
    np.testing.assert_allclose(sp, np.where(x > 0, x, 0) + np.log1p(np.exp(-np.abs(x))),
                               rtol=1e-6)
    (g,) = run_ours(*one_node("Gelu", [x], [np.float32], 20, approximate="tanh"))
    assert np.isfinite(g).all()
    np.testing.assert_allclose(g[[0, 1, 5, 6]], [0, 0, 1e4, 1e30], rtol=1e-6)


SOFTMAX_CASES = [(13, None), (13, 0), (13, 1), (13, -1), (13, -3),
                 (11, None), (11, 0), (11, 2), (11, -1), (1, None)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("opset,axis", SOFTMAX_CASES)
def test_softmax_matches_onnxruntime(op, opset, axis, dtype):
    rng = np.random.default_rng(opset * 7 + (axis or 0))
    x = (rng.standard_normal((2, 3, 4)) * 5).astype(dtype)
    x[0, 0, 0] = 1000.0  # stability: exp would overflow without the max shift
    attrs = {} if axis is None else {"axis": axis}
    model, feeds = one_node(op, [x], [dtype], opset, **attrs)
    (got,), (want,) = run_both(model, feeds)
    assert_close(got, want, 1e-5, atol=1e-6)
    assert np.isfinite(got).all()


def test_softmax_float16_and_empty():
    x = (np.random.default_rng(0).standard_normal((4, 6)) * 8).astype(np.float16)
    model, feeds = one_node("Softmax", [x], [np.float16], 13)
    (got,), (want,) = run_both(model, feeds)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=2e-3)
    empty = np.zeros((0, 3), np.float32)
    (got,) = run_ours(*one_node("LogSoftmax", [empty], [np.float32], 13))
    assert got.shape == (0, 3)


def test_softmax_bad_axis_is_refused():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(OpError, match="axis 2 is out of range"):
        run_ours(*one_node("Softmax", [x], [np.float32], 13, axis=2))


# --- Dropout -----------------------------------------------------------------------------------

def test_dropout_inference_is_identity_with_true_mask():
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    for opset in (7, 10, 13, 22):
        attrs = {"ratio": 0.3} if opset < 12 else {}
        y, mask = run_ours(*one_node("Dropout", [x], [np.float32, np.bool_], opset, **attrs))
        np.testing.assert_array_equal(y, x)
        assert mask.shape == x.shape and mask.all()
        assert mask.dtype == (np.float32 if opset < 10 else np.bool_)
    y, mask = run_ours(*one_node("Dropout", [x], [np.float32, np.float32], 6, is_test=1))
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("const_mode", [True, False])
def test_dropout_training_mask_and_scale(const_mode):
    x = np.random.default_rng(2).standard_normal((64, 64)).astype(np.float32) + 5
    r, t = np.array(0.25, np.float32), np.array(True)
    ins, consts = ([x], {"x1": r, "x2": t}) if const_mode else ([x, r, t], None)
    model, feeds = one_node("Dropout", ins, [np.float32, np.bool_], 13, consts=consts, seed=7)
    sess = edgetrain.InferenceSession(model, check=True)
    y1, m1 = sess.run(None, feeds)
    assert m1.dtype == np.bool_ and 0.7 < m1.mean() < 0.8
    np.testing.assert_allclose(y1, np.where(m1, x / 0.75, 0), rtol=1e-6)
    # the same seed gives the same first mask in a new session (it matches the ONNX reference)
    ref = np.random.RandomState(7).uniform(0, 1, x.shape) >= 0.25
    np.testing.assert_array_equal(m1, ref)
    y2, m2 = sess.run(None, feeds)  # the generator advances from run to run
    assert (m1 != m2).any()


def test_dropout_training_mode_false_and_zero_ratio():
    x = np.ones((5, 5), np.float32)
    for r, t in ((0.5, False), (0.0, True)):
        y, m = run_ours(*one_node("Dropout", [x, np.array(r, np.float32), np.array(t)],
                                  [np.float32, np.bool_], 13))
        np.testing.assert_array_equal(y, x)
        assert m.all()
    y, m = run_ours(*one_node("Dropout", [x, np.array(1.0, np.float32), np.array(True)],
                              [np.float32, np.bool_], 13))
    assert not y.any() and not m.any()
    with pytest.raises(EdgetrainError, match="ratio"):
        run_ours(*one_node("Dropout", [x, np.array(1.5, np.float32), np.array(True)],
                           [np.float32], 13))


# --- BatchNormalization ------------------------------------------------------------------------

def bn_inputs(rng, shape, dtype):
    c = shape[1]
    return [rng.standard_normal(shape).astype(dtype) * 3 + 1,
            rng.standard_normal(c).astype(dtype), rng.standard_normal(c).astype(dtype),
            rng.standard_normal(c).astype(dtype), rng.random(c).astype(dtype) + 0.5]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 4, 3, 5), (1, 2, 2, 3, 2)])
@pytest.mark.parametrize("opset", [9, 15])
def test_batchnorm_inference_matches_onnxruntime(shape, dtype, opset):
    rng = np.random.default_rng(len(shape))
    model, feeds = one_node("BatchNormalization", bn_inputs(rng, shape, dtype), [dtype], opset,
                            epsilon=1e-3)
    (got,), (want,) = run_both(model, feeds)
    assert_close(got, want, 1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (3, 2, 4, 5)])
def test_batchnorm_training_matches_onnxruntime(shape, dtype):
    rng = np.random.default_rng(10 + len(shape))
    model, feeds = one_node("BatchNormalization", bn_inputs(rng, shape, dtype),
                            [dtype] * 3, 15, training_mode=1, momentum=0.8)
    got, want = run_both(model, feeds)
    assert_all_close(got, want, 1e-5, atol=1e-6)
    x, s, b, m, v = feeds.values()
    axes = (0,) + tuple(range(2, x.ndim))
    np.testing.assert_allclose(got[1], m * 0.8 + x.mean(axes) * 0.2, rtol=1e-5)
    np.testing.assert_allclose(got[2], v * 0.8 + x.var(axes) * 0.2, rtol=1e-5)


def test_batchnorm_old_training_outputs_and_float16():
    rng = np.random.default_rng(3)
    ins = bn_inputs(rng, (6, 2, 3), np.float32)
    outs = run_ours(*one_node("BatchNormalization", ins, [np.float32] * 5, 9))
    x = ins[0]
    np.testing.assert_allclose(outs[3], x.mean((0, 2)), rtol=1e-5)
    np.testing.assert_allclose(outs[4], x.var((0, 2)), rtol=1e-5)
    h = [a.astype(np.float16) for a in ins]
    model, feeds = one_node("BatchNormalization", h, [np.float16], 15)
    (got,), (want,) = run_both(model, feeds)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=1e-2,
                               rtol=1e-2)


def test_batchnorm_bad_shapes_are_refused():
    rng = np.random.default_rng(4)
    ins = bn_inputs(rng, (2, 3, 4), np.float32)
    ins[1] = np.ones(4, np.float32)
    with pytest.raises(ShapeError, match="scale must have shape"):
        run_ours(*one_node("BatchNormalization", ins, [np.float32], 15))


# --- LayerNormalization ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", [((2, 3, 4), -1), ((2, 3, 4), 1), ((2, 3, 4), 0),
                                        ((5, 6), -2), ((2, 3, 4, 5), 2)])
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_onnxruntime(shape, axis, bias, dtype):
    rng = np.random.default_rng(len(shape) * 10 + axis)
    x = (rng.standard_normal(shape) * 4 + 2).astype(dtype)
    norm_shape = shape[axis:]
    ins = [x, rng.standard_normal(norm_shape).astype(dtype)]
    if bias:
        ins.append(rng.standard_normal(norm_shape[-1:]).astype(dtype))  # broadcast bias
    model, feeds = one_node("LayerNormalization", ins, [dtype, np.float32, np.float32], 17,
                            axis=axis, epsilon=1e-4)
    assert_all_close(*run_both(model, feeds), 1e-5, atol=1e-5)


def test_layernorm_only_y_and_float16():
    x = np.random.default_rng(5).standard_normal((3, 8)).astype(np.float16)
    model, feeds = one_node("LayerNormalization", [x, np.ones(8, np.float16)], [np.float16], 17)
    (got,), (want,) = run_both(model, feeds)
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), atol=5e-3)


def test_layernorm_bad_scale_is_refused():
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ShapeError, match="Scale and B must broadcast"):
        run_ours(*one_node("LayerNormalization", [x, np.ones(3, np.float32)], [np.float32], 17))
    with pytest.raises(OpError, match="axis 3 is out of range"):
        run_ours(*one_node("LayerNormalization", [x, np.ones(4, np.float32)], [np.float32], 17,
                           axis=3))


def test_gelu_bad_approximate_is_refused():
    x = np.zeros(3, np.float32)
    with pytest.raises(EdgetrainError, match="approximate"):
        run_ours(*one_node("Gelu", [x], [np.float32], 20, approximate="fast"))
