"""The fast paths of the hot kernels (transformer and MLP training): Erf's polynomial against
math.erf, and every kernel that writes into its planned output giving the same bits as when it
returns a new array, on the shapes a transformer step has (and on awkward ones)."""
import math

import numpy as np
import pytest

from edgetrain.ops._erf import erf
from edgetrain.ops.registry import ET_DOMAIN, make_context

RNG = np.random.default_rng(0)
MATH_ERF = np.frompyfunc(math.erf, 1, 1)


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in float32 steps (0 for equal values, across zero counted through it)."""
    ia, ib = (v.astype(np.float32).view(np.int32).astype(np.int64) for v in (a, b))
    ia, ib = (np.where(i < 0, -(i & 0x7FFFFFFF), i) for i in (ia, ib))
    return np.abs(ia - ib)


def test_erf_float32_within_one_ulp_of_math_erf():
    x = np.concatenate([
        RNG.uniform(-4.5, 4.5, 400_000), RNG.standard_normal(100_000) * 2,
        np.exp(RNG.uniform(-90, 1.5, 50_000)) * RNG.choice([-1, 1], 50_000),
        np.arange(0x3F000000, 0x3F000000 + 20_000, dtype=np.int32).view(np.float32),  # near 0.5
        [0.0, -0.0, 1e-45, -1e-45, 3.9, 3.92, 3.93, 4.0, -4.0, 10.0, 1e30, -np.inf, np.inf],
    ]).astype(np.float32)
    want = MATH_ERF(x.astype(np.float64)).astype(np.float64).astype(np.float32)
    got = erf(x)
    assert got.dtype == np.float32
    assert ulps(got, want).max() <= 1
    assert (ulps(got, want) == 0).mean() > 0.95
    np.testing.assert_array_equal(erf(np.array([np.inf, -np.inf], np.float32)), [1, -1])
    assert np.isnan(erf(np.array([np.nan], np.float32)))[0]
    assert np.signbit(erf(np.array([-0.0], np.float32)))[0]


def test_erf_float16_and_float64():
    x = RNG.uniform(-5, 5, 5000)
    want = MATH_ERF(x).astype(np.float64)
    h = erf(x.astype(np.float16))
    assert h.dtype == np.float16
    np.testing.assert_allclose(h.astype(np.float64), MATH_ERF(
        x.astype(np.float16).astype(np.float64)).astype(np.float64), atol=5e-4)
    np.testing.assert_array_equal(erf(x), want)  # float64: math.erf itself
    np.testing.assert_allclose(erf(x.astype(np.float32), scale=1 / math.sqrt(2)),
                               MATH_ERF(x.astype(np.float32) / math.sqrt(2)).astype(float),
                               rtol=2e-7, atol=1e-7)


def test_erf_in_place_and_by_blocks_gives_the_same_bits():
    x = RNG.standard_normal((3, 70_001)).astype(np.float32) * 3  # not a multiple of the block
    one = erf(x)
    y = x.copy()
    assert erf(y, out=y) is y  # written over its own input
    np.testing.assert_array_equal(y, one)
    np.testing.assert_array_equal(np.concatenate([erf(x[:, :40_000]), erf(x[:, 40_000:])], 1),
                                  one)


def _run(op, args, attrs, n_out=1, domain="", opset=17, planned=False):
    opdef, ctx = make_context(op, domain, "n", 1 if domain else opset, attrs, len(args), n_out)
    if planned:  # outputs as views of an arena at an odd 64-byte offset, like the executor's
        types = opdef.infer(ctx, *[None if a is None else _type(a) for a in args])
        arena = np.empty(sum(t.nbytes for t in types) + 64 * (len(types) + 1), np.uint8)
        views, off = [], 64
        for t in types:
            views.append(arena[off:off + t.nbytes].view(t.dtype).reshape(t.shape))
            off += -(-t.nbytes // 64) * 64
        arena[:] = 0xFF  # garbage: a kernel must write every element
        ctx.out = tuple(views)
    outs = opdef.kernel(ctx, *args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    if planned:  # (the first output: statistics and other small ones may be copied)
        assert outs[0].ctypes.data == ctx.out[0].ctypes.data, f"{op} did not write in place"
    return [np.array(o) for o in outs]


def _type(a):
    from edgetrain.ops.registry import TensorType
    return TensorType.of(a) if a.dtype.kind in "iu" else TensorType(a.dtype, a.shape)


def _same_bits(op, args, attrs=None, n_out=1, domain="", opset=17, must_write=True):
    attrs = attrs or {}
    ref = _run(op, args, attrs, n_out, domain, opset)
    try:
        got = _run(op, args, attrs, n_out, domain, opset, planned=True)
    except AssertionError:
        if must_write:
            raise
        got = ref
    for a, b in zip(ref, got):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), op
    return ref


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("a,b", [((16, 8, 32), (32, 24)), ((2, 3, 8, 5), (2, 3, 5, 7)),
                                 ((9, 6), (6, 4)), ((2, 1, 4, 5), (3, 5, 2))])
def test_matmul_and_its_gradients_write_in_place(a, b):
    A, B = f32(*a), f32(*b)
    (y,) = _same_bits("MatMul", [A, B])
    np.testing.assert_allclose(y, A.astype(float) @ B.astype(float), rtol=1e-5, atol=1e-5)
    dy = f32(*y.shape)
    (da,) = _same_bits("MatMulGrad", [dy, B, np.array(a, np.int64)], {"side": 0},
                       domain=ET_DOMAIN, must_write=False)
    (db,) = _same_bits("MatMulGrad", [dy, A, np.array(b, np.int64)], {"side": 1},
                       domain=ET_DOMAIN, must_write=False)
    d64 = dy.astype(float)
    ga = d64 @ np.swapaxes(B.astype(float), -1, -2)
    gb = np.swapaxes(A.astype(float), -1, -2) @ d64
    lead_a, lead_b = ga.ndim - len(a), gb.ndim - len(b)
    ga = ga.sum(axis=tuple(range(lead_a))) if lead_a else ga
    gb = gb.sum(axis=tuple(range(lead_b))) if lead_b else gb
    ga = ga.sum(axis=tuple(i for i, d in enumerate(a) if d == 1 and ga.shape[i] != 1),
                keepdims=True)
    gb = gb.sum(axis=tuple(i for i, d in enumerate(b) if d == 1 and gb.shape[i] != 1),
                keepdims=True)
    np.testing.assert_allclose(da, ga, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, gb, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ta,tb", [(0, 0), (0, 1), (1, 0), (1, 1)])
def test_gemm_and_its_gradients_write_in_place(ta, tb):
    A = f32(*((6, 5) if ta else (5, 6)))
    B = f32(*((4, 6) if tb else (6, 4)))
    C = f32(4)
    attrs = {"transA": ta, "transB": tb, "alpha": 0.5, "beta": 2.0}
    (y,) = _same_bits("Gemm", [A, B, C], attrs, opset=13)
    a, b = (A.T if ta else A).astype(float), (B.T if tb else B).astype(float)
    np.testing.assert_allclose(y, 0.5 * a @ b + 2 * C, rtol=1e-5, atol=1e-5)
    dy = f32(5, 4)
    (da,) = _same_bits("GemmGrad", [dy, B, np.array(A.shape, np.int64)], dict(attrs, side=0),
                       domain=ET_DOMAIN)
    (db,) = _same_bits("GemmGrad", [dy, A, np.array(B.shape, np.int64)], dict(attrs, side=1),
                       domain=ET_DOMAIN)
    ga = 0.5 * dy.astype(float) @ b.T
    gb = 0.5 * a.T @ dy.astype(float)
    np.testing.assert_allclose(da, ga.T if ta else ga, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, gb.T if tb else gb, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,axis,s_shape", [((4, 6, 32), -1, (32,)), ((3, 4, 5), 1, (4, 5)),
                                                ((2, 3, 4), 0, (2, 3, 4)), ((7,), 0, (1,))])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_layer_normalization_and_gradient_write_in_place(shape, axis, s_shape, dtype):
    x, scale, b = (RNG.standard_normal(s).astype(dtype) for s in (shape, s_shape, s_shape))
    write = dtype != np.float16  # float16 normalizes in float32, then casts
    y, mean, inv = _same_bits("LayerNormalization", [x, scale, b], {"axis": axis}, 3,
                              must_write=write)
    axes = tuple(range(axis % len(shape), len(shape)))
    x64 = x.astype(float)
    m = x64.mean(axis=axes, keepdims=True)
    r = 1 / np.sqrt(((x64 - m) ** 2).mean(axis=axes, keepdims=True) + 1e-5)
    tol = 2e-3 if dtype == np.float16 else 1e-5
    np.testing.assert_allclose(y, (x64 - m) * r * scale + b, rtol=tol, atol=tol)
    np.testing.assert_allclose(mean, m, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(inv, r, rtol=1e-5, atol=1e-5)
    dy = RNG.standard_normal(shape).astype(dtype)
    dx, ds = _same_bits("LayerNormalizationGrad", [dy, x, scale], {"axis": axis}, 2,
                        domain=ET_DOMAIN, must_write=False)
    xhat, g = (x64 - m) * r, dy.astype(float) * scale
    n = int(np.prod([shape[i] for i in axes]))
    want = r * (g - g.sum(axis=axes, keepdims=True) / n
                - xhat * (g * xhat).sum(axis=axes, keepdims=True) / n)
    np.testing.assert_allclose(dx, want, rtol=10 * tol, atol=10 * tol)
    ds_want = (dy.astype(float) * xhat)
    ds_want = ds_want.reshape((-1,) + tuple(s_shape)).sum(axis=0) if len(s_shape) < len(shape) \
        or s_shape == (1,) else ds_want
    np.testing.assert_allclose(ds.reshape(-1), np.reshape(ds_want, -1), rtol=10 * tol,
                               atol=10 * tol)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape,axis,opset", [((4, 3, 16, 16), -1, 13), ((5, 7), 0, 13),
                                              ((2, 3, 4), 1, 11), ((), 0, 13)])
def test_softmax_and_gradient_write_in_place(op, shape, axis, opset):
    x = (RNG.standard_normal(shape) * 3).astype(np.float32)
    (y,) = _same_bits(op, [x], {"axis": axis}, opset=opset)
    dy = RNG.standard_normal(shape).astype(np.float32)
    _same_bits("SoftmaxGrad", [dy, y], {"of": op, "axis": axis, "coerce": int(opset < 13)},
               domain=ET_DOMAIN)


def test_erf_and_its_gradient_write_in_place():
    x = f32(4, 300)
    (y,) = _same_bits("Erf", [x], opset=13)
    (dx,) = _same_bits("UnaryGrad", [f32(4, 300), x], {"of": "Erf"}, domain=ET_DOMAIN)
    assert y.dtype == dx.dtype == np.float32


def test_gather_gradients_write_in_place():
    dy = f32(5, 7, 3)
    idx = RNG.integers(0, 4, (5, 7))
    (dx,) = _same_bits("GatherGrad", [dy, np.array([4, 3], np.int64), idx], {"axis": 0},
                       domain=ET_DOMAIN)
    want = np.zeros((4, 3))
    np.add.at(want, idx.reshape(-1), dy.reshape(-1, 3).astype(float))
    np.testing.assert_allclose(dx, want, rtol=1e-5, atol=1e-5)
    ind = RNG.integers(0, 6, (5, 1))
    _same_bits("GatherElementsGrad", [f32(5, 1), np.array([5, 6], np.int64), ind], {"axis": 1},
               domain=ET_DOMAIN)
