"""Small ONNX models run by edgetrain and by onnxruntime, the reference the tests compare with.

    model, feeds = one_node("Gemm", [a, b], [np.float32], opset=13, consts={"c": c}, alpha=0.5)
    got, want = run_both(model, feeds)
    assert_all_close(got, want, rtol=1e-5, atol=1e-5)
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import edgetrain

IR_VERSION = 9  # onnxruntime reads it for every opset the tests use


def value_info(name, dtype, shape=None):
    """A tensor graph input/output; ``dtype`` a NumPy dtype or an ONNX element type."""
    elem = dtype if isinstance(dtype, int) else helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    return helper.make_tensor_value_info(name, elem, shape)


def make_model(nodes, inputs, outputs, inits=(), opset=17, domains=()):
    """A model of one graph; ``domains`` are custom domains imported at version 1."""
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def one_node(op, inputs, outputs=1, opset=17, consts=None, **attrs):
    """A model of a single ``op`` node, and the feeds that run it: ``(model, feeds)``.

    inputs: the arrays fed as graph inputs, a list (named x0, x1, ...) or a dict name -> array.
    consts: a dict name -> array of initializers, after ``inputs`` in the node's input list.
        In both, None is an absent optional input: "" in the node's input list (to leave a
        trailing one off the node, leave it out).
    outputs: one element type per output (None: an absent output, "" in the node's output
        list), or a count of outputs typed by onnx's shape inference (as the first fed input
        where inference fails, as it may for a node the test expects to be refused).
    attrs: the node's attributes (``name`` and ``domain`` go to the node itself).
    The outputs are named y0, y1, ... and ``feeds`` holds the inputs that are not None.
    """
    if not isinstance(inputs, dict):
        inputs = {f"x{i}": a for i, a in enumerate(inputs)}
    consts = consts or {}
    feeds = {k: v for k, v in inputs.items() if v is not None}
    ins = [value_info(k, v.dtype, v.shape) for k, v in feeds.items()]
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items() if v is not None]
    node_ins = ["" if v is None else k for k, v in [*inputs.items(), *consts.items()]]
    typed = not isinstance(outputs, int)
    names = ([("" if d is None else f"y{i}") for i, d in enumerate(outputs)] if typed
             else [f"y{i}" for i in range(outputs)])
    node = helper.make_node(op, node_ins, names, **attrs)
    if typed:
        outs = [value_info(n, d) for n, d in zip(names, outputs) if n]
        return make_model([node], ins, outs, inits, opset), feeds
    model = make_model([node], ins, [helper.make_empty_tensor_value_info(n) for n in names],
                       inits, opset)
    inferred = onnx.shape_inference.infer_shapes(model).graph.output
    fallback = ins[0].type.tensor_type.elem_type if ins else TensorProto.FLOAT
    model.graph.ClearField("output")
    model.graph.output.extend(value_info(v.name, v.type.tensor_type.elem_type or fallback)
                              for v in inferred)
    return model, feeds


def run_ours(model, feeds):
    """edgetrain's outputs for a model (or a model file), each kernel's result checked against
    its shape rule."""
    return edgetrain.InferenceSession(model, check=True).run(None, feeds)


def run_ort(model, feeds):
    """onnxruntime's outputs for a model (or a model file): CPU, no graph optimizations."""
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def run_both(model, feeds):
    """``(run_ours(...), run_ort(...))``."""
    return run_ours(model, feeds), run_ort(model, feeds)


def run_ort_float32(model, feeds):
    """onnxruntime's answer for a float64 model from its float32 kernels, for the ops it has
    no float64 kernels for: float64 inputs, initializers and outputs become float32, and the
    outputs the model declares float64 come back widened to float64."""
    m32 = onnx.ModelProto()
    m32.CopyFrom(model)
    for v in [*m32.graph.input, *m32.graph.output]:
        if v.type.tensor_type.elem_type == TensorProto.DOUBLE:
            v.type.tensor_type.elem_type = TensorProto.FLOAT
    for t in m32.graph.initializer:
        if t.data_type == TensorProto.DOUBLE:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32),
                                               t.name))
    res = run_ort(m32, {k: v.astype(np.float32) if v.dtype == np.float64 else v
                        for k, v in feeds.items()})
    wide = [v.type.tensor_type.elem_type == TensorProto.DOUBLE for v in model.graph.output]
    return [r.astype(np.float64) if w else r for r, w in zip(res, wide)]


def assert_close(got, want, rtol=0.0, atol=0.0):
    """Same dtype and shape, and values within ``np.testing.assert_allclose``'s rtol and atol;
    with both 0, equal (``assert_array_equal``: exact for integers of any size too)."""
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape,
                                                                  want.dtype, want.shape)
    if rtol == atol == 0:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def assert_all_close(got, want, rtol=0.0, atol=0.0):
    """``assert_close`` output by output; both lists as long."""
    assert len(got) == len(want), (len(got), len(want))
    for g, w in zip(got, want):
        assert_close(g, w, rtol, atol)


def check_against_ort(model, feeds, rtol=0.0, atol=0.0):
    """Run both, ``assert_all_close`` the outputs, and return edgetrain's."""
    got, want = run_both(model, feeds)
    assert_all_close(got, want, rtol, atol)
    return got
