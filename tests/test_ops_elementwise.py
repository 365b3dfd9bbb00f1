"""Elementwise ops against onnxruntime: broadcasting properties (hypothesis) and unary math."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes
from onnx import helper

import edgetrain

SETTINGS = settings(max_examples=40, deadline=None)


def one_node(op, in_arrays, out_dtypes, opset=17, **attrs):
    names = [f"x{i}" for i in range(len(in_arrays))]
    ins = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for n, a in zip(names, in_arrays)]
    outs = [helper.make_tensor_value_info(f"y{i}", helper.np_dtype_to_tensor_dtype(np.dtype(d)), None)
            for i, d in enumerate(out_dtypes)]
    node = helper.make_node(op, names, [o.name for o in outs], **attrs)
    model = helper.make_model(helper.make_graph([node], "g", ins, outs),
                              opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    return model, dict(zip(names, in_arrays))


def both(model, feeds):
    ours = edgetrain.InferenceSession(model, check=True).run(None, feeds)
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)
    return ours, ref


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
    (ours,), (ref,) = both(model, feeds)
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
    (ours,), (ref,) = both(model, feeds)
    np.testing.assert_array_equal(ours, np.where(cond, x, y))
    np.testing.assert_array_equal(ours, ref)


@SETTINGS
@given(data=st.data(), shapes=mutually_broadcastable_shapes(num_shapes=3, max_dims=3, max_side=4))
def test_variadic_max_min_broadcast(data, shapes):
    xs = arrays(data.draw, shapes.input_shapes, np.dtype(np.float32))
    for op, ref in (("Max", np.maximum), ("Min", np.minimum)):
        model, feeds = one_node(op, xs, [np.float32])
        (ours,) = edgetrain.InferenceSession(model, check=True).run(None, feeds)
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
        (ours,), (ref,) = both(model, feeds)
    except ort.capi.onnxruntime_pybind11_state.NotImplemented:
        (ours,) = edgetrain.InferenceSession(model, check=True).run(None, feeds)
        ref = {"Erf": np.vectorize(__import__("math").erf)}.get(op, getattr(np, op.lower(), None))(x)
    np.testing.assert_allclose(ours, ref, rtol=2e-6 if dtype == np.float32 else 1e-12, atol=1e-7)


@pytest.mark.parametrize("opset,bounds", [(13, (-1.0, 0.5)), (13, (None, 0.5)), (13, (-1.0, None)),
                                          (13, (None, None)), (13, (1.0, -1.0))])
def test_clip_bounds(opset, bounds):
    x = np.linspace(-3, 3, 13, dtype=np.float32)
    lo, hi = bounds
    ins = [x] + [np.array(v, np.float32) for v in bounds if v is not None]
    names = ["x0", "x1" if lo is not None else "", ("x2" if lo is not None else "x1") if hi is not None else ""]
    vis = [helper.make_tensor_value_info(f"x{i}", onnx.TensorProto.FLOAT, a.shape) for i, a in enumerate(ins)]
    node = helper.make_node("Clip", [n for n in names], ["y0"])
    model = helper.make_model(helper.make_graph([node], "g", vis, [helper.make_tensor_value_info("y0", 1, None)]),
                              opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    feeds = {f"x{i}": a for i, a in enumerate(ins)}
    (ours,), (ref,) = both(model, feeds)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("fmod", [0, 1])
def test_integer_div_and_mod_signs(fmod):
    a = np.array([7, -7, 7, -7, 0, 9], np.int64)
    b = np.array([2, 2, -2, -2, 3, -4], np.int64)
    for op, kw in (("Div", {}), ("Mod", {"fmod": fmod})):
        model, feeds = one_node(op, [a, b], [np.int64], **kw)
        (ours,), (ref,) = both(model, feeds)
        np.testing.assert_array_equal(ours, ref)


def test_cast_float_to_int_and_bool():
    x = np.array([-2.7, -0.5, 0.0, 0.5, 2.7, 1e3], np.float32)
    for to, dt in ((onnx.TensorProto.INT32, np.int32), (onnx.TensorProto.BOOL, np.bool_),
                   (onnx.TensorProto.FLOAT16, np.float16), (onnx.TensorProto.DOUBLE, np.float64)):
        model, feeds = one_node("Cast", [x], [dt], to=to)
        (ours,), (ref,) = both(model, feeds)
        np.testing.assert_array_equal(ours, ref)
