"""Kill test: SIGKILL a training run at random moments, restart it with resume each time, and
compare the final state bit for bit with an uninterrupted run.

    python tools/kill_test.py [--kills 20] [--seed 0] [--epochs 30] [--workdir DIR]

The run (a child process: this file with --child) trains an MLP with Dropout (masks depend on the
module's step), AdamW (moments) and a cosine LR schedule (the optimizer's step) through
``edgetrain.Trainer`` with a checkpoint after every step (so checkpoint writes fill much of the
time) and ``resume=True``. The parent first times an uninterrupted run, then kills the run at
uniformly random moments within the training (after the child reports it is training), restarts
it, and finally lets it finish. A kill "during a checkpoint write" is one where the child had
flagged (in a shared memory page, no system call) that it was inside ``save_checkpoint``; a
temporary file left behind shows a kill between creating the file and renaming it. After each
kill every checkpoint on disk must load. PASS: parameters, buffers, optimizer moments, steps,
learning rate and history equal the uninterrupted run's, to the bit.
"""
from __future__ import annotations

import argparse
import mmap
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def make_setup(work: Path, hidden: int = 256, samples: int = 950, seed: int = 0) -> None:
    """Artifacts (an MLP with Dropout, AdamW) and data in ``work``."""
    from onnx import TensorProto, helper, numpy_helper
    from edgetrain import artifacts as A
    rng = np.random.default_rng(seed)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0]))
                                       .astype(np.float32), name)
    inits = [init("w1", 64, hidden), init("b1", hidden), init("w2", hidden, 10), init("b2", 10),
             numpy_helper.from_array(np.asarray(0.2, np.float32), "ratio")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"],
             ["h1"]), helper.make_node("Relu", ["h1"], ["h2"]),
             helper.make_node("Dropout", ["h2", "ratio"], ["h3"]),
             helper.make_node("MatMul", ["h3", "w2"], ["l0"]),
             helper.make_node("Add", ["l0", "b2"], ["logits"])]
    graph = helper.make_graph(nodes, "kill_mlp", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 64])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    A.generate_artifacts(model, loss=A.CrossEntropyLoss(), optimizer=A.AdamW(lr=3e-3),
                         artifact_directory=work / "artifacts", seed=seed)
    x = rng.standard_normal((samples, 64)).astype(np.float32)
    y = (x @ rng.standard_normal((64, 10))).argmax(1)
    np.savez(work / "data.npz", x=x, y=y)


def child(work: Path, ckpt: Path, flag: Path, epochs: int) -> None:
    from edgetrain.api import Callback, CosineLRScheduler, EarlyStopping, Trainer

    class Ready(Callback):
        def on_train_begin(self, trainer):
            print("ready", flush=True)

    with open(flag, "r+b") as f:
        busy = mmap.mmap(f.fileno(), 1)
    trainer = Trainer(work / "artifacts", checkpoint_dir=ckpt, checkpoint_every=1, keep_last=3,
                      seed=7, batch_size=32, last_batch="pad", quiet=True, progress=False,
                      callbacks=[Ready(), EarlyStopping("val_loss", patience=10 ** 6)],
                      scheduler=lambda opt: CosineLRScheduler(opt, 10, 30 * epochs, 3e-3, 0.1))
    save, spent = trainer.save_checkpoint, [0.0]

    def flagged_save():
        busy[0] = 1
        t = time.perf_counter()
        try:
            return save()
        finally:
            spent[0] += time.perf_counter() - t
            busy[0] = 0
    trainer.save_checkpoint = flagged_save
    t0 = time.perf_counter()
    with np.load(work / "data.npz") as d:
        val = d["x"][:100], d["y"][:100]
    trainer.fit(work / "data.npz", epochs=epochs, resume=True, validation_data=val)
    print(f"done {time.perf_counter() - t0:.4f} {spent[0]:.4f}", flush=True)


def start(work: Path, ckpt: Path, flag: Path, epochs: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    return subprocess.Popen([sys.executable, __file__, "--child", str(work), str(ckpt), str(flag),
                             str(epochs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def finish(p: subprocess.Popen) -> tuple[float, float]:
    out, err = p.communicate(timeout=600)
    done = [ln for ln in out.splitlines() if ln.startswith("done")]
    if p.returncode != 0 or not done:
        raise RuntimeError(f"the training run failed (exit {p.returncode}):\n{err[-3000:]}")
    _, total, saving = done[-1].split()
    return float(total), float(saving)


def final_state(ckpt: Path):
    from edgetrain.api import CheckpointState
    newest = sorted(p for p in ckpt.iterdir() if p.name.startswith("ckpt-")
                    and not p.name.endswith(".corrupt"))[-1]
    return newest.name, CheckpointState.load_checkpoint(newest)


def identical(a, b) -> list[str]:
    """What differs between two checkpoint states (empty: bit-identical)."""
    bad = [k for k in a.parameters if a.parameters[k].data.tobytes()
           != b.parameters[k].data.tobytes()]
    for m, per in a.optimizer["moments"].items():
        bad += [f"{m}/{k}" for k, v in per.items()
                if v.tobytes() != b.optimizer["moments"][m][k].tobytes()]
    for k in ("step", "lr"):
        if a.optimizer[k] != b.optimizer[k]:
            bad.append(f"optimizer {k}")
    if a.train_step != b.train_step:
        bad.append("train_step")
    if dict(a.properties) != dict(b.properties):
        bad.append("properties (position, history)")
    return bad


def run(kills: int = 20, seed: int = 0, epochs: int = 30, work: Path | None = None,
        hidden: int = 256, samples: int = 950, spread: float = 0.8, say=print) -> dict:
    from edgetrain.api import CheckpointError, CheckpointState
    work = Path(work or tempfile.mkdtemp(prefix="edgetrain-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    make_setup(work, hidden, samples, seed)
    flag = work / "busy"
    flag.write_bytes(b"\0")
    ref_t, ref_save = finish(start(work, work / "reference", flag, epochs))
    say(f"uninterrupted run: {ref_t:.2f} s of training, {100 * ref_save / ref_t:.0f}% of it "
        "in checkpoint writes")
    rng = np.random.default_rng(seed)
    window = spread * ref_t / kills  # the kills end within 80% of the run (40% on average)
    ckpt = work / "killed"
    n = in_write = tmp_left = damaged = 0
    while n < kills:
        p = start(work, ckpt, flag, epochs)
        if not p.stdout.readline().startswith("ready"):
            finish(p)  # raises with the child's error
        time.sleep(rng.uniform(0, window))
        if p.poll() is not None:
            say("the run finished before the kill; fewer kills than asked")
            finish(p)
            break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
        p.stderr.close()
        n += 1
        in_write += flag.read_bytes()[:1] == b"\1"
        tmp_left += any(f.name.startswith(".tmp-") for f in ckpt.iterdir())
        for f in ckpt.iterdir():
            if f.name.startswith("ckpt-"):
                try:
                    CheckpointState.load_checkpoint(f)
                except CheckpointError:
                    damaged += 1
        flag.write_bytes(b"\0")
    else:
        finish(start(work, ckpt, flag, epochs))
    (name_a, a), (name_b, b) = final_state(work / "reference"), final_state(ckpt)
    diff = identical(a, b) + ([f"{name_a} != {name_b}"] if name_a != name_b else [])
    result = {"kills": n, "during_checkpoint_write": in_write, "temp_file_left": tmp_left,
              "damaged_checkpoints": damaged, "differences": diff,
              "pass": n == kills and not diff and damaged == 0,
              "values": sum(a.parameters[k].data.size for k in a.parameters), "work": str(work)}
    say(f"{n} kills (SIGKILL at random moments, a checkpoint after every step), {in_write} during "
        f"a checkpoint write, {tmp_left} with a temporary file left behind; {damaged} damaged "
        f"checkpoints found after the kills")
    say(f"final state ({name_b}: {result['values']} parameter values, optimizer moments, steps, "
        f"learning rate, history) vs the uninterrupted run: "
        f"{'bit-identical' if not diff else 'DIFFERENT: ' + ', '.join(diff)}")
    say("PASS" if result["pass"] else "FAIL")
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        work, ckpt, flag, epochs = args.child
        child(Path(work), Path(ckpt), Path(flag), int(epochs))
        return 0
    return 0 if run(args.kills, args.seed, args.epochs, args.workdir)["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
