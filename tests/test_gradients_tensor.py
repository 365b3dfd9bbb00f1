"""Gradient rules of linalg (MatMul, Gemm, Einsum), tensor layout and index ops, against float64
finite differences (max relative error <= 1e-6)."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

from edgetrain.autodiff import build_backward
from edgetrain.graph import load_graph
from edgetrain.runtime import InferenceSession
from edgetrain.runtime.session import compile_run
from gradcheck import check_gradients, one_node_graph

TOL = 1e-6
SETTINGS = settings(max_examples=10, deadline=None)
I64 = np.int64


def rand(rng, shape):
    return np.asarray(rng.standard_normal(shape), dtype=np.float64)


def check(op, inputs, wrt=None, n_out=1, opset=17, consts=None, **attrs):
    model = one_node_graph(op, inputs, n_out, opset, consts, **attrs)
    err = check_gradients(model, inputs, list(wrt or inputs))
    assert err <= TOL, err
    return err


# --- linalg ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sa,sb", [
    ((3,), (3,)), ((3,), (3, 4)), ((2, 3), (3,)), ((2, 3), (3, 4)), ((3,), (2, 3, 4)),
    ((2, 2, 3), (3,)), ((4, 2, 3), (3, 2)), ((2, 3), (2, 3, 4)), ((2, 1, 2, 3), (3, 3, 4)),
    ((1, 2, 3), (4, 3, 2)),
])
def test_matmul(sa, sb):
    rng = np.random.default_rng(len(sa) * 10 + len(sb))
    check("MatMul", {"a": rand(rng, sa), "b": rand(rng, sb)})


def test_matmul_one_side():  # only dB: A is read, only B's shape is
    rng = np.random.default_rng(0)
    check("MatMul", {"a": rand(rng, (2, 2, 3)), "b": rand(rng, (3, 2))}, wrt=["b"])


@SETTINGS
@given(ta=st.integers(0, 1), tb=st.integers(0, 1), c=st.sampled_from([None, (), (3,), (1, 3),
                                                                         (2, 1), (2, 3)]),
       alpha=st.sampled_from([1.0, 0.5, -2.0]), beta=st.sampled_from([1.0, 0.0, 3.0]),
       seed=st.integers(0, 2**16))
def test_gemm(ta, tb, c, alpha, beta, seed):
    rng = np.random.default_rng(seed)
    m, k, n = 2, 4, 3
    ins = {"a": rand(rng, (k, m) if ta else (m, k)), "b": rand(rng, (n, k) if tb else (k, n))}
    if c is not None:
        ins["c"] = rand(rng, c)
    wrt = list(ins) if beta != 0.0 else ["a", "b"]
    check("Gemm", ins, wrt=wrt, opset=13, transA=ta, transB=tb, alpha=alpha, beta=beta)


@pytest.mark.parametrize("eq,shapes", [
    ("ij,jk->ik", [(2, 3), (3, 4)]),
    ("ij,jk", [(2, 3), (3, 2)]),                      # implicit output
    ("bij,bjk->bik", [(2, 2, 3), (2, 3, 2)]),
    ("bhqd,bhkd->bhqk", [(1, 2, 3, 2), (1, 2, 2, 2)]),
    ("ij,ij->ij", [(2, 3), (2, 3)]),
    ("i,j->ij", [(3,), (2,)]),
    ("i,i", [(4,), (4,)]),
    ("ij->ji", [(2, 3)]),
    ("ij->i", [(2, 3)]),                              # j summed: dy broadcasts along it
    ("ij->", [(2, 3)]),
    ("ii->i", [(3, 3)]),                              # diagonal
    ("ii", [(3, 3)]),                                 # trace
    ("iij,jk->ik", [(2, 2, 3), (3, 2)]),              # diagonal inside a product
    ("ij,jk,kl->il", [(2, 3), (3, 2), (2, 2)]),
    ("...ij,...jk->...ik", [(2, 1, 2, 3), (3, 3, 2)]),  # batch broadcast over '...'
    ("...ij,jk->...ik", [(2, 2, 3), (3, 2)]),
    ("...i,i->...", [(2, 3, 2), (2,)]),
    ("...ii->...i", [(2, 3, 3)]),
    ("i...->...", [(2, 3, 1)]),
    ("...,...->...", [(1, 3), (2, 1)]),
    ("...ij,...jk", [(2, 2, 3), (3, 2)]),             # '...' on the inputs only: summed
])
def test_einsum(eq, shapes):
    rng = np.random.default_rng(len(eq))
    check("Einsum", {f"x{i}": rand(rng, s) for i, s in enumerate(shapes)}, equation=eq)


def test_einsum_one_operand_of_two():
    rng = np.random.default_rng(5)
    ins = {"x0": rand(rng, (2, 3)), "x1": rand(rng, (3, 4))}
    check("Einsum", ins, wrt=["x1"], equation="ij,jk->ik")


# --- tensor layout -----------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2, -1, 3])
def test_flatten(axis):
    check("Flatten", {"x": rand(np.random.default_rng(0), (2, 3, 1))}, axis=axis)


@pytest.mark.parametrize("shape", [[6], [0, -1], [3, 2, 1], [-1, 2]])
def test_reshape(shape):
    x = rand(np.random.default_rng(0), (2, 3))
    check("Reshape", {"x": x}, consts={"s": np.array(shape, I64)}, input_order=["x", "s"])


@pytest.mark.parametrize("perm", [None, [1, 0, 2], [2, 0, 1], [0, 2, 1]])
def test_transpose(perm):
    attrs = {} if perm is None else {"perm": perm}
    check("Transpose", {"x": rand(np.random.default_rng(0), (2, 3, 4))}, **attrs)


@pytest.mark.parametrize("opset,axes", [(13, [1, -1]), (13, None), (11, [1])])
def test_squeeze(opset, axes):
    x = rand(np.random.default_rng(0), (2, 1, 3, 1))
    if axes is None:
        check("Squeeze", {"x": x}, opset=opset)
    elif opset >= 13:
        check("Squeeze", {"x": x}, opset=opset, consts={"a": np.array(axes, I64)},
              input_order=["x", "a"])
    else:
        check("Squeeze", {"x": x}, opset=opset, axes=axes)


@pytest.mark.parametrize("opset,axes", [(13, [0, -1]), (11, [1, 3])])
def test_unsqueeze(opset, axes):
    x = rand(np.random.default_rng(0), (2, 3))
    if opset >= 13:
        check("Unsqueeze", {"x": x}, opset=opset, consts={"a": np.array(axes, I64)},
              input_order=["x", "a"])
    else:
        check("Unsqueeze", {"x": x}, opset=opset, axes=axes)


@pytest.mark.parametrize("axis,wrt", [(0, None), (-1, None), (1, ["b"]), (1, ["a", "c"])])
def test_concat(axis, wrt):
    rng = np.random.default_rng(0)
    shapes = {0: [(1, 3), (2, 3), (3, 3)], -1: [(2, 1), (2, 2), (2, 3)],
              1: [(2, 1), (2, 2), (2, 3)]}[axis]
    ins = {k: rand(rng, s) for k, s in zip("abc", shapes)}
    check("Concat", ins, wrt=wrt, axis=axis)


def test_split_with_sizes():
    x = rand(np.random.default_rng(0), (2, 6))
    check("Split", {"x": x}, n_out=3, opset=13, consts={"s": np.array([1, 3, 2], I64)},
          input_order=["x", "s"], axis=-1)


def test_split_num_outputs_uneven():
    x = rand(np.random.default_rng(1), (5, 2))
    check("Split", {"x": x}, n_out=3, opset=18, num_outputs=3)


def test_split_unused_output_gets_zeros():
    x = rand(np.random.default_rng(2), (2, 6))
    node = helper.make_node("Split", ["x"], ["y0", "y1", "y2"], axis=1)
    out = [helper.make_tensor_value_info(y, TensorProto.DOUBLE, None) for y in ("y0", "y2")]
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE,
                                                                       x.shape)], out)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    assert check_gradients(model, {"x": x}, ["x"]) <= TOL


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([1], [3], None, None),
    ([0, 1], [2, 4], [1, 0], None),
    ([-1, 0], [-100, 100], [0, 2], [-1, 2]),    # negative step, clamped ends
    ([4], [0], [-1], [-2]),
    ([1, 1], [2, 2], [0, 1], [1, 1]),
])
def test_slice(starts, ends, axes, steps):
    x = rand(np.random.default_rng(0), (3, 4, 5))
    consts = {"s": np.array(starts, I64), "e": np.array(ends, I64)}
    for k, v in (("a", axes), ("t", steps)):
        if v is not None:
            consts[k] = np.array(v, I64)
    order = ["x"] + list(consts)
    check("Slice", {"x": x}, consts=consts, input_order=order)


def test_slice_attributes_opset9():
    x = rand(np.random.default_rng(0), (3, 4))
    check("Slice", {"x": x}, opset=9, starts=[1, -3], ends=[3, 100], axes=[0, 1])


# --- index -------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis,indices", [
    (0, [2, 0, 2, -1]),             # repeats and a negative index (same element as 2)
    (1, [[0, 1], [1, -4]]),
    (-1, 3),                        # scalar index
    (2, [[1, 1, 1]]),
])
def test_gather(axis, indices):
    x = rand(np.random.default_rng(0), (3, 4, 2 if axis == 2 else 5))
    check("Gather", {"x": x}, consts={"i": np.array(indices, I64)}, input_order=["x", "i"],
          axis=axis)


def test_gather_indices_as_input():  # indices read at run time, not folded
    rng = np.random.default_rng(3)
    x, i = rand(rng, (4, 3)), np.array([[3, 0], [3, -1]], I64)
    model = one_node_graph("Gather", {"x": x, "i": i}, axis=0)
    assert check_gradients(model, {"x": x, "i": i}, ["x"]) <= TOL


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis):
    rng = np.random.default_rng(axis + 5)
    x = rand(rng, (3, 4))
    shape = (4, 4) if axis == 0 else (3, 5)
    dim = x.shape[axis]
    idx = rng.integers(-dim, dim, size=shape)
    idx.reshape(-1)[:2] = [1, 1 - dim]  # a repeat through a negative index
    check("GatherElements", {"x": x}, consts={"i": idx.astype(I64)}, input_order=["x", "i"],
          axis=axis)


@pytest.mark.parametrize("xs,shape", [((3,), [2, 3]), ((2, 1), [2, 3]), ((1, 3, 1), [2, 1, 2]),
                                      ((2, 3), [1, 1, 3])])
def test_expand(xs, shape):
    x = rand(np.random.default_rng(0), xs)
    check("Expand", {"x": x}, consts={"s": np.array(shape, I64)}, input_order=["x", "s"])


@pytest.mark.parametrize("xs,reps", [((2, 3), [2, 1]), ((2, 3), [1, 3]), ((2, 1, 2), [2, 3, 1])])
def test_tile(xs, reps):
    x = rand(np.random.default_rng(0), xs)
    check("Tile", {"x": x}, consts={"r": np.array(reps, I64)}, input_order=["x", "r"])


@pytest.mark.parametrize("mode,pads,opset", [
    ("constant", [1, 0, 2, 1], 13), ("constant", [-1, 2, 1, -2], 13),
    ("reflect", [2, 1, 1, 2], 13), ("edge", [3, 0, 1, 4], 13), ("wrap", [2, 1, 4, 2], 19),
    ("reflect", [-1, 2, 1, 1], 13),
])
def test_pad(mode, pads, opset):
    x = rand(np.random.default_rng(0), (4, 3))
    check("Pad", {"x": x}, opset=opset, consts={"p": np.array(pads, I64)}, input_order=["x", "p"],
          mode=mode)


def test_pad_constant_value_and_axes():
    rng = np.random.default_rng(1)
    x, v = rand(rng, (2, 3, 2)), np.array(0.7)
    model = one_node_graph("Pad", {"x": x, "v": v}, opset=18,
                           consts={"p": np.array([1, -1, 2, 1], I64), "a": np.array([2, 1], I64)},
                           input_order=["x", "p", "v", "a"])
    assert check_gradients(model, {"x": x, "v": v}, ["x", "v"]) <= TOL


def test_pad_attributes_opset7():
    x = rand(np.random.default_rng(0), (3, 4))
    check("Pad", {"x": x}, opset=7, pads=[1, 0, 0, 2], mode="edge")


@pytest.mark.parametrize("upper,k", [(1, None), (0, None), (1, -1), (0, 2), (1, 1)])
def test_trilu(upper, k):
    x = rand(np.random.default_rng(0), (2, 3, 4))
    if k is None:
        check("Trilu", {"x": x}, opset=14, upper=upper)
    else:
        check("Trilu", {"x": x}, opset=14, consts={"k": np.array(k, I64)}, input_order=["x", "k"],
              upper=upper)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis", [1, -3])
def test_cumsum(exclusive, reverse, axis):
    x = rand(np.random.default_rng(0), (3, 4, 2))
    check("CumSum", {"x": x}, opset=14, consts={"a": np.array(axis, I64)}, input_order=["x", "a"],
          exclusive=exclusive, reverse=reverse)


# --- what the backward keeps, and dtypes -------------------------------------------------------

@pytest.mark.parametrize("op,consts,attrs", [
    ("Reshape", {"s": np.array([-1], I64)}, {}),
    ("Slice", {"s": np.array([1], I64), "e": np.array([3], I64)}, {}),
    ("Gather", {"i": np.array([0, 0, 2], I64)}, {}),
    ("Tile", {"r": np.array([2, 2], I64)}, {}),
    ("Pad", {"p": np.array([1, 1, 0, 2], I64)}, {"mode": "reflect"}),
    ("Transpose", {}, {}),
    ("Einsum", {}, {"equation": "ij->j"}),
])
def test_backward_does_not_read_x(op, consts, attrs):
    x = rand(np.random.default_rng(0), (3, 4))
    model = one_node_graph(op, {"x": x}, consts=consts, input_order=["x"] + list(consts), **attrs)
    graph = load_graph(model)
    n_fwd = len(graph.nodes)
    back = build_backward(graph, "y0", ["x"])
    plan = compile_run(back.graph, {"x": x})
    readers = [s.node.op_type for s in plan.inferred.steps
               if "x" in s.node.inputs and s.node not in graph.nodes[:n_fwd]]
    assert readers == [], readers  # Shape(x) folded while planning


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_gradient_dtypes_follow_inputs(dtype):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3)).astype(dtype), rng.standard_normal((3, 3)).astype(dtype)
    nodes = [helper.make_node("MatMul", ["a", "b"], ["m"]),
             helper.make_node("Einsum", ["m", "b"], ["e"], equation="ij,jj->ij"),
             helper.make_node("Gather", ["e", "i"], ["g"], axis=1),
             helper.make_node("CumSum", ["g", "ax"], ["y"])]
    t = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [helper.make_tensor("i", TensorProto.INT64, [4], [0, 2, 2, -1]),
             helper.make_tensor("ax", TensorProto.INT64, [], [0])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", t, a.shape),
                                       helper.make_tensor_value_info("b", t, b.shape)],
                          [helper.make_tensor_value_info("y", t, None)], inits)
    graph = load_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    back = build_backward(graph, "y", ["a", "b"])
    da, db = InferenceSession(back.graph, check=True).run(
        [back.gradients["a"], back.gradients["b"]], {"a": a, "b": b})
    assert da.dtype == dtype and db.dtype == dtype
    assert da.shape == a.shape and db.shape == b.shape


def test_backward_graph_saves_as_onnx():  # our ops' attributes survive to_onnx and back
    rng = np.random.default_rng(0)
    feeds = {"a": rand(rng, (2, 3)), "b": rand(rng, (3, 4)), "c": rand(rng, (2, 4))}
    nodes = [helper.make_node("Einsum", ["a", "b"], ["e"], equation="ij,jk->ik"),
             helper.make_node("Concat", ["e", "c"], ["cat"], axis=0),
             helper.make_node("Slice", ["cat", "s", "t"], ["y"])]
    inits = [helper.make_tensor("s", TensorProto.INT64, [1], [1]),
             helper.make_tensor("t", TensorProto.INT64, [1], [3])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(k, TensorProto.DOUBLE, v.shape)
                                       for k, v in feeds.items()],
                          [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)], inits)
    back = build_backward(load_graph(helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17)])), "y", ["a", "b", "c"])
    names = [back.gradients[k] for k in feeds]
    want = InferenceSession(back.graph).run(names, feeds)
    got = InferenceSession(load_graph(back.graph.to_onnx())).run(names, feeds)
    for w, x in zip(want, got):
        np.testing.assert_array_equal(w, x)
