"""Every loss against PyTorch's functional losses (golden values and input gradients, float64,
recorded by tools/make_golden.py), plus the custom-loss and error paths."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgetrain import artifacts as A
from edgetrain.autodiff import build_backward
from edgetrain.graph import Graph, Node, Value
from edgetrain.runtime import InferenceSession
from edgetrain.training.graphs import attach_loss

GOLDEN = np.load(Path(__file__).parent / "data" / "golden" / "losses.npz")
OPTIONS = json.loads(str(GOLDEN["__options__"]))


def _loss_for(opt: dict, case: str):
    fn, red = opt["fn"], opt["reduction"]
    w = GOLDEN[f"{case}/weight"] if f"{case}/weight" in GOLDEN.files else None
    if fn in ("cross_entropy", "nll_loss"):
        cls = A.CrossEntropyLoss if fn == "cross_entropy" else A.NLLLoss
        kw = {"label_smoothing": opt.get("label_smoothing", 0.0)} if fn == "cross_entropy" else {}
        return cls(reduction=red, weight=w, ignore_index=opt.get("ignore_index", -100), **kw)
    if fn == "binary_cross_entropy_with_logits":
        pw = GOLDEN[f"{case}/pos_weight"] if f"{case}/pos_weight" in GOLDEN.files else None
        return A.BCEWithLogitsLoss(reduction=red, weight=w, pos_weight=pw)
    if fn == "kl_div":
        return A.KLDivLoss(reduction=red, log_target=opt["log_target"])
    if fn == "smooth_l1_loss":
        return A.SmoothL1Loss(reduction=red, beta=opt["beta"])
    if fn == "huber_loss":
        return A.HuberLoss(reduction=red, delta=opt["delta"])
    return {"mse_loss": A.MSELoss, "l1_loss": A.L1Loss}[fn](reduction=red)


def _run(loss, x: np.ndarray, t: np.ndarray, grad_output: np.ndarray):
    """(loss, d sum(loss * grad_output) / dx) through edgetrain's graph."""
    shape = tuple(f"d{i}" for i in range(x.ndim))
    g = Graph([Node("Identity", ["x"], ["y"], {}, "id")], [Value("x", x.dtype, shape)],
              [Value("y", x.dtype, shape)], {}, {"": 17})
    g, name, labels = attach_loss(g, loss, ["y"])
    g.nodes.append(Node("Mul", [name, "go"], ["weighted"], {}, "w"))
    g.nodes.append(Node("ReduceSum", ["weighted"], ["total"], {"keepdims": 0}, "s"))
    g.initializers["go"] = grad_output
    back = build_backward(g, "total", ["x"])
    sess = InferenceSession(back.graph, check=True)
    return sess.run([name, back.gradients["x"]], {"x": x, labels[0].name: t})


@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_loss_matches_pytorch(case):
    x, t = GOLDEN[f"{case}/input"], GOLDEN[f"{case}/target"]
    loss, grad = _run(_loss_for(OPTIONS[case], case), x, t, GOLDEN[f"{case}/grad_output"])
    np.testing.assert_allclose(loss, GOLDEN[f"{case}/loss"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(grad, GOLDEN[f"{case}/grad"], rtol=1e-9, atol=1e-12)


def test_golden_covers_every_loss_and_option():
    fns = {o["fn"] for o in OPTIONS.values()}
    assert fns == {"cross_entropy", "nll_loss", "mse_loss", "l1_loss", "smooth_l1_loss",
                   "huber_loss", "binary_cross_entropy_with_logits", "kl_div"}
    names = set(OPTIONS)
    for part in ("_seq", "_weight", "_ignore", "_smooth", "_none", "_sum", "_mean", "pos_weight",
                 "batchmean", "log_target"):
        assert any(part in n for n in names), part


def test_bad_loss_options_are_refused():
    with pytest.raises(A.LossError, match="reduction 'avg'"):
        A.MSELoss(reduction="avg")
    with pytest.raises(A.LossError, match="label_smoothing"):
        A.CrossEntropyLoss(label_smoothing=1.5)


def test_custom_loss_model_over_outputs(tmp_path):
    """A loss given as an ONNX model: its input named like the model output is wired to it, its
    other input becomes a label input; equals the built-in MSE."""
    from onnx import TensorProto, helper
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)
    tgt = helper.make_tensor_value_info("goal", TensorProto.DOUBLE, None)
    out = helper.make_tensor_value_info("l", TensorProto.DOUBLE, [])
    nodes = [helper.make_node("Sub", ["y", "goal"], ["d"]), helper.make_node("Mul", ["d", "d"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["l"], keepdims=0)]
    model = helper.make_model(helper.make_graph(nodes, "loss", [y, tgt], [out]),
                              opset_imports=[helper.make_opsetid("", 13)])
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    go = np.asarray(1.0)
    got = _run(A.CustomLoss(model), x, t, go)
    want = _run(A.MSELoss(), x, t, go)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-12)
