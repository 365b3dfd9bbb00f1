"""Gradient rules of Conv, ConvTranspose and the pooling ops against float64 finite differences
(max relative error <= 1e-6), plus a float32 Conv backward against a float64 loop reference and
checks of what the backward nodes read."""
import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st

from edgetrain.autodiff import build_backward
from edgetrain.graph import load_graph
from edgetrain.ops import conv, pool
from edgetrain.runtime import InferenceSession
from edgetrain.runtime.session import compile_run
from gradcheck import check_gradients, one_node_graph, with_sum_loss

TOL = 1e-6
SETTINGS = settings(max_examples=12, deadline=None)


def _check(op, inputs, wrt, n_out=1, opset=17, **attrs):
    model = one_node_graph(op, inputs, n_out, opset, **attrs)
    err = check_gradients(model, inputs, wrt)
    assert err <= TOL, (op, attrs, wrt, err)
    return err


def _out_size(i, k, s, d, pb, pe):
    return (i + pb + pe - ((k - 1) * d + 1)) // s + 1


# --- Conv --------------------------------------------------------------------------------------

def conv_case(rng):
    nd = int(rng.choice([1, 2, 2, 3]))
    kind = rng.choice(["dense", "group", "depthwise", "depthwise_mult", "pointwise"])
    cg, group, mult = int(rng.integers(1, 3)), 1, int(rng.integers(1, 3))
    if kind == "group":
        group = 2
    elif kind.startswith("depthwise"):
        cg, group, mult = 1, int(rng.integers(2, 4)), 2 if kind == "depthwise_mult" else 1
    k = [1] * nd if kind == "pointwise" else [int(v) for v in rng.integers(1, 4 if nd < 3 else 3,
                                                                          nd)]
    size = [int(v) for v in rng.integers(*{1: (4, 9), 2: (3, 6), 3: (3, 5)}[nd], nd)]
    attrs = {"group": group, "strides": [int(v) for v in rng.integers(1, 3, nd)]}
    if rng.random() < 0.4:
        attrs["dilations"] = [int(v) for v in rng.integers(1, 3, nd)]
    mode = rng.choice(["pads", "none", "SAME_UPPER", "SAME_LOWER", "VALID"])
    if mode == "pads":
        attrs["pads"] = [int(v) for v in rng.integers(0, 3, 2 * nd)]
    elif mode != "none":
        attrs["auto_pad"] = str(mode)
    pads = attrs.get("pads", [0] * 2 * nd)
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        assume(all(_out_size(i, kk, s, d, pads[a], pads[a + nd]) >= 1 for a, (i, kk, s, d) in
                   enumerate(zip(size, k, attrs["strides"], attrs.get("dilations", [1] * nd)))))
    n = int(rng.integers(1, 3))
    x = rng.standard_normal([n, cg * group] + size)
    w = rng.standard_normal([mult * group, cg] + k)
    b = rng.standard_normal(mult * group)
    return x, w, b, attrs


@SETTINGS
@given(seed=st.integers(0, 2**16), bias=st.booleans(),
       wrt=st.sampled_from([("x", "w", "b"), ("x",), ("w",), ("b",), ("x", "b"), ("w", "b")]))
def test_conv_gradients(seed, bias, wrt):
    x, w, b, attrs = conv_case(np.random.default_rng(seed))
    inputs = {"x": x, "w": w, "b": b} if bias else {"x": x, "w": w}
    _check("Conv", inputs, [v for v in wrt if v in inputs] or ["x"], **attrs)


@pytest.mark.parametrize("xs, ws, attrs", [
    ((2, 4, 5, 6), (6, 2, 3, 3), dict(group=2, strides=[2, 1], pads=[1, 0, 0, 1],
                                       dilations=[1, 2])),
    ((2, 4, 5, 5), (8, 1, 3, 3), dict(group=4, pads=[1, 1, 1, 1], strides=[2, 2])),  # depthwise
    ((1, 3, 6, 5), (3, 1, 2, 3), dict(group=3, auto_pad="SAME_LOWER", dilations=[2, 1])),
    ((2, 4, 5, 5), (3, 4, 1, 1), dict(strides=[2, 2], pads=[1, 0, 1, 1])),             # 1x1
    ((2, 4, 4, 4), (4, 2, 1, 1), dict(group=2)),                                     # 1x1 grouped
    ((1, 2, 7), (3, 2, 3), dict(strides=[2], auto_pad="SAME_UPPER")),                 # 1-D
    ((1, 2, 4, 3, 4), (2, 1, 2, 2, 3), dict(group=2, strides=[1, 2, 1], pads=[1, 0, 1, 0, 1, 1])),
    ((1, 2, 4, 4), (2, 2, 4, 4), dict(auto_pad="VALID")),                             # one window
])
def test_conv_gradients_cases(xs, ws, attrs):
    rng = np.random.default_rng(3)
    inputs = {"x": rng.standard_normal(xs), "w": rng.standard_normal(ws),
              "b": rng.standard_normal(ws[0])}
    _check("Conv", inputs, ["x", "w", "b"], **attrs)


# --- ConvTranspose -----------------------------------------------------------------------------

@pytest.mark.parametrize("xs, ws, attrs", [
    ((2, 4, 3, 4), (4, 3, 3, 2), dict(group=2, strides=[2, 3], pads=[1, 0, 0, 1],
                                       output_padding=[1, 0])),
    ((2, 4, 3, 4), (4, 3, 3, 2), dict(group=2, strides=[2, 2], output_shape=[8, 9])),
    ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], output_shape=[9, 8])),  # past the full size
    ((2, 4, 3, 4), (4, 3, 3, 2), dict(group=2, strides=[2, 2], auto_pad="SAME_UPPER")),
    ((1, 3, 3, 4), (3, 2, 2, 3), dict(strides=[1, 2], auto_pad="SAME_LOWER")),
    ((2, 4, 3, 4), (4, 3, 3, 2), dict(group=2, dilations=[2, 1], pads=[2, 1, 0, 0])),
    ((2, 3, 4, 3), (3, 1, 3, 3), dict(group=3, strides=[2, 1], pads=[1, 1, 1, 1])),  # depthwise
    ((2, 3, 4, 3), (3, 2, 1, 1), dict(strides=[2, 2])),                               # 1x1
    ((1, 2, 5), (2, 3, 3), dict(strides=[3], output_padding=[2], dilations=[2])),      # 1-D
    ((1, 2, 2, 3, 2), (2, 2, 2, 2, 2), dict(strides=[2, 1, 2], pads=[1, 0, 0, 0, 1, 1])),
])
@pytest.mark.parametrize("wrt", [("x", "w", "b"), ("x",), ("w",)])
def test_conv_transpose_gradients(xs, ws, attrs, wrt):
    rng = np.random.default_rng(4)
    m = ws[1] * attrs.get("group", 1)
    inputs = {"x": rng.standard_normal(xs), "w": rng.standard_normal(ws),
              "b": rng.standard_normal(m)}
    _check("ConvTranspose", inputs, list(wrt), **attrs)


# --- pooling -----------------------------------------------------------------------------------

def pool_case(rng, op):
    nd = int(rng.choice([1, 2, 2, 3]))
    k = [int(v) for v in rng.integers(1, 4 if nd < 3 else 3, nd)]
    assume(np.prod(k) > 1)
    size = [int(v) for v in rng.integers(*{1: (4, 9), 2: (3, 7), 3: (3, 5)}[nd], nd)]
    attrs = {"kernel_shape": k, "strides": [int(v) for v in rng.integers(1, 3, nd)]}
    if rng.random() < 0.4:
        attrs["dilations"] = [int(v) for v in rng.integers(1, 3, nd)]
    mode = rng.choice(["pads", "pads", "none", "SAME_UPPER", "SAME_LOWER"])
    if mode == "pads":  # padding shorter than the kernel: every window sees the input
        attrs["pads"] = [int(rng.integers(0, kk)) for kk in k + k]
    elif mode != "none":
        attrs["auto_pad"] = str(mode)
        attrs.pop("dilations", None)
    if mode != "SAME_UPPER" and mode != "SAME_LOWER" and rng.random() < 0.5:
        attrs["ceil_mode"] = 1
    pads = attrs.get("pads", [0] * 2 * nd)
    assume(all(_out_size(i, kk, s, d, pads[a], pads[a + nd]) >= 1 for a, (i, kk, s, d) in
               enumerate(zip(size, k, attrs["strides"], attrs.get("dilations", [1] * nd)))))
    if op == "AveragePool":
        attrs["count_include_pad"] = int(rng.integers(0, 2))
    x = rng.standard_normal([int(rng.integers(1, 3)), int(rng.integers(1, 3))] + size)
    return x, attrs


@SETTINGS
@given(seed=st.integers(0, 2**16), indices=st.sampled_from([0, 1, 2]))
def test_max_pool_gradients(seed, indices):
    """indices: 0 no Indices output (the backward finds the arg max), 1 row-major, 2 column."""
    x, attrs = pool_case(np.random.default_rng(seed), "MaxPool")
    if indices == 2:
        attrs["storage_order"] = 1
    _check("MaxPool", {"x": x}, ["x"], n_out=2 if indices else 1, **attrs)


@SETTINGS
@given(seed=st.integers(0, 2**16))
def test_average_pool_gradients(seed):
    x, attrs = pool_case(np.random.default_rng(seed), "AveragePool")
    _check("AveragePool", {"x": x}, ["x"], opset=19, **attrs)  # 19: with dilations


@pytest.mark.parametrize("op, attrs, opset", [
    ("MaxPool", dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 1, 1, 0]), 17),
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1, dilations=[1, 2]), 17),
    ("MaxPool", dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1), 8),  # no ceil_mode yet
    ("AveragePool", dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 1, 1, 0],
                         count_include_pad=1, ceil_mode=1), 17),
    ("AveragePool", dict(kernel_shape=[3, 3], strides=[2, 2], pads=[2, 1, 1, 2],
                         ceil_mode=1, dilations=[1, 2]), 19),
    ("AveragePool", dict(kernel_shape=[2, 2], auto_pad="SAME_UPPER", strides=[2, 2]), 17),
    ("AveragePool", dict(kernel_shape=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1), 7),
    ("GlobalAveragePool", {}, 17),
    ("GlobalMaxPool", {}, 17),
])
def test_pool_gradients_cases(op, attrs, opset):
    x = np.random.default_rng(5).standard_normal((2, 3, 5, 7))
    _check(op, {"x": x}, ["x"], opset=opset, **attrs)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("shape", [(2, 3, 7), (1, 2, 3, 4, 2)])
def test_global_pool_gradients(op, shape):
    x = np.random.default_rng(6).standard_normal(shape)
    _check(op, {"x": x}, ["x"])


def _backward(model, wrt):
    graph = load_graph(model)
    return build_backward(graph, "y0", wrt)


def _grad(model, feeds, wrt, seed_dy):
    """d(sum(y0 * seed_dy))/d wrt."""
    graph = load_graph(model)
    lossy = with_sum_loss(graph, InferenceSession(graph).run(None, feeds), np.random.default_rng(0))
    assert lossy.initializers["y0__R"].shape == seed_dy.shape
    lossy.initializers["y0__R"] = seed_dy  # the loss's weights on y0 are dy
    back = build_backward(lossy, "loss", wrt)
    return InferenceSession(back.graph, check=True).run([back.gradients[w] for w in wrt], feeds)


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[2, 3], strides=[2, 1], pads=[1, 0, 1, 2], ceil_mode=1, dilations=[2, 1]),
    dict(kernel_shape=[2, 2], strides=[2, 2], storage_order=1),
])
def test_max_pool_ties_go_where_the_forward_indices_point(attrs, monkeypatch):
    """Recomputing the arg max routes dy like the forward's Indices: first max, never padding
    (even where a window's real values are all -inf)."""
    monkeypatch.setattr(pool, "BLOCK_BUDGET", 400)  # several blocks of planes
    rng = np.random.default_rng(7)
    x = rng.integers(-2, 2, (2, 3, 6, 7)).astype(np.float32)   # many ties
    x[0, 0, :2] = -np.inf
    model = one_node_graph("MaxPool", {"x": x}, 2, **attrs)
    y, idx = InferenceSession(load_graph(model)).run(None, {"x": x})
    dy = rng.standard_normal(y.shape).astype(np.float32)
    recomputed = _grad(one_node_graph("MaxPool", {"x": x}, 1, **attrs), {"x": x}, ["x"], dy)[0]
    from_indices = _grad(model, {"x": x}, ["x"], dy)[0]
    if attrs.get("storage_order"):
        plane = 6 * 7
        row, pos = np.divmod(idx.reshape(-1), plane)
        idx = row * plane + np.ravel_multi_index(np.unravel_index(pos, (6, 7), order="F"), (6, 7))
    want = np.bincount(idx.reshape(-1), dy.reshape(-1).astype(np.float64), x.size)
    np.testing.assert_allclose(recomputed.reshape(-1), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(from_indices.reshape(-1), want, rtol=1e-6, atol=1e-6)


def test_global_max_pool_ties_go_to_the_first_max():
    x = np.zeros((1, 2, 2, 2), dtype=np.float32)
    x[0, 1, 1, 0] = x[0, 1, 1, 1] = 1
    dx = _grad(one_node_graph("GlobalMaxPool", {"x": x}), {"x": x}, ["x"],
               np.array([2, 3], np.float32).reshape(1, 2, 1, 1))[0]
    np.testing.assert_array_equal(dx, [[[[2, 0], [0, 0]], [[0, 0], [3, 0]]]])


# --- what the backward reads -------------------------------------------------------------------

def _grad_nodes(back, n_fwd):
    return [n for n in back.graph.nodes[n_fwd:] if n.op_type.endswith("Grad")]


def test_conv_backward_reads_x_only_for_dw():
    rng = np.random.default_rng(8)
    feeds = {"x": rng.standard_normal((1, 2, 4, 4)), "w": rng.standard_normal((3, 2, 3, 3)),
             "b": rng.standard_normal(3)}
    model = one_node_graph("Conv", feeds)
    (node,) = _grad_nodes(_backward(model, ["x"]), 1)
    assert node.op_type == "ConvGrad" and node.inputs[1] == "" and "x" not in node.inputs
    assert node.outputs[0] and node.outputs[1:] == ["", ""] and node.attrs["need"] == [1, 0, 0]
    (node,) = _grad_nodes(_backward(model, ["w", "b"]), 1)
    assert node.inputs[1] == "x" and node.outputs[0] == "" and node.attrs["need"] == [0, 1, 1]
    # the x-shape input folds while planning: no step of the backward reads x
    steps = compile_run(_backward(model, ["x"]).graph, feeds).inferred.steps
    assert [s.node.op_type for s in steps if "x" in s.node.inputs] == ["Conv"]


def test_pool_backward_reads_indices_or_shape():
    x = np.random.default_rng(9).standard_normal((1, 2, 4, 4))
    back = _backward(one_node_graph("MaxPool", {"x": x}, 2, kernel_shape=[2, 2]), ["x"])
    (node,) = _grad_nodes(back, 1)
    assert node.inputs[1] == "" and node.inputs[2] == "y1"
    back = _backward(one_node_graph("AveragePool", {"x": x}, kernel_shape=[2, 2]), ["x"])
    (node,) = _grad_nodes(back, 1)
    assert "x" not in node.inputs


# --- float32 path ------------------------------------------------------------------------------

def conv_reference_grads(x, w, dy, group, stride, pad):
    """float64 dX, dW, dB of a 2-D Conv by plain loops over groups and kernel taps."""
    x, w, dy = (a.astype(np.float64) for a in (x, w, dy))
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    mg, oh, ow = m // group, dy.shape[2], dy.shape[3]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for g in range(group):
        cs, ms = slice(g * cg, (g + 1) * cg), slice(g * mg, (g + 1) * mg)
        for i in range(kh):
            for j in range(kw):
                win = (slice(None), cs, slice(i, i + (oh - 1) * stride + 1, stride),
                       slice(j, j + (ow - 1) * stride + 1, stride))
                dw[ms, :, i, j] = np.einsum("nmhw,nchw->mc", dy[:, ms], xp[win])
                dxp[win] += np.einsum("nmhw,mc->nchw", dy[:, ms], w[ms, :, i, j])
    return dxp[:, :, pad:pad + h, pad:pad + wd], dw, dy.sum(axis=(0, 2, 3))


@pytest.mark.parametrize("c, m, group", [(16, 24, 2), (16, 16, 16), (16, 32, 16)])
@pytest.mark.parametrize("chunked", [False, True])
def test_conv_float32_backward_matches_float64_loops(c, m, group, chunked, monkeypatch):
    if chunked:  # one image per GEMM chunk, a few planes per depthwise block
        monkeypatch.setattr(conv, "COLS_BUDGET", 1)
        monkeypatch.setattr(conv, "BLOCK_BUDGET", 2000)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((4, c, 12, 12)).astype(np.float32)
    w = (rng.standard_normal((m, c // group, 3, 3)) / 4).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    feeds = {"x": x, "w": w, "b": b}
    model = one_node_graph("Conv", feeds, strides=[2, 2], pads=[1, 1, 1, 1], group=group)
    dy = rng.standard_normal((4, m, 6, 6)).astype(np.float32)
    got = _grad(model, feeds, ["x", "w", "b"], dy)
    want = conv_reference_grads(x, w, dy, group, 2, 1)
    for gv, wv in zip(got, want):
        assert gv.dtype == np.float32 and gv.shape == wv.shape
        np.testing.assert_allclose(gv, wv, rtol=1e-4, atol=1e-4 * np.abs(wv).max())


def test_conv_float16_gradients_keep_dtype():
    rng = np.random.default_rng(11)
    feeds = {"x": rng.standard_normal((1, 4, 5, 5)).astype(np.float16),
             "w": rng.standard_normal((4, 2, 3, 3)).astype(np.float16)}
    model = one_node_graph("Conv", feeds, group=2, pads=[1, 1, 1, 1])
    dy = rng.standard_normal((1, 4, 5, 5)).astype(np.float16)
    got = _grad(model, feeds, ["x", "w"], dy)
    want = conv_reference_grads(feeds["x"], feeds["w"], dy, 2, 1, 1)
    for gv, wv in zip(got, want):
        assert gv.dtype == np.float16
        np.testing.assert_allclose(gv.astype(np.float64), wv, rtol=2e-2, atol=2e-2 *
                                   np.abs(wv).max())
