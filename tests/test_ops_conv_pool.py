"""Conv, ConvTranspose and pooling against onnxruntime on random shapes and attributes.

onnxruntime has no float64 Conv/ConvTranspose/AveragePool kernels: for float64 we run it on the
float32 cast of the same inputs and compare with a float32-sized tolerance.
"""
import numpy as np
import pytest

from edgetrain import OpError, ShapeError
from oracle import one_node, run_ort, run_ort_float32, run_ours

ORT_F64 = {"MaxPool"}  # ops onnxruntime runs in float64


def compare(op, arrays, outputs=1, opset=17, rtol=None, atol=None, **attrs):
    """Run one node with edgetrain and onnxruntime (float32 stand-in for float64) and compare."""
    dtype = arrays[0].dtype
    model, feeds = one_node(op, arrays, outputs, opset, **attrs)
    got = run_ours(model, feeds)
    if dtype == np.float64 and op not in ORT_F64:
        ref, tol = run_ort_float32(model, feeds), 1e-4
    else:
        ref, tol = run_ort(model, feeds), {np.float16: 1e-2}.get(dtype.type, 1e-5)
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype
        assert g.shape == r.shape, (g.shape, r.shape, attrs)
        np.testing.assert_allclose(g.astype(np.float64), r.astype(np.float64),
                                   rtol=rtol or tol, atol=atol or tol, err_msg=str(attrs))
    return got


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


# --- Conv --------------------------------------------------------------------------------------

def conv_case(rng, nd):
    kind = rng.choice(["dense", "group", "depthwise", "depthwise_mult", "pointwise"])
    cg = int(rng.integers(1, 4))
    group = {"dense": 1, "pointwise": int(rng.integers(1, 3))}.get(kind, int(rng.integers(2, 4)))
    if kind.startswith("depthwise"):
        cg, group = 1, int(rng.integers(2, 6))
    mult = 2 if kind == "depthwise_mult" else int(rng.integers(1, 3))
    c, m = cg * group, mult * group
    k = [1] * nd if kind == "pointwise" else [int(v) for v in rng.integers(1, 4, nd)]
    size = [int(v) for v in rng.integers(5, 9 if nd < 3 else 6, nd)]
    attrs = {"group": group, "strides": [int(v) for v in rng.integers(1, 3, nd)]}
    if kind != "pointwise" and rng.random() < 0.5:
        attrs["dilations"] = [int(v) for v in rng.integers(1, 3, nd)]
    pad_mode = rng.choice(["pads", "none", "SAME_UPPER", "SAME_LOWER", "VALID"])
    if pad_mode == "pads":
        attrs["pads"] = [int(v) for v in rng.integers(0, 3, 2 * nd)]
    elif pad_mode != "none":
        attrs["auto_pad"] = str(pad_mode)
        if pad_mode.startswith("SAME"):  # onnxruntime refuses dilated SAME convolutions
            attrs.pop("dilations", None)
    if rng.random() < 0.3:
        attrs["kernel_shape"] = k
    return (int(rng.integers(1, 3)), c, size), (m, cg, k), attrs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_random_matches_onnxruntime(nd, dtype):
    rng = np.random.default_rng(100 + nd)
    for _ in range(25 if nd < 3 else 12):
        (n, c, size), (m, cg, k), attrs = conv_case(rng, nd)
        arrays = [_rand(rng, (n, c, *size), dtype), _rand(rng, (m, cg, *k), dtype)]
        if rng.random() < 0.6:
            arrays.append(_rand(rng, (m,), dtype))
        compare("Conv", arrays, **attrs)


def test_conv_float16_matches_onnxruntime():
    rng = np.random.default_rng(7)
    x, w, b = (_rand(rng, s, np.float16) for s in [(2, 4, 9, 9), (6, 2, 3, 3), (6,)])
    compare("Conv", [x, w, b], group=2, pads=[1, 0, 2, 1], strides=[2, 1])


def test_conv_opset11_and_22_and_bigger_image():
    rng = np.random.default_rng(8)
    x, w = _rand(rng, (2, 8, 32, 32), np.float32), _rand(rng, (16, 8, 3, 3), np.float32)
    for opset in (11, 22):
        compare("Conv", [x, w], opset=opset, pads=[1, 1, 1, 1], rtol=1e-4, atol=1e-4)


def test_conv_errors_name_the_problem():
    x, w = np.zeros((1, 4, 5, 5), np.float32), np.zeros((2, 3, 3, 3), np.float32)
    with pytest.raises(ShapeError, match="C/group"):
        run_ours(*one_node("Conv", [x, w]))
    with pytest.raises(ShapeError, match="kernel_shape"):
        run_ours(*one_node("Conv", [x, np.zeros((2, 4, 3, 3), np.float32)], kernel_shape=[2, 2]))
    with pytest.raises(ShapeError, match="spatial shape"):
        run_ours(*one_node("Conv", [x, np.zeros((2, 4, 7, 7), np.float32)]))
    with pytest.raises(OpError, match="strides"):
        run_ours(*one_node("Conv", [x, np.zeros((2, 4, 3, 3), np.float32)], strides=[1, 1, 1]))


# --- ConvTranspose -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_transpose_random_matches_onnxruntime(nd, dtype):
    rng = np.random.default_rng(200 + nd)
    for _ in range(20 if nd < 3 else 10):
        group = int(rng.choice([1, 1, 2, 3]))
        cg, mg = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        k = [int(v) for v in rng.integers(1, 4, nd)]
        size = [int(v) for v in rng.integers(2, 6, nd)]
        s = [int(v) for v in rng.integers(1, 4, nd)]
        attrs = {"group": group, "strides": s}
        if rng.random() < 0.4:
            attrs["dilations"] = [int(v) for v in rng.integers(1, 3, nd)]
        d = attrs.get("dilations", [1] * nd)
        if rng.random() < 0.4:
            attrs["output_padding"] = [int(rng.integers(0, a)) for a in s]
        mode = rng.choice(["pads", "none", "output_shape", "VALID"])
        full = [st * (i - 1) + (kk - 1) * dl + 1 + op for st, i, kk, dl, op in
                zip(s, size, k, d, attrs.get("output_padding", [0] * nd))]
        if mode == "pads":
            attrs["pads"] = [int(rng.integers(0, max(1, f // 3))) for f in full * 2]
        elif mode == "output_shape":  # even total padding: onnxruntime splits odd ones differently
            attrs["output_shape"] = [f - 2 * int(rng.integers(0, max(1, f // 3))) for f in full]
        elif mode == "VALID":
            attrs["auto_pad"] = "VALID"
        arrays = [_rand(rng, (int(rng.integers(1, 3)), cg * group, *size), dtype),
                  _rand(rng, (cg * group, mg, *k), dtype)]
        if rng.random() < 0.5:
            arrays.append(_rand(rng, (mg * group,), dtype))
        compare("ConvTranspose", arrays, **attrs)


def test_conv_transpose_same_upper_matches_spec():
    # spec: SAME_UPPER puts the odd padding pixel at the end (node test convtranspose_autopad_same)
    x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    w = np.ones((1, 1, 3, 3), np.float32)
    (y,) = run_ours(*one_node("ConvTranspose", [x, w], auto_pad="SAME_UPPER", strides=[2, 2]))
    (full,) = run_ours(*one_node("ConvTranspose", [x, w], strides=[2, 2]))
    assert y.shape == (1, 1, 6, 6)
    np.testing.assert_array_equal(y, full[:, :, :6, :6])
    (lower,) = run_ours(*one_node("ConvTranspose", [x, w], auto_pad="SAME_LOWER", strides=[2, 2]))
    np.testing.assert_array_equal(lower, full[:, :, 1:, 1:])


def test_conv_transpose_output_shape_larger_than_full_pads_with_zeros():
    rng = np.random.default_rng(3)
    x, w = _rand(rng, (1, 2, 3, 3), np.float32), _rand(rng, (2, 1, 3, 3), np.float32)
    (full,) = run_ours(*one_node("ConvTranspose", [x, w], strides=[3, 2]))  # 9 x 7
    (y,) = run_ours(*one_node("ConvTranspose", [x, w], strides=[3, 2], output_shape=[10, 8]))
    assert y.shape == (1, 1, 10, 8)
    np.testing.assert_array_equal(y[:, :, :9, :7], full)
    assert not y[:, :, 9].any() and not y[:, :, :, 7].any()


# --- MaxPool / AveragePool ---------------------------------------------------------------------

def pool_case(rng, nd, allow_ceil=True):
    k = [int(v) for v in rng.integers(1, 4, nd)]
    attrs = {"kernel_shape": k, "strides": [int(v) for v in rng.integers(1, 4, nd)]}
    if rng.random() < 0.5:
        attrs["dilations"] = [int(v) for v in rng.integers(1, 3, nd)]
    mode = rng.choice(["pads", "none", "SAME_UPPER", "SAME_LOWER", "VALID"])
    if mode == "pads":  # a pad must be smaller than the kernel
        attrs["pads"] = [int(rng.integers(0, kk)) for kk in k * 2]
    elif mode != "none":
        attrs["auto_pad"] = str(mode)
        if mode.startswith("SAME"):  # onnxruntime ignores dilations here and fails on k < s
            attrs.pop("dilations", None)
            attrs["strides"] = [min(s, kk) for s, kk in zip(attrs["strides"], k)]
    if allow_ceil and mode in ("pads", "none") and rng.random() < 0.5:
        attrs["ceil_mode"] = 1
    size = [int(v) for v in rng.integers(6, 10 if nd < 3 else 7, nd)]
    return (int(rng.integers(1, 3)), int(rng.integers(1, 4)), *size), attrs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_maxpool_random_with_indices_matches_onnxruntime(nd, dtype):
    rng = np.random.default_rng(300 + nd)
    for i in range(25 if nd < 3 else 12):
        shape, attrs = pool_case(rng, nd)
        x = _rand(rng, shape, dtype)
        if i % 2 and nd == 2:
            attrs["storage_order"] = 1
        compare("MaxPool", [x], [dtype, np.int64], **attrs)
        compare("MaxPool", [x], **attrs)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.float16])
def test_maxpool_small_types(dtype):
    rng = np.random.default_rng(4)
    x = rng.integers(0, 100, (2, 3, 7, 7)).astype(dtype)
    compare("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    compare("MaxPool", [x], kernel_shape=[2, 3], ceil_mode=1, strides=[2, 2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_averagepool_random_matches_onnxruntime(nd, dtype):
    rng = np.random.default_rng(400 + nd)
    for i in range(25 if nd < 3 else 12):
        shape, attrs = pool_case(rng, nd)
        attrs["count_include_pad"] = i % 2
        compare("AveragePool", [_rand(rng, shape, dtype)], opset=19, **attrs)


def test_averagepool_float16_and_opset11():
    rng = np.random.default_rng(5)
    x = _rand(rng, (2, 3, 8, 8), np.float16)
    compare("AveragePool", [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
    x = _rand(rng, (2, 3, 8, 8), np.float32)
    compare("AveragePool", [x], opset=11, kernel_shape=[3, 2], pads=[1, 0, 1, 1],
            count_include_pad=1, ceil_mode=1, strides=[2, 3])


def test_averagepool_ceil_window_past_the_padding_counts_only_up_to_padding():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    # in=4, pads 1/1, k=3, s=2 -> ceil(1.5)+1 = 3 outputs; the last window covers padded
    # positions 4, 5, 6: input row 3, one pad row, and one row beyond the padding (not counted)
    model, feeds = one_node("AveragePool", [x], kernel_shape=[3, 3], strides=[2, 2],
                            pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)
    (y,) = run_ours(model, feeds)
    assert y.shape == (1, 1, 3, 3)
    assert y[0, 0, 2, 2] == pytest.approx(15 / 4)
    assert y[0, 0, 0, 2] == pytest.approx((3 + 7) / 6)
    np.testing.assert_allclose(y, run_ort(model, feeds)[0])


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 4, 5)])
def test_global_pools(op, shape):
    rng = np.random.default_rng(6)
    for dtype in (np.float32, np.float64, np.float16):
        compare(op, [_rand(rng, shape, dtype)])


def test_pool_errors():
    x = np.zeros((1, 2, 4, 4), np.float32)
    with pytest.raises(OpError, match="kernel_shape"):
        run_ours(*one_node("MaxPool", [x]))
    with pytest.raises(OpError, match="kernel_shape"):
        run_ours(*one_node("AveragePool", [x], kernel_shape=[2]))
    with pytest.raises(ShapeError, match="spatial shape"):
        run_ours(*one_node("MaxPool", [x], kernel_shape=[5, 5]))
    with pytest.raises(OpError, match="auto_pad"):
        run_ours(*one_node("MaxPool", [x], kernel_shape=[2, 2], auto_pad="SAME"))


def test_maxpool_indices_never_point_into_padding():
    # every real value equals the padding value: the index must still name a real element
    for x in (np.full((1, 2, 4, 5), -np.inf, np.float32), np.full((1, 2, 4, 5), -128, np.int8)):
        y, idx = run_ours(*one_node("MaxPool", [x], [x.dtype, np.int64], kernel_shape=[3, 3],
                                    pads=[1, 2, 1, 0], strides=[2, 1]))
        assert idx.min() >= 0 and idx.max() < x.size
        np.testing.assert_array_equal(x.reshape(-1)[idx], y)
        assert (idx // 20 == np.arange(2)[None, :, None, None]).all()  # own (n, c) plane


def test_blocked_kernels_match_unblocked(monkeypatch):
    """Tiny block budgets: blocks split images and channels, results stay the same."""
    from edgetrain.ops import conv as conv_mod, pool as pool_mod

    rng = np.random.default_rng(9)
    x = _rand(rng, (3, 6, 9, 8), np.float32)
    cases = [("Conv", [x, _rand(rng, (12, 1, 3, 3), np.float32)], dict(group=6, pads=[1] * 4)),
             ("Conv", [x, _rand(rng, (4, 3, 3, 2), np.float32)], dict(group=2, strides=[2, 1])),
             ("ConvTranspose", [x, _rand(rng, (6, 2, 3, 3), np.float32)], dict(strides=[2, 2])),
             ("AveragePool", [x], dict(kernel_shape=[3, 3], pads=[1] * 4, ceil_mode=1,
                                       strides=[2, 2])),
             ("MaxPool", [x], dict(kernel_shape=[2, 3], pads=[1] * 4, strides=[2, 2]))]
    before = [run_ours(*one_node(op, arrs, **a)) for op, arrs, a in cases]
    monkeypatch.setattr(conv_mod, "COLS_BUDGET", 1)
    monkeypatch.setattr(conv_mod, "BLOCK_BUDGET", 300)
    monkeypatch.setattr(pool_mod, "BLOCK_BUDGET", 200)
    for (op, arrs, a), ref in zip(cases, before):
        (got,) = run_ours(*one_node(op, arrs, **a))
        np.testing.assert_allclose(got, ref[0], rtol=1e-6, atol=1e-6)
        compare(op, arrs, **a)


@pytest.mark.parametrize("opset", [7, 8, 10, 11, 12])
def test_older_opsets(opset):
    rng = np.random.default_rng(opset)
    x = _rand(rng, (2, 4, 7, 6), np.float32)
    compare("Conv", [x, _rand(rng, (2, 2, 3, 3), np.float32)], opset=opset, group=2,
            pads=[1, 0, 0, 1])
    compare("ConvTranspose", [x, _rand(rng, (4, 3, 2, 2), np.float32)], opset=opset,
            strides=[2, 2], pads=[0, 1, 1, 0])
    compare("AveragePool", [x], opset=opset, kernel_shape=[3, 2], pads=[1, 1, 1, 0],
            count_include_pad=1)
    n_out = 2 if opset >= 8 else 1
    compare("MaxPool", [x], [np.float32, np.int64][:n_out], opset=opset, kernel_shape=[2, 3],
            strides=[2, 1])
