"""Swapping activations to storage: bit-identical training, a plan that keeps fewer bytes, the
swap steps in a safe order, and faults (no room, unwritable place, a killed process) detected
before a step runs or leaving the checkpoint loadable."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from edgetrain.api import CheckpointState, Module, Optimizer
from edgetrain.plan.swap import SUFFIX, SwapSettings
from edgetrain.runtime.swap import SwapError
from training_util import GOLDEN, MANIFEST, make_artifacts

ALL = SwapSettings(target=0, lookahead=2, min_bytes=0)  # swap whatever helps


def _setup(run, folder, swap=None, **knobs):
    paths = make_artifacts(run, folder)
    state = CheckpointState.load_checkpoint(paths["checkpoint"])
    module = Module(paths["training_model"], state, paths["eval_model"], chunk_frozen=False,
                    **knobs)
    if swap is not None:
        module._set_swap(swap)
    return module, Optimizer(paths["optimizer_model"], module), np.load(GOLDEN / run["data"])


@pytest.mark.parametrize("name", ["lm_adamw", "cnn_sgd_train", "mlp_sgd"])
@pytest.mark.parametrize("fused", [True, False])
def test_swapped_training_is_bit_identical(tmp_path, name, fused):
    run = MANIFEST["runs"][name]
    results = []
    for swap in (None, ALL):
        module, opt, data = _setup(run, tmp_path / str(swap is None), swap)
        losses = []
        for i in range(3):
            if fused:
                losses.append(np.asarray(opt.train_step(data["x"][i], data["labels"][i])))
            else:
                losses.append(np.asarray(module(data["x"][i], data["labels"][i])))
                opt.step()
                module.lazy_reset_grad()
        results.append(([l.tobytes() for l in losses], module))
    (ref, plain), (got, swapped) = results
    assert got == ref
    for k, p in plain._state.parameters.items():
        np.testing.assert_array_equal(swapped._state.parameters[k].data, p.data)
    sessions = [swapped._train_session, *swapped._fused.values()]
    files = [e.plan.swap_file for s in sessions for e in s._plans.values() if e.plan.swap_file]
    if name != "mlp_sgd":  # the MLP's activations are read back at once: nothing to swap
        assert files and all(f.written == f.read_back > 0 for f in files)


def test_swap_keeps_fewer_bytes_and_orders_its_steps(tmp_path):
    module, opt, data = _setup(MANIFEST["runs"]["lm_adamw"], tmp_path)
    feeds = (data["x"][0], data["labels"][0])
    full = module.memory_plan(*feeds)
    module._set_swap(ALL)
    module._fused.clear()
    plan = module.memory_plan(*feeds)
    assert plan.swapped > 0 and plan.placement.lower_bound < full.placement.lower_bound
    steps = plan.inferred.steps
    at = {(s.node.op_type, s.node.name.split("/", 1)[-1]): i for i, s in enumerate(steps)
          if s.node.op_type.startswith("Swap")}
    swapped = {v for (op, v) in at if op == "SwapOut"}
    assert len(swapped) == plan.swapped
    for v in swapped:
        out, free = at[("SwapOut", v)], at[("SwapFree", v)]
        start, ready = at[("SwapIn", v)], at[("SwapReady", v)]
        assert out < free < start < ready
        readers = [i for i, s in enumerate(steps) if v in s.node.inputs]
        assert max(readers) == free  # nothing reads it once its bytes are freed
        back = [i for i, s in enumerate(steps) if v + SUFFIX in s.node.inputs]
        assert min(back) == ready  # backward reads the copy read back, after it is ready


def _plain_params(module):
    return {k: p.data.copy() for k, p in module._state.parameters.items()}


def test_no_room_or_no_write_access_is_an_error_before_the_step(tmp_path, monkeypatch):
    run = MANIFEST["runs"]["lm_adamw"]
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root writes anywhere: simulate the refusal instead
        real_open = os.open

        def refuse(path, flags, *a):
            if os.fspath(path) == str(ro):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *a)
        monkeypatch.setattr(os, "open", refuse)
        monkeypatch.setattr("tempfile.TemporaryFile",
                            lambda dir=None, **k: refuse(dir, 0))
    module, opt, data = _setup(run, tmp_path / "a", SwapSettings(0, str(ro), 2, 0))
    before = _plain_params(module)
    with pytest.raises(SwapError, match="cannot swap to .*ro.*Permission denied"):
        opt.train_step(data["x"][0], data["labels"][0])
    for k, v in _plain_params(module).items():
        np.testing.assert_array_equal(v, before[k])
    assert opt.step_count == 0 and module._state.train_step == 0
    monkeypatch.undo()

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "posix_fallocate", full)
    module, opt, data = _setup(run, tmp_path / "b", SwapSettings(0, str(tmp_path), 2, 0))
    before = _plain_params(module)
    with pytest.raises(SwapError, match="No space left"):
        opt.train_step(data["x"][0], data["labels"][0])
    for k, v in _plain_params(module).items():
        np.testing.assert_array_equal(v, before[k])
    assert not [f for f in os.listdir(tmp_path) if f.startswith("tmp")]  # no file left


def test_killed_during_swapped_steps_the_last_checkpoint_loads(tmp_path):
    run = MANIFEST["runs"]["lm_adamw"]
    paths = make_artifacts(run, tmp_path / "art")
    swapdir = tmp_path / "swap"
    swapdir.mkdir()
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from edgetrain.api import CheckpointState, Module, Optimizer
        from edgetrain.plan.swap import SwapSettings
        data = np.load({str(GOLDEN / run['data'])!r})
        state = CheckpointState.load_checkpoint({paths['checkpoint']!r})
        m = Module({paths['training_model']!r}, state, chunk_frozen=False)
        m._set_swap(SwapSettings(0, {str(swapdir)!r}, 2, 0))
        o = Optimizer({paths['optimizer_model']!r}, m)
        for i in range(10 ** 6):
            o.train_step(data["x"][i % 20], data["labels"][i % 20])
            CheckpointState.save_checkpoint(state, {str(tmp_path / 'ckpt')!r}, True)
            print(i, flush=True)
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "0"  # a checkpoint is written; steps go on
    time.sleep(0.3)
    p.send_signal(signal.SIGKILL)
    p.wait()
    state = CheckpointState.load_checkpoint(tmp_path / "ckpt")
    assert state.optimizer["step"] >= 1
    assert os.listdir(swapdir) == []  # the swap file had no name: nothing is left


@pytest.mark.parametrize("direct", [True, False])
def test_swap_file_round_trips_bytes_of_any_size(tmp_path, monkeypatch, direct):
    from edgetrain.runtime.swap import SwapFile
    if not direct:  # a file system without O_DIRECT (tmpfs): the buffered path
        monkeypatch.setattr(os, "O_DIRECT", 0, raising=False)
    f = SwapFile(str(tmp_path))
    sizes = [3 * 2 ** 20 + 123, 5, 2 ** 20]
    slots = [f.add(n) for n in sizes]
    f.open()
    rng = np.random.default_rng(0)
    data = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    for s, d in zip(slots, data):
        f.start_write(s, d)
    for s in slots:
        f.wait(s)
    back = [np.zeros_like(d) for d in data]
    for s, b in zip(slots, back):
        f.start_read(s, b)
        f.wait(s)
    for d, b in zip(data, back):
        np.testing.assert_array_equal(d, b)
    assert f.written == f.read_back == sum(sizes)
    f.close()
