"""Tensor layout, indexing and shape ops against onnxruntime and NumPy, plus shape-chain folding."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from edgetrain.errors import EdgetrainError
from edgetrain.graph import infer, load_graph
from edgetrain.ops.registry import TensorType
from oracle import check_against_ort, make_model, one_node, run_ours, value_info

RNG = np.random.default_rng(0)
PROPS = settings(max_examples=40, deadline=None)


def check(op, inputs, consts=None, rtol=0.0, n_out=1, opset=17, **attrs):
    """``op`` on ``inputs`` (fed) and ``consts`` (initializers) gives onnxruntime's outputs."""
    return check_against_ort(*one_node(op, inputs, n_out, opset, consts, **attrs), rtol)


def rand(shape, dtype=np.float32):
    if np.dtype(dtype).kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    return RNG.integers(-50, 50, size=shape).astype(dtype)


shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)
I64 = np.int64


# --- property tests ------------------------------------------------------------------------------

@st.composite
def reshape_case(draw):
    shape = draw(st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple))
    total = int(np.prod(shape, dtype=np.int64))
    target, left = [], total
    for _ in range(draw(st.integers(0, 3))):  # factor the size into a random target shape
        divs = [d for d in range(1, 7) if left % d == 0] if left else [0, 1, 2]
        d = draw(st.sampled_from(divs))
        target.append(d)
        left = left // d if d else left
    target.append(left if total else draw(st.integers(0, 3)))
    if total == 0 and 0 not in target:
        target[-1] = 0
    spec = list(target)
    if total and draw(st.booleans()):
        spec[draw(st.integers(0, len(spec) - 1))] = -1
    allowzero = int(0 in target)  # a literal 0 dim needs allowzero; otherwise 0 copies
    for i, d in enumerate(spec):
        if not allowzero and i < len(shape) and d == shape[i] and draw(st.booleans()):
            spec[i] = 0
    return shape, spec, tuple(target), allowzero


@PROPS
@given(reshape_case())
def test_reshape_matches_numpy(case):
    shape, spec, target, allowzero = case
    x = rand(shape)
    (y,) = run_ours(*one_node("Reshape", {"x": x}, opset=14, consts={"s": np.array(spec, I64)},
                              allowzero=allowzero))
    np.testing.assert_array_equal(y, x.reshape(target))


@PROPS
@given(shapes.flatmap(lambda s: st.tuples(st.just(s), st.permutations(range(len(s))))),
       st.sampled_from([np.float32, np.float64, np.int64, np.bool_]))
def test_transpose_matches_numpy_and_ort(case, dtype):
    shape, perm = case
    x = rand(shape, dtype) if dtype is not np.bool_ else rand(shape) > 0
    (y,) = check("Transpose", {"x": x}, perm=list(perm))
    np.testing.assert_array_equal(y, np.transpose(x, perm))


@st.composite
def slice_case(draw):
    shape = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple))
    rank = len(shape)
    axes = draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    axes = [a - rank if draw(st.booleans()) else a for a in axes]  # negative axes too
    bound = st.integers(-8, 8) | st.sampled_from([-2**63, 2**63 - 1])
    starts = [draw(bound) for _ in axes]
    ends = [draw(bound) for _ in axes]
    steps = [draw(st.sampled_from([-3, -2, -1, 1, 2, 3])) for _ in axes]
    # onnxruntime reads ends = INT64_MAX with a negative step as "to the front"; the ONNX spec
    # (and onnx's shape inference) clamp it to dim - 1 like any other end. We follow the spec.
    ends = [e - 1 if e == 2**63 - 1 and s < 0 else e for e, s in zip(ends, steps)]
    return shape, starts, ends, axes, steps


@PROPS
@given(slice_case())
def test_slice_matches_ort(case):
    shape, starts, ends, axes, steps = case
    x = rand(shape, np.float64)
    consts = {n: np.array(v, I64) for n, v in
              (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps))}
    check("Slice", {"x": x}, consts, opset=13)


@PROPS
@given(shapes, st.integers(-4, 3), st.lists(st.integers(0, 3), max_size=2).map(tuple),
       st.data())
def test_gather_matches_numpy_and_ort(shape, axis, ishape, data):
    axis = axis % len(shape) - (len(shape) if axis < 0 else 0)  # keep the sign, in range
    dim = shape[axis]
    idx = np.array(data.draw(st.lists(st.integers(-dim, dim - 1), min_size=int(np.prod(ishape)),
                                      max_size=int(np.prod(ishape)))), I64).reshape(ishape)
    x = rand(shape)
    (y,) = check("Gather", {"x": x, "i": idx}, axis=axis)
    np.testing.assert_array_equal(y, np.take(x, idx, axis=axis))


# --- torch-style shape chains fold away ----------------------------------------------------------

def test_shape_chain_folds_away():
    # y = x.reshape(x.shape[0], -1): Shape -> Gather -> Unsqueeze -> Concat -> Reshape
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
        helper.make_node("Concat", ["b1", "minus1"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["y"]),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, I64), "zero"),
             numpy_helper.from_array(np.array([0], I64), "ax0"),
             numpy_helper.from_array(np.array([-1], I64), "minus1")]
    model = make_model(nodes, [value_info("x", np.float32, ["N", 3, 4])],
                       [value_info("z", np.float32, ["N", 12])], inits)
    inferred = infer(load_graph(model), {"x": TensorType(np.dtype(np.float32), (5, 3, 4))})
    ops = [s.node.op_type for s in inferred.steps]
    assert not {"Shape", "Gather", "Unsqueeze", "Concat"} & set(ops)
    assert inferred.types["shape"].value.tolist() == [5, -1]
    assert inferred.types["y"].shape == (5, 12)
    x = rand((5, 3, 4))
    (z,) = run_ours(model, {"x": x})
    np.testing.assert_array_equal(z, np.maximum(x.reshape(5, 12), 0))


def test_shape_start_end_and_size_are_known_while_planning():
    x = rand((2, 3, 4, 5))
    for kw in ({}, {"start": 1}, {"end": -1}, {"start": -3, "end": 3}, {"start": 9},
               {"start": -9, "end": 2}):
        check("Shape", {"x": x}, opset=15, **kw)
    check("Size", {"x": x})
    g = load_graph(one_node("Shape", {"x": x}, opset=15, start=1, end=-1)[0])
    inferred = infer(g, {"x": TensorType(np.dtype(np.float32), (2, 3, 4, 5))})
    assert inferred.steps == [] and inferred.types["y0"].value.tolist() == [3, 4]


# --- the other ops against onnxruntime -----------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2, 3, -1, -3])
def test_flatten(axis):
    check("Flatten", {"x": rand((2, 3, 4), np.float64)}, axis=axis)


def test_squeeze_unsqueeze():
    x = rand((1, 3, 1, 2))
    check("Squeeze", {"x": x}, opset=11, axes=[0, -2])
    check("Squeeze", {"x": x}, {"a": np.array([-4, 2], I64)})
    check("Squeeze", {"x": x})
    check("Squeeze", {"x": x}, {"a": np.array([], I64)})  # empty axes: all size-1 axes
    check("Unsqueeze", {"x": x}, opset=11, axes=[0, -1])
    check("Unsqueeze", {"x": x}, {"a": np.array([5, 0, -3], I64)})
    check("Unsqueeze", {"x": np.full((), 2.5)}, {"a": np.array([0, 1], I64)})
    with pytest.raises(EdgetrainError, match="not 1"):
        run_ours(*one_node("Squeeze", {"x": x}, consts={"a": np.array([1], I64)}))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis):
    a, b = rand((2, 3, 2), np.float64), rand((2, 3, 2), np.float64)
    c = np.zeros((2, 3, 2), np.float64)
    check("Concat", {"a": a, "b": b, "c": c}, axis=axis)
    check("Concat", {"a": a, "e": np.zeros((2, 3, 0), np.float64)}, axis=-1)


def test_split_variants():
    x = rand((7, 4))
    check("Split", {"x": x}, {"s": np.array([2, 0, 5], I64)}, n_out=3, opset=13)
    check("Split", {"x": x}, n_out=2, opset=13, axis=-1)
    check("Split", {"x": x}, n_out=2, opset=11, axis=1, split=[3, 1])
    check("Split", {"x": x}, n_out=4, opset=18, num_outputs=4)  # uneven: 2, 2, 2, 1
    check("Split", {"x": x}, n_out=3, opset=18, num_outputs=3)  # 3, 3, 1
    with pytest.raises(EdgetrainError):
        run_ours(*one_node("Split", {"x": x}, 2, opset=13))  # 7 is odd


def test_slice_attribute_form_and_errors():
    x = rand((4, 5, 6))
    (y,) = run_ours(*one_node("Slice", {"x": x}, opset=9, starts=[1, -4], ends=[100, -1],
                              axes=[0, 2]))
    np.testing.assert_array_equal(y, x[1:, :, -4:-1])
    consts = {"s": np.array([0], I64), "e": np.array([3], I64), "a": np.array([0], I64),
              "st": np.array([0], I64)}
    with pytest.raises(EdgetrainError, match="steps"):
        run_ours(*one_node("Slice", {"x": x}, consts=consts))


def test_reshape_allowzero_and_errors():
    x = rand((2, 0, 3))
    check("Reshape", {"x": x}, {"s": np.array([0, 3, 0], I64)}, opset=14, allowzero=1)
    check("Reshape", {"x": x}, {"s": np.array([3, 0, 2], I64)}, opset=14)
    x = rand((2, 3, 4))
    check("Reshape", {"x": x}, {"s": np.array([0, -1], I64)})
    for bad in ([5, -1], [-1, -1], [7, 0], [2, 3, 4, 0, 0]):
        with pytest.raises(EdgetrainError):
            run_ours(*one_node("Reshape", {"x": x}, consts={"s": np.array(bad, I64)}))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis):
    x = rand((3, 4), np.float64)
    dim = x.shape[axis]
    idx = RNG.integers(-dim, dim, size=(2, 3)).astype(I64)  # smaller than data, negative too
    check("GatherElements", {"x": x, "i": idx}, axis=axis)


def test_gather_out_of_range_is_an_error():
    x = rand((3, 4))
    with pytest.raises(EdgetrainError, match="out of range"):
        run_ours(*one_node("Gather", {"x": x}, consts={"i": np.array([3], I64)}))


def test_expand_and_tile():
    x = rand((3, 1), np.float64)
    check("Expand", {"x": x}, {"s": np.array([2, 1, 4], I64)})
    check("Expand", {"x": x}, {"s": np.array([1], I64)})
    check("Tile", {"x": x}, {"r": np.array([2, 3], I64)})
    check("Tile", {"x": rand((2, 3), np.int32)}, {"r": np.array([1, 0], I64)})
    with pytest.raises(EdgetrainError):
        run_ours(*one_node("Expand", {"x": x}, consts={"s": np.array([2, 4], I64)}))


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes(mode):
    x = rand((3, 4), np.float64)
    pads = {"p": np.array([1, -1, 2, 2], I64)}
    check("Pad", {"x": x}, pads, opset=19, mode=mode)
    check("Pad", {"x": x}, {"p": np.array([2, 1], I64), "v": np.array(1.5),
                            "a": np.array([-1], I64)}, opset=19, mode=mode)


def test_pad_constant_value_and_attribute_form():
    x = rand((2, 3), np.int32)
    check("Pad", {"x": x}, {"p": np.array([0, 1, 1, 0], I64), "v": np.array(7, np.int32)},
          opset=13)
    check("Pad", {"x": x}, {"p": np.array([1, 1, 1, 1], I64)}, opset=13)
    (y,) = run_ours(*one_node("Pad", {"x": x.astype(np.float32)}, opset=2, pads=[0, 1, 0, 2],
                              value=3.0))
    np.testing.assert_array_equal(y, np.pad(x, [(0, 0), (1, 2)], constant_values=3))
    with pytest.raises(EdgetrainError, match="too large"):
        run_ours(*one_node("Pad", {"x": x}, consts={"p": np.array([0, 3, 0, 0], I64)},
                           mode="reflect"))


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, -1, 0, 2, 9])
def test_trilu(upper, k):
    x = rand((2, 3, 4), np.float64)
    consts = {} if k is None else {"k": np.array(k, I64)}
    check("Trilu", {"x": x}, consts, opset=14, upper=upper)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("dtype", [np.float64, np.int32])
def test_cumsum(exclusive, reverse, dtype):
    x = rand((3, 4), dtype)
    for axis in (0, -1):
        check("CumSum", {"x": x}, {"a": np.array(axis, I64)}, exclusive=exclusive,
              reverse=reverse)


def test_constant_of_shape_and_range():
    check("ConstantOfShape", {}, {"s": np.array([2, 3], I64)},
          value=numpy_helper.from_array(np.array([7], np.int32)))
    check("ConstantOfShape", {}, {"s": np.array([0, 3], I64)})
    check("ConstantOfShape", {}, {"s": np.array([], I64)},
          value=numpy_helper.from_array(np.array([1.5], np.float64)))
    for dtype, args in ((np.int64, (10, -3, -4)), (np.int32, (0, 10, 3)),
                        (np.float32, (0.5, 3.2, 0.7)), (np.float64, (1.0, -1.0, -0.25)),
                        (np.int16, (5, 5, 1))):
        consts = {n: np.array(v, dtype) for n, v in zip(("s", "l", "d"), args)}
        # float: start + i * delta (the spec); onnxruntime accumulates, hence the rounding slack
        check("Range", {}, consts, rtol=1e-6)


def test_constant_attribute_kinds():
    cases = {"value_float": 1.5, "value_floats": [1.0, 2.0], "value_int": 3,
             "value_ints": [1, 2, 3], "value": numpy_helper.from_array(rand((2, 2), np.float64))}
    for name, v in cases.items():
        check("Constant", {}, **{name: v})
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([1.0, 2.0], np.float32)),
        numpy_helper.from_array(np.array([1, 5], I64)), [2, 3])
    (y,) = run_ours(*one_node("Constant", {}, sparse_value=sparse))
    np.testing.assert_array_equal(y, [[0, 1, 0], [0, 0, 2]])
    (s,) = run_ours(*one_node("Constant", {}, value_strings=["a", "bc"]))
    assert s.tolist() == ["a", "bc"]


OPS = ("Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice",
       "Gather", "GatherElements", "Expand", "Tile", "Pad", "Trilu", "CumSum", "Shape", "Size",
       "ConstantOfShape", "Constant", "Range")


@pytest.mark.parametrize("op", OPS)
def test_every_opset_from_14_to_latest_resolves(op):
    from edgetrain.ops.registry import lookup

    for opset in range(14, onnx.defs.onnx_opset_version() + 1):
        lookup(op, "", opset, "n")  # raises UnsupportedOpError if a version is missing
