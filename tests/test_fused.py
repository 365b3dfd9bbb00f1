"""The fused step (``Optimizer.train_step``): each parameter updated as soon as its gradient is
final. It must give the bits of ``module(...); optimizer.step(); module.lazy_reset_grad()``,
fall back to them where it cannot fuse (accumulating gradients, gradient clipping), and keep
less memory."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from edgetrain import artifacts as A
from edgetrain.api import CheckpointState, Module, Optimizer
from edgetrain.graph.ir import Node
from edgetrain.plan.mutation import settle
from edgetrain.training.optim import OptimizerError
from training_util import GOLDEN, MANIFEST, make_artifacts


def _setup(run, folder, **knobs):
    paths = make_artifacts(run, folder)
    state = CheckpointState.load_checkpoint(paths["checkpoint"])
    module = Module(paths["training_model"], state, paths["eval_model"], **knobs)
    return module, Optimizer(paths["optimizer_model"], module), np.load(GOLDEN / run["data"])


def _same_state(a: CheckpointState, b: CheckpointState):
    for k, p in a.parameters.items():
        np.testing.assert_array_equal(b.parameters[k].data, p.data, err_msg=k)
    assert a.optimizer["step"] == b.optimizer["step"]
    for m, per in a.optimizer["moments"].items():
        for k, v in per.items():
            np.testing.assert_array_equal(b.optimizer["moments"][m][k], v, err_msg=(m, k))


@pytest.mark.parametrize("name,knobs", [
    ("mlp_adamw", {}), ("mlp_sgd", {}), ("cnn_sgd_train", {}), ("cnn_adamw_frozen", {}),
    ("lm_adamw", {}), ("cnn_sgd_frozen_last", {}), ("lm_sgd_last", {}),
    ("cnn_adamw_frozen", {"planned": False}), ("lm_adamw", {"recompute": False})])
def test_fused_step_is_bit_identical_to_module_step_reset(tmp_path, name, knobs):
    run = MANIFEST["runs"][name]
    ref, ref_opt, data = _setup(run, tmp_path / "ref", **knobs)
    fused, opt, _ = _setup(run, tmp_path / "fused", **knobs)
    for i in range(3):
        want = ref(data["x"][i], data["labels"][i])
        ref_opt.step()
        ref.lazy_reset_grad()
        got = opt.train_step(data["x"][i], data["labels"][i])
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes(), i
    _same_state(ref._state, fused._state)
    assert fused._state.train_step == ref._state.train_step == 3
    if knobs.get("planned", True):
        assert fused._fused, "the fused graph should have run"
    with pytest.raises(OptimizerError, match="no gradient"):
        opt.step()  # the fused step applied them: nothing is left to apply twice


def test_accumulation_and_clipping_fall_back_to_the_plain_step(tmp_path):
    run = MANIFEST["runs"]["mlp_adamw"]
    ref, ref_opt, data = _setup(run, tmp_path / "ref")
    acc, opt, _ = _setup(run, tmp_path / "acc")
    x, y = data["x"], data["labels"]
    ref(x[0], y[0])
    ref(x[1], y[1])            # gradients of two batches, added
    ref_opt.step()
    ref.lazy_reset_grad()
    acc(x[0], y[0])
    opt.train_step(x[1], y[1])  # accumulating: must add, then update, then reset
    _same_state(ref._state, acc._state)
    assert not acc._fused

    paths = make_artifacts(run, tmp_path / "clip")
    paths_opt = str(tmp_path / "clip.json")
    from edgetrain.training.optim import write_description
    write_description(A.AdamW(lr=1e-2, max_grad_norm=1e-3), paths_opt)
    states = []
    for fused in (False, True):
        state = CheckpointState.load_checkpoint(paths["checkpoint"])
        module = Module(paths["training_model"], state, paths["eval_model"])
        o = Optimizer(paths_opt, module)
        for i in range(2):
            if fused:
                o.train_step(x[i], y[i])
            else:
                module(x[i], y[i])
                o.step()
                module.lazy_reset_grad()
        states.append(state)
        assert not module._fused
    _same_state(*states)


def test_fused_plan_keeps_no_gradients_and_less_memory(tmp_path):
    run = MANIFEST["runs"]["lm_adamw"]
    module, opt, data = _setup(run, tmp_path)
    feeds = (data["x"][0], data["labels"][0])
    plain = module.memory_plan(*feeds, fused=False)
    fused = module.memory_plan(*feeds)
    assert "gradients (kept for the optimizer)" in plain.external_bytes
    assert "gradients (kept for the optimizer)" not in fused.external_bytes
    kept = plain.external_bytes["gradients (kept for the optimizer)"]
    assert (fused.placement.lower_bound + sum(fused.external_bytes.values())
            < plain.placement.lower_bound + sum(plain.external_bytes.values()) - kept // 4)
    steps = fused.inferred.steps
    applies = [i for i, s in enumerate(steps) if s.node.op_type == "ApplyUpdate"]
    assert len(applies) == len(module._roles.trainable)
    assert applies[0] < len(steps) - len(applies), "updates should not all wait for the end"
    for i in applies:  # after every reader of the old parameter
        p = steps[i].node.inputs[0]
        assert all(p not in s.node.inputs for s in steps[i + 1:])


def _step(op, inputs, outputs, mutates=None):
    return SimpleNamespace(node=Node(op, inputs, outputs), opdef=SimpleNamespace(mutates=mutates))


def test_settle_moves_an_update_after_every_reader_of_the_parameter_and_its_views():
    steps = [_step("MatMul", ["x", "w"], ["h"]),        # 0 reads w
             _step("Reshape", ["w", "s"], ["wv"]),       # 1 a view of w
             _step("Mul", ["h", "h"], ["gw"]),           # 2 the gradient of w is final
             _step("Relu", ["h"], ["r"]),                # 3
             _step("MatMul", ["r", "wv"], ["dx"]),       # 4 reads the view of w: update after
             _step("Neg", ["dx"], ["out"]),              # 5
             _step("ApplyUpdate", ["w", "gw"], [], mutates=0),
             _step("ApplyUpdate", ["b", "gw"], [], mutates=0)]  # b: no other reader
    order = [(s.node.op_type, s.node.inputs) for s in settle(steps)]
    w, b = order.index(("ApplyUpdate", ["w", "gw"])), order.index(("ApplyUpdate", ["b", "gw"]))
    assert order[w - 1] == ("MatMul", ["r", "wv"])  # right after the last reader of w's view
    assert order[b - 1] == ("Mul", ["h", "h"])      # right after its gradient is made
    assert [s for s in order if s[0] != "ApplyUpdate"] == [
        (s.node.op_type, s.node.inputs) for s in steps[:6]]
