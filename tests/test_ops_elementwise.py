"""Elementwise ops against onnxruntime: broadcasting properties (hypothesis) and unary math."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

from oracle import one_node, run_both, run_ours

SETTINGS = settings(max_examples=40, deadline=None)


def arrays(draw, shapes, dtype, nonzero=False):
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    out = []
    for s in shapes:
        if dtype.kind == "f":
            a = np.asarray(rng.standard_normal(s) * 3).astype(dtype)
        else:
            a = np.asarray(rng.integers(-20, 20, s)).astype(dtype)
        if nonzero:
            a[a == 0] = 1
        out.append(np.asarray(a))
    return out


BINARY = {"Add": None, "Sub": None, "Mul": None, "Div": None, "Max": None, "Min": None,
          "Equal": np.bool_, "Less": np.bool_, "Greater": np.bool_}


@SETTINGS
@given(data=st.data(), op=st.sampled_from(sorted(BINARY)),
       dtype=st.sampled_from([np.float32, np.float64, np.int32, np.int64]),
       shapes=mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=4, max_side=5))
def test_binary_broadcasting_matches_onnxruntime(data, op, dtype, shapes):
    dtype = np.dtype(dtype)
    a, b = arrays(data.draw, shapes.input_shapes, dtype, nonzero=op == "Div")
    model, feeds = one_node(op, [a, b], [BINARY[op] or dtype])
    (ours,), (ref,) = run_both(model, feeds)
    assert ours.shape == ref.shape == shapes.result_shape
    assert ours.dtype == ref.dtype
    if dtype.kind == "f":
        np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=0)
    else:
        np.testing.assert_array_equal(ours, ref)


@SETTINGS
@given(data=st.data(), shapes=mutually_broadcastable_shapes(num_shapes=3, max_dims=4, max_side=4),
       dtype=st.sampled_from([np.float32, np.int64]))
def test_where_broadcasting_matches_numpy(data, shapes, dtype):
    dtype = np.dtype(dtype)
    cshape, xshape, yshape = shapes.input_shapes
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    cond = np.asarray(rng.random(cshape) > 0.5)
    x, y = arrays(data.draw, [xshape, yshape], dtype)
    model, feeds = one_node("Where", [cond, x, y], [dtype])
    (ours,), (ref,) = run_both(model, feeds)
    np.testing.assert_array_equal(ours, np.where(cond, x, y))
    np.testing.assert_array_equal(ours, ref)


@SETTINGS
@given(data=st.data(), shapes=mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=4))
def test_variadic_max_min_broadcast(data, shapes):
    xs = arrays(data.draw, shapes.input_shapes, np.dtype(np.float32))
    for op, ref in (("Max", np.maximum), ("Min", np.minimum)):
        model, feeds = one_node(op, xs, [np.float32])
        (ours,) = run_ours(model, feeds)
        np.testing.assert_array_equal(ours, ref(ref(xs[0], xs[1]), xs[2]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["Neg", "Abs", "Sqrt", "Reciprocal", "Exp", "Log", "Sin", "Cos",
                                "Erf", "Tanh", "Sigmoid"])
def test_unary_matches_onnxruntime(op, dtype):
    x = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(dtype) * 4
    if op in ("Sqrt", "Log"):
        x = np.abs(x) + 0.1
    if op == "Sigmoid":
        x[0, 0, :3] = [-100, 100, 0]  # no overflow warnings or NaNs at the extremes
    model, feeds = one_node(op, [x], [dtype])
    try:
        (ours,), (ref,) = run_both(model, feeds)
    except ort.capi.onnxruntime_pybind11_state.NotImplemented:
        (ours,) = run_ours(model, feeds)
        ref = {"Erf": np.vectorize(__import__("math").erf)}.get(op, getattr(np, op.lower(), None))(x)
    np.testing.assert_allclose(ours, ref, rtol=2e-6 if dtype == np.float32 else 1e-12, atol=1e-7)


@pytest.mark.parametrize("opset,bounds", [(13, (-1.0, 0.5)), (13, (None, 0.5)), (13, (-1.0, None)),
                                          (13, (None, None)), (13, (1.0, -1.0))])
def test_clip_bounds(opset, bounds):
    x = np.linspace(-3, 3, 13, dtype=np.float32)
    ins = [x] + [None if v is None else np.array(v, np.float32) for v in bounds]  # None: absent
    model, feeds = one_node("Clip", ins, [np.float32], opset)
    (ours,), (ref,) = run_both(model, feeds)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("fmod", [0, 1])
def test_integer_div_and_mod_signs(fmod):
    a = np.array([7, -7, 7, -7, 0, 9], np.int64)
    b = np.array([2, 2, -2, -2, 3, -4], np.int64)
    for op, kw in (("Div", {}), ("Mod", {"fmod": fmod})):
        model, feeds = one_node(op, [a, b], [np.int64], **kw)
        (ours,), (ref,) = run_both(model, feeds)
        np.testing.assert_array_equal(ours, ref)


def test_cast_float_to_int_and_bool():
    x = np.array([-2.7, -0.5, 0.0, 0.5, 2.7, 1e3], np.float32)
    for to, dt in ((onnx.TensorProto.INT32, np.int32), (onnx.TensorProto.BOOL, np.bool_),
                   (onnx.TensorProto.FLOAT16, np.float16), (onnx.TensorProto.DOUBLE, np.float64)):
        model, feeds = one_node("Cast", [x], [dt], to=to)
        (ours,), (ref,) = run_both(model, feeds)
        np.testing.assert_array_equal(ours, ref)
