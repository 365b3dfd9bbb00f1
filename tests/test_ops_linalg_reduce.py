"""MatMul, Gemm, Einsum and the reductions against onnxruntime, plus edge cases."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import edgetrain
from oracle import assert_close, one_node, run_both, run_ours

SETTINGS = settings(max_examples=30, deadline=None)
RNG = np.random.default_rng(0)


def rand(shape, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.asarray(RNG.standard_normal(shape)).astype(dtype)
    return np.asarray(RNG.integers(-9, 10, shape)).astype(dtype)


def close(a, b, dtype):
    """Within 1e-5 for float32, 1e-12 for float64; equal for the other types."""
    dtype = np.dtype(dtype)
    tol = (1e-5 if dtype == np.float32 else 1e-12) if dtype.kind == "f" else 0.0
    assert_close(a, b, rtol=tol, atol=tol)


# --- MatMul ------------------------------------------------------------------------------------

@st.composite
def matmul_shapes(draw):
    m, k, n = (draw(st.integers(1, 5)) for _ in range(3))
    batch = draw(st.lists(st.integers(1, 3), max_size=3))
    ba = [draw(st.sampled_from([d, 1])) for d in batch][draw(st.integers(0, len(batch))):]
    bb = [draw(st.sampled_from([d, 1])) for d in batch][draw(st.integers(0, len(batch))):]
    a = [k] if draw(st.booleans()) and not ba else ba + [m, k]
    b = [k] if draw(st.booleans()) and not bb else bb + [k, n]
    return tuple(a), tuple(b)


@SETTINGS
@given(shapes=matmul_shapes(), dtype=st.sampled_from([np.float32, np.float64, np.int32, np.int64]))
def test_matmul_matches_onnxruntime(shapes, dtype):
    a, b = rand(shapes[0], dtype), rand(shapes[1], dtype)
    (y,), (ref,) = run_both(*one_node("MatMul", [a, b], [dtype], opset=13))
    close(y, ref, dtype)
    assert y.shape == np.matmul(a, b).shape


def test_matmul_float16_accumulates_wide():
    a, b = rand((3, 4, 64), np.float16), rand((64, 5), np.float16)
    (y,) = run_ours(*one_node("MatMul", [a, b], [np.float16]))
    want = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.float16)
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y, want)


def test_matmul_noncontiguous_batch_and_zero_k():
    a = rand((4, 3, 2), np.float32).transpose(1, 0, 2)  # [3, 4, 2], not C-contiguous
    (y,) = run_ours(*one_node("MatMul", [np.ascontiguousarray(a), rand((2, 5), np.float32)],
                              [np.float32]))
    assert y.shape == (3, 4, 5)
    (y,) = run_ours(*one_node("MatMul", [rand((2, 0), np.float32), rand((0, 3), np.float32)],
                              [np.float32]))
    np.testing.assert_array_equal(y, np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("sa,sb", [((2, 3), (4, 5)), ((2, 2, 3), (3, 3, 4)), ((), (3,))])
def test_matmul_bad_shapes(sa, sb):
    with pytest.raises(edgetrain.ShapeError):
        run_ours(*one_node("MatMul", [rand(sa, np.float32), rand(sb, np.float32)], [np.float32]))


# --- Gemm --------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("cshape", [None, (), (1,), (5,), (1, 5), (3, 1), (3, 5)])
def test_gemm_matches_onnxruntime(dtype, trans, cshape):
    m, k, n = 3, 4, 5
    a = rand((k, m) if trans[0] else (m, k), dtype)
    b = rand((n, k) if trans[1] else (k, n), dtype)
    consts = {"c": None if cshape is None else rand(cshape, dtype)}
    model, feeds = one_node("Gemm", [a, b], [dtype], opset=13, consts=consts, alpha=0.5,
                            beta=-2.0, transA=trans[0], transB=trans[1])
    (y,), (ref,) = run_both(model, feeds)
    close(y, ref, dtype)


def test_gemm_integer_and_old_opset():
    a, b, c = rand((2, 3), np.int64), rand((3, 4), np.int64), rand((4,), np.int64)
    (y,) = run_ours(*one_node("Gemm", [a, b, c], [np.int64], opset=13, alpha=2.0, beta=3.0))
    np.testing.assert_array_equal(y, 2 * a @ b + 3 * c)
    a, b, c = rand((2, 3), np.float32), rand((3, 4), np.float32), rand((2, 4), np.float32)
    (y,), (ref,) = run_both(*one_node("Gemm", [a, b, c], [np.float32], opset=7))
    close(y, ref, np.float32)


@pytest.mark.parametrize("cshape", [(2,), (5, 3), (2, 3, 5)])
def test_gemm_bad_c(cshape):
    a, b = rand((3, 4), np.float32), rand((4, 5), np.float32)
    with pytest.raises(edgetrain.ShapeError):
        run_ours(*one_node("Gemm", [a, b], [np.float32], consts={"c": rand(cshape, np.float32)}))


# --- Einsum ------------------------------------------------------------------------------------

EINSUM = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
    ("ii->i", [(4, 4)]),
    ("bii->bi", [(2, 3, 3)]),
    ("ij->", [(3, 4)]),
    ("ij->ji", [(3, 4)]),
    ("ij", [(3, 4)]),
    ("ji", [(3, 4)]),
    ("i,i", [(5,), (5,)]),
    ("i,j", [(3,), (4,)]),
    ("ij, jk", [(3, 4), (4, 5)]),
    ("...ii->...i", [(2, 3, 3)]),
    ("b...j,bj->b...", [(2, 3, 4), (2, 4)]),
    ("...j,j", [(2, 3, 4), (4,)]),
    ("abc,cd,de->abe", [(2, 3, 4), (4, 5), (5, 2)]),
    ("i->i", [(0,)]),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("eq,shapes", EINSUM, ids=[e for e, _ in EINSUM])
def test_einsum_matches_onnxruntime(eq, shapes, dtype):
    xs = [rand(s, dtype) for s in shapes]
    (y,), (ref,) = run_both(*one_node("Einsum", xs, [dtype], opset=12, equation=eq))
    close(y, ref, dtype)
    assert y.shape == np.einsum(eq.replace(" ", ""), *xs).shape


@pytest.mark.parametrize("eq,shapes", [
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (3, 4, 5)]),  # '...' of different ranks broadcast
    ("Ba,aC", [(2, 3), (3, 4)]),                        # upper case sorts first (ORT refuses)
    ("zA", [(2, 3)]),
])
def test_einsum_matches_numpy(eq, shapes):
    xs = [rand(s, np.float64) for s in shapes]
    (y,) = run_ours(*one_node("Einsum", xs, [np.float64], opset=12, equation=eq))
    want = np.einsum(eq, *xs)
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=1e-12)


def test_einsum_ellipsis_dropped_from_output_is_summed_and_ints():
    x, w = rand((2, 3, 4), np.float64), rand((4, 5), np.float64)
    (y,) = run_ours(*one_node("Einsum", [x, w], [np.float64], opset=12, equation="...j,jk->k"))
    np.testing.assert_allclose(y, np.einsum("abj,jk->k", x, w))
    a, b = rand((3, 4), np.int32), rand((4, 2), np.int32)
    (y,) = run_ours(*one_node("Einsum", [a, b], [np.int32], opset=12, equation="ij,jk"))
    np.testing.assert_array_equal(y, a @ b)


@pytest.mark.parametrize("eq,shapes,err", [
    ("ij,jk->ik", [(3, 4), (5, 6)], edgetrain.ShapeError),       # label sizes differ
    ("ijk", [(3, 4)], edgetrain.ShapeError),                      # rank mismatch
    ("ij,jk", [(3, 4)], edgetrain.OpError),                       # term count
    ("ij->k", [(3, 4)], edgetrain.OpError),                       # unknown output label
    ("ij->ii", [(3, 4)], edgetrain.OpError),                      # repeated output label
    ("i1->i", [(3, 4)], edgetrain.OpError),                       # bad character
    ("......i", [(3, 4)], edgetrain.OpError),                     # two ellipses
])
def test_einsum_errors(eq, shapes, err):
    with pytest.raises(err):
        run_ours(*one_node("Einsum", [rand(s, np.float32) for s in shapes], [np.float32], opset=12,
                           equation=eq))


# --- Reduce* -----------------------------------------------------------------------------------

REDUCE = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceLogSumExp"]


def reduce_model(op, x, axes, keepdims, opset, noop=None):
    as_input = opset >= (13 if op == "ReduceSum" else 18)
    attrs = {"keepdims": keepdims}
    if noop is not None:
        attrs["noop_with_empty_axes"] = noop
    if as_input:
        consts = {"axes": None if axes is None else np.asarray(axes, np.int64)}
        return one_node(op, [x], [x.dtype], opset=opset, consts=consts, **attrs)
    if axes is not None:
        attrs["axes"] = list(axes)
    return one_node(op, [x], [x.dtype], opset=opset, **attrs)


@pytest.mark.parametrize("op", REDUCE)
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_reduce_matches_onnxruntime(op, opset, dtype):
    for shape, axes, kd in [((2, 3, 4), (1,), 1), ((2, 3, 4), (0, -1), 0), ((2, 3, 4), None, 1),
                            ((2, 3, 4), None, 0), ((5,), (0,), 0), ((), None, 1),
                            ((3, 1, 2), (2, 0), 1)]:
        x = rand(shape, dtype)
        (y,), (ref,) = run_both(*reduce_model(op, x, axes, kd, opset))
        close(y, ref, dtype)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_reduce_integers_match_onnxruntime(op, dtype):
    x = rand((3, 4, 2), dtype)
    (y,), (ref,) = run_both(*reduce_model(op, x, (0, 2), 0, 18))
    close(y, ref, dtype)


@pytest.mark.parametrize("op", REDUCE)
def test_reduce_noop_with_empty_axes(op):
    x = rand((2, 3), np.float32)
    (y,) = run_ours(*reduce_model(op, x, [], 1, 18, noop=1))
    np.testing.assert_array_equal(y, x)
    (y,), (ref,) = run_both(*reduce_model(op, x, [], 0, 18, noop=0))  # empty axes: reduce all
    close(y, ref, np.float32)


@pytest.mark.parametrize("op,dtype,want", [
    ("ReduceSum", np.float32, 0), ("ReduceL2", np.float32, 0),
    ("ReduceLogSumExp", np.float32, -np.inf), ("ReduceMax", np.float32, -np.inf),
    ("ReduceMin", np.float32, np.inf), ("ReduceMax", np.int32, np.iinfo(np.int32).min),
    ("ReduceMin", np.uint8, 255), ("ReduceMax", np.bool_, False), ("ReduceMin", np.bool_, True),
])
def test_reduce_empty_set(op, dtype, want):
    x = np.zeros((2, 0, 4), dtype)
    opset = 20 if dtype == np.bool_ else 18
    (y,) = run_ours(*reduce_model(op, x, (1,), 1, opset))
    assert y.dtype == np.dtype(dtype) and y.shape == (2, 1, 4)
    np.testing.assert_array_equal(y, np.full((2, 1, 4), want, dtype))
    (y,) = run_ours(*reduce_model(op, x, (2,), 0, opset))  # a non-reduced zero dimension
    assert y.shape == (2, 0)


def test_reduce_log_sum_exp_is_stable():
    x = np.array([[1000.0, 1000.0], [-1000.0, -np.inf], [-np.inf, -np.inf], [np.inf, 0]],
                 np.float32)
    (y,) = run_ours(*reduce_model("ReduceLogSumExp", x, (1,), 0, 18))
    np.testing.assert_allclose(y, [1000 + np.log(2), -1000, -np.inf, np.inf], rtol=1e-6)


def test_reduce_float16_and_int_mean():
    x = np.full((4096,), 1.0, np.float16)
    (y,) = run_ours(*reduce_model("ReduceSum", x, None, 0, 18))
    assert y.dtype == np.float16 and y == 4096  # float16 alone would stop counting at 2048
    x = np.array([[1, 2], [-3, -4]], np.int32)
    (y,) = run_ours(*reduce_model("ReduceMean", x, (1,), 0, 18))
    np.testing.assert_array_equal(y, np.array([1, -3], np.int32))  # truncated toward zero


@pytest.mark.parametrize("axes,err", [((3,), edgetrain.OpError), ((0, -2), edgetrain.OpError)])
def test_reduce_bad_axes(axes, err):
    with pytest.raises(err):
        run_ours(*reduce_model("ReduceSum", rand((2, 3), np.float32), axes, 1, 18))


# --- ArgMax ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.int32])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("last", [0, 1])
def test_argmax_matches_onnxruntime(dtype, axis, keepdims, last):
    x = np.asarray(RNG.integers(0, 3, (3, 4, 5))).astype(dtype)  # many ties
    model, feeds = one_node("ArgMax", [x], [np.int64], opset=13, axis=axis, keepdims=keepdims,
                            select_last_index=last)
    (y,), (ref,) = run_both(model, feeds)
    close(y, ref, np.int64)


def test_argmax_errors():
    with pytest.raises(edgetrain.ShapeError):
        run_ours(*one_node("ArgMax", [np.zeros((2, 0), np.float32)], [np.int64], axis=1))
    with pytest.raises(edgetrain.OpError):
        run_ours(*one_node("ArgMax", [np.zeros((2, 3), np.float32)], [np.int64], axis=2))
