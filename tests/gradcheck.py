"""Check gradient rules against central finite differences in float64.

The model's outputs are reduced to a scalar loss L = sum_k sum(y_k * R_k) with fixed random R_k (so
every output element matters with a different weight); edgetrain's backward graph gives dL/dx for
the chosen inputs, and each element is compared with (L(x + eps) - L(x - eps)) / (2 eps).

Error measure, per element: |analytic - numeric| / max(|numeric|, 1e-3 * max|numeric|) — relative,
with a floor at a thousandth of the tensor's largest gradient so that elements whose gradient is
(nearly) zero do not demand more digits than float64 finite differences can give.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from edgetrain.autodiff import build_backward
from edgetrain.graph import Graph, Node, Value, load_graph
from edgetrain.runtime import InferenceSession


def with_sum_loss(graph: Graph, outputs: list[np.ndarray], rng) -> Graph:
    """The graph plus a scalar output 'loss' = sum_k sum(out_k * R_k)."""
    nodes, inits, terms = list(graph.nodes), dict(graph.initializers), []
    for v, y in zip(graph.outputs, outputs):
        if np.asarray(y).dtype.kind != "f":
            continue
        r = f"{v.name}__R"
        inits[r] = rng.standard_normal(np.shape(y)).astype(np.asarray(y).dtype)
        nodes += [Node("Mul", [v.name, r], [f"{v.name}__wy"], {}, f"{v.name}__mul"),
                  Node("ReduceSum", [f"{v.name}__wy"], [f"{v.name}__l"], {"keepdims": 0},
                       f"{v.name}__sum")]
        terms.append(f"{v.name}__l")
    acc = terms[0]
    for i, t in enumerate(terms[1:]):
        nodes.append(Node("Add", [acc, t], [f"loss__acc{i}"], {}, f"loss__add{i}"))
        acc = f"loss__acc{i}"
    nodes.append(Node("Identity", [acc], ["loss"], {}, "loss__out"))
    return Graph(nodes, list(graph.inputs), [Value("loss", np.dtype(np.float64), ())], inits,
                 dict(graph.opsets), graph.name)


def check_gradients(model, feeds: dict[str, np.ndarray], wrt: list[str], *, eps: float = 1e-6,
                    seed: int = 0) -> float:
    """Largest error (see module doc) over every element of every ``wrt`` input."""
    graph = model if isinstance(model, Graph) else load_graph(model)
    outs = InferenceSession(graph, check=True).run(None, feeds)
    lossy = with_sum_loss(graph, outs, np.random.default_rng(seed))
    back = build_backward(lossy, "loss", wrt)
    sess = InferenceSession(back.graph, check=True)
    names = [back.gradients[w] for w in wrt]
    analytic = sess.run(names, feeds)
    fwd = InferenceSession(lossy)
    worst = 0.0
    for w, a in zip(wrt, analytic):
        x = feeds[w]
        assert a.shape == x.shape and a.dtype == x.dtype, (w, a.shape, x.shape, a.dtype)
        num = np.zeros_like(x)
        flat = x.reshape(-1)
        for i in range(flat.size):
            plus, minus = flat.copy(), flat.copy()
            plus[i] += eps
            minus[i] -= eps
            lp = fwd.run(["loss"], {**feeds, w: plus.reshape(x.shape)})[0]
            lm = fwd.run(["loss"], {**feeds, w: minus.reshape(x.shape)})[0]
            num.reshape(-1)[i] = (lp - lm) / (2 * eps)
        floor = max(1e-3 * float(np.abs(num).max()), 1e-12)
        err = np.abs(a - num) / np.maximum(np.abs(num), floor)
        worst = max(worst, float(err.max()))
    return worst


def one_node_graph(op: str, inputs: dict[str, np.ndarray], n_out: int = 1, opset: int = 17,
                   consts: dict[str, np.ndarray] | None = None,
                   input_order: list[str] | None = None, **attrs) -> onnx.ModelProto:
    """A model of one node; ``inputs`` are graph inputs, ``consts`` initializers.

    The node reads ``inputs`` in order, or the names in ``input_order`` (which may repeat a name,
    name a constant, or hold "" to leave an optional input out).
    """
    consts = consts or {}
    order = list(inputs) if input_order is None else list(input_order)
    vis = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in inputs.items()]
    outs = [helper.make_tensor_value_info(f"y{i}", onnx.TensorProto.UNDEFINED, None)
            for i in range(n_out)]
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in consts.items()]
    node = helper.make_node(op, order, [o.name for o in outs], **attrs)
    g = helper.make_graph([node], "g", vis, outs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
