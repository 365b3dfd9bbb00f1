"""The memory plan's invariants: no two tensors whose lifetimes overlap share arena bytes, the
arena is never below the lower bound, and on real training graphs it stays close to it."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from edgetrain import artifacts as A, load_graph
from edgetrain.ops.registry import TensorType
from edgetrain.plan import Interval, check, lower_bound, make_plan, place
from training_util import GOLDEN


@st.composite
def interval_sets(draw):
    n = draw(st.integers(1, 40))
    out = []
    for i in range(n):
        first = draw(st.integers(0, 30))
        out.append(Interval(f"t{i}", draw(st.integers(0, 5000)), first,
                            first + draw(st.integers(0, 15))))
    return out


@settings(max_examples=300, deadline=None)
@given(interval_sets())
def test_placement_never_overlaps_and_respects_the_bound(tensors):
    p = place(tensors)
    check(tensors, p)
    assert p.arena >= p.lower_bound == lower_bound(tensors)


def test_check_catches_an_overlap():
    a, b = Interval("a", 100, 0, 5), Interval("b", 100, 3, 8)
    p = place([a, b])
    p.offsets["b"] = p.offsets["a"]
    try:
        check([a, b], p)
    except AssertionError as e:
        assert "overlap" in str(e)
    else:
        raise AssertionError("check missed an overlap")


def _training_plan(tmp_path, model, batch, inplace=True, **kw):
    paths = A.generate_artifacts(str(GOLDEN / model), loss=A.CrossEntropyLoss(),
                                 artifact_directory=tmp_path, **kw)
    g = load_graph(paths["training_model"])
    sig = {v.name: TensorType(v.dtype, tuple(batch if isinstance(d, str) else d
                                             for d in v.shape)) for v in g.inputs}
    return make_plan(g, sig, inplace=inplace)


def test_real_training_graphs_plan_close_to_the_bound(tmp_path):
    for i, (model, kw) in enumerate([("cnn.onnx", {}), ("cnn.onnx", {"batchnorm": "train"}),
                                     ("lm.onnx", {}), ("mlp.onnx", {})]):
        plan = _training_plan(tmp_path / str(i), model, 8, **kw)
        check([b.interval() for b in plan.buffers], plan.placement)
        assert plan.placement.efficiency >= 0.9, (model, plan.report())
        assert "arena" in plan.report()


def test_inplace_and_frozen_backbone_shrink_the_arena(tmp_path):
    full = _training_plan(tmp_path / "a", "cnn.onnx", 8, inplace=False)
    head = _training_plan(tmp_path / "b", "cnn.onnx", 8, inplace=False,
                          requires_grad=["fc.weight", "fc.bias"])
    head_inplace = _training_plan(tmp_path / "c", "cnn.onnx", 8,
                                  requires_grad=["fc.weight", "fc.bias"])
    assert head.placement.arena < full.placement.arena
    assert head_inplace.placement.arena < head.placement.arena
    shared = sum(1 for v, b in head_inplace.owner.items() if v != b)
    assert shared > 0
