"""Trainer: seeded mini-batch epochs over a Module and its Optimizer, metrics, callbacks, and
checkpoints that resume bit for bit: epoch e's order is a pure function of (seed, e); a checkpoint
``ckpt-<optimizer step:08d>`` (written atomically by ``CheckpointState.save``; older ones deleted
only after it) holds the parameters, optimizer moments, step and learning rate, the module's step
(dropout masks) and, in ``properties["trainer.*"]``, the position, running sums, history and
callbacks' state."""
from __future__ import annotations

import difflib
import json
import os
import re
import sys
import warnings
from typing import Iterable, Mapping

import numpy as np

from ..errors import EdgetrainError, InputError
from .callbacks import Callback, Logger, LRSchedule, ProgressBar
from .checkpoint import CheckpointError, CheckpointState
from .data import Source as _Source
from .module import Module
from .optim import Optimizer

CKPT = re.compile(r"^ckpt-(\d{8,})$")
_KIND = {"f": "float", "i": "int", "u": "int", "b": "bool"}


class TrainerError(EdgetrainError):
    """Bad Trainer settings, or a checkpoint folder that does not fit this run."""


def correct(logits, labels, n: int):
    """(right, counted) over the first ``n`` rows for class scores on the last axis against int
    labels (labels outside the classes, like an ignore_index, do not count); None otherwise."""
    if (logits is None or labels is None or logits.dtype.kind != "f" or labels.dtype.kind
            not in "iu" or logits.ndim < 2 or logits.shape[:-1] != labels.shape):
        return None
    lg, lb = logits[:n], labels[:n]
    valid = (lb >= 0) & (lb < logits.shape[-1])
    return int(((lg.argmax(-1) == lb) & valid).sum()), int(valid.sum())


class Trainer:
    """``Trainer(artifact_directory or (module, optimizer), ...)``: ``fit(data, epochs)`` returns
    the history (metric -> a value per epoch), ``evaluate(data)`` the loss and accuracy. ``data``:
    ``(x, y)`` arrays in ``module.input_names()`` order, a dict of arrays by input name, an .npz
    path (keys: input names, or x and y), or an iterable of batches (tuples or dicts of arrays,
    used as they come: no shuffling or last-batch handling; iterated again each epoch)."""

    def __init__(self, model, *, checkpoint_dir=None, checkpoint_every: int | None = None,
                 keep_last: int | None = 3, seed: int = 0, batch_size: int = 32,
                 shuffle: bool = True, last_batch: str = "drop", scheduler=None,
                 callbacks: Iterable[Callback] = (), progress: bool | None = None,
                 quiet: bool = False, prefix: str = "", memory_budget_mb: float | None = None):
        if isinstance(model, (str, os.PathLike)):
            model = _load_artifacts(os.fspath(model), prefix, memory_budget_mb=memory_budget_mb)
        elif memory_budget_mb is not None:
            raise TypeError("memory_budget_mb is for an artifact directory; give a Module its "
                            "own: Module(..., memory_budget_mb=...)")
        if not (isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], Module)
                and isinstance(model[1], Optimizer) and model[1].module is model[0]):
            raise TypeError("Trainer takes an artifact directory or a (Module, Optimizer of "
                            "that Module) pair")
        self.module, self.optimizer = model
        if last_batch not in ("drop", "pad", "keep"):
            raise TrainerError(f"last_batch={last_batch!r}: use 'drop', 'pad' or 'keep'")
        for name, v, low in (("batch_size", batch_size, 1), ("seed", seed, 0), ("keep_last",
                             keep_last, 1), ("checkpoint_every", checkpoint_every, 1)):
            if v is not None and (not isinstance(v, (int, np.integer)) or v < low):
                raise TrainerError(f"{name} must be an integer >= {low}, got {v!r}")
        self.checkpoint_dir = os.fspath(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_every, self.keep_last = checkpoint_every, keep_last
        self.last_batch = last_batch
        self.seed, self.batch_size, self.shuffle = int(seed), int(batch_size), bool(shuffle)
        self.callbacks = [LRSchedule(scheduler)] if scheduler is not None else []
        self.callbacks += list(callbacks)
        for cb in self.callbacks:
            if isinstance(cb, LRSchedule):
                cb.bind(self.optimizer)
        if progress if progress is not None else sys.stderr.isatty():
            self.callbacks.append(ProgressBar())  # before Logger: the bar goes, then the line
        if not quiet and not any(isinstance(cb, Logger) for cb in self.callbacks):
            self.callbacks.append(Logger())
        r = self.module._roles
        self._names, self._label = list(r.inputs), (r.labels or [None])[0]
        self._declared = {v.name: v for v in self.module._train_graph.inputs}
        self._logits_at = next((i for i, o in enumerate(r.outputs) if i and o in r.model_outputs),
                               None)  # training accuracy when the model's output is returned
        self.epochs, self.epoch, self.batch, self.stop_training = 0, 0, 0, False
        self.history: dict[str, list] = {}
        self.resumed_from, self.batches_per_epoch = None, None
        self._sums, self._n = _zero_sums(), -1

    # --- data ------------------------------------------------------------------------------------
    def _feeds(self, batch, where: str) -> dict[str, np.ndarray]:
        names, listed = self._names, ", ".join(self._names)
        if isinstance(batch, Mapping):
            given = dict(batch)
        elif isinstance(batch, (tuple, list)):
            if len(batch) != len(names):
                raise InputError(f"{where}: {len(batch)} arrays given; the model takes "
                                 f"{len(names)}: {listed}")
            given = dict(zip(names, batch))
        else:
            raise InputError(f"{where}: a batch is a tuple of arrays ({listed}) or a dict by "
                             f"input name, not {type(batch).__name__}")
        for k in given:
            if k not in names:
                close = difflib.get_close_matches(str(k), names, n=1)
                raise InputError(f"{where}: unknown input {k!r}; the model's inputs are {listed}"
                                 + (f"; did you mean {close[0]!r}?" if close else ""))
        missing = [k for k in names if k not in given]
        if missing:
            raise InputError(f"{where}: missing input(s) {', '.join(map(repr, missing))}; the "
                             f"model's inputs are {listed}")
        feeds = {k: self._array(k, given[k], where) for k in names}
        if len({len(a) for a in feeds.values()}) > 1:
            raise InputError(f"{where}: inputs have different numbers of samples: "
                             + ", ".join(f"{k!r} {len(a)}" for k, a in feeds.items()))
        return feeds

    def _array(self, name: str, value, where: str) -> np.ndarray:
        a, v = np.asarray(value), self._declared[name]
        if v.dtype is not None and a.dtype != v.dtype:
            if _KIND.get(a.dtype.kind) != _KIND.get(np.dtype(v.dtype).kind):
                raise InputError(f"{where}: input {name!r} has dtype {a.dtype}, expected "
                                 f"{v.dtype} ({v.describe()})")
            a = a.astype(v.dtype)  # int32 labels, float64 features: same kind, converted
        if a.ndim == 0 or (v.shape is not None and (a.ndim != len(v.shape) or any(isinstance(
                d, int) and d > 0 and d != s for d, s in zip(v.shape[1:], a.shape[1:])))):
            raise InputError(f"{where}: input {name!r} has shape {list(a.shape)}, expected "
                             f"{v.describe()} (the first axis is the sample axis)")
        return a

    def _data(self, data, what: str):
        if isinstance(data, _Source):
            return data
        if isinstance(data, (str, os.PathLike)):
            path = os.fspath(data)
            try:
                with np.load(path) as z:
                    arrays = {k: z[k] for k in z.files}
            except (OSError, ValueError) as e:
                raise InputError(f"cannot read {what} {path!r} as an .npz file: {e}") from e
            if len(self._names) == 2 and not set(arrays) >= set(self._names) and "x" in arrays \
                    and "y" in arrays:
                arrays = {self._names[0]: arrays["x"], self._names[1]: arrays["y"]}
            return _Source(self._feeds(arrays, f"{what} {path!r}"))
        if isinstance(data, Mapping) or (isinstance(data, tuple) and data and all(
                isinstance(a, np.ndarray) for a in data)):
            return _Source(self._feeds(data, what))
        if isinstance(data, Iterable) and not isinstance(data, (bytes, np.ndarray)):
            return _Source(data=data)
        raise InputError(f"{what}: expected (x, y) arrays, a dict of arrays, an .npz path or an "
                         f"iterable of batches, not {type(data).__name__}")

    # --- steps and metrics -----------------------------------------------------------------------
    def _train_step(self, feeds: dict, real: int) -> dict:
        out = self.optimizer.train_step(**feeds)  # = module(...); step(); lazy_reset_grad()
        outs = out if isinstance(out, list) else [out]
        loss, s = float(outs[0]), self._sums
        s["loss"], s["n"] = s["loss"] + loss * real, s["n"] + real
        c = self._logits_at and correct(outs[self._logits_at], feeds.get(self._label), real)
        if c:
            s["correct"], s["count"] = s["correct"] + c[0], s["count"] + c[1]
        return {"loss": loss, "samples": real, "batch_size": len(feeds[self._names[0]]),
                "step": self.optimizer.step_count}

    def evaluate(self, data) -> dict:
        """Loss (mean over samples) and, for classification, accuracy, with training behaviour
        off (no dropout, BatchNorm on its running statistics). Changes nothing."""
        m = self.module
        if m._eval_session is None:
            raise TrainerError("evaluate needs the eval model: Module(train, state, eval_model)")
        src = self._data(data, "evaluation data")
        names, state = [m._eval_roles.outputs[0]] + m._roles.model_outputs[:1], m._state_feeds()
        total, n, right, counted = 0.0, 0, 0, 0
        for feeds, real in src.batches(self, 0, 0, False, "pad" if self.last_batch == "pad"
                                       else "keep"):
            outs = m._eval_session.run(names, {**feeds, **state})
            total, n = total + float(outs[0]) * real, n + real
            c = correct(outs[1] if len(outs) > 1 else None, feeds.get(self._label), real)
            if c:
                right, counted = right + c[0], counted + c[1]
        if n == 0:
            raise InputError("evaluation data has no samples")
        return {"loss": total / n, **({"accuracy": right / counted} if counted else {})}

    def _epoch_logs(self) -> dict:
        s = self._sums
        logs = {"loss": s["loss"] / max(1, s["n"])}
        if s["count"]:
            logs["accuracy"] = s["correct"] / s["count"]
        return {**logs, "lr": self.optimizer.get_learning_rate()}

    # --- fit -------------------------------------------------------------------------------------
    def fit(self, data, epochs: int = 1, resume: bool = False, validation_data=None) -> dict:
        """Train until ``epochs`` epochs in all are done (or a callback stops it). ``resume``:
        first restore the newest checkpoint of ``checkpoint_dir`` that loads (a damaged one is
        renamed ``*.corrupt``, with a warning; none: start from the beginning)."""
        src = self._data(data, "training data")
        val = None if validation_data is None else self._data(validation_data, "validation data")
        self.batches_per_epoch = src.num_batches(self)
        if self.batches_per_epoch == 0:
            raise InputError(f"training data: no batch to train on (fewer samples than "
                             f"batch_size={self.batch_size} with last_batch='drop'?)")
        if resume and self.checkpoint_dir is None:
            raise TrainerError("resume=True needs checkpoint_dir")
        self.epochs, self.epoch, self.batch, self.stop_training = int(epochs), 0, 0, False
        self.history, self._sums, self._n, self.resumed_from = {}, _zero_sums(), src.n, None
        if self.checkpoint_dir is not None:
            self._prepare_dir(resume)
        if (src.once or getattr(val, "once", False)) and self.epochs - self.epoch > 1:
            raise TrainerError("the data is an iterator that can be read once; for more than one "
                               "epoch pass a list, or an object whose __iter__ starts over")
        self.module.train()
        dirty = False
        for cb in self.callbacks:
            cb.on_train_begin(self)
        while self.epoch < self.epochs and not self.stop_training:
            for cb in self.callbacks:
                cb.on_epoch_begin(self, self.epoch)
            for feeds, real in src.batches(self, self.epoch, self.batch, self.shuffle,
                                           self.last_batch):
                logs = self._train_step(feeds, real)
                self.batch, dirty = self.batch + 1, True
                for cb in self.callbacks:
                    cb.on_batch_end(self, self.batch - 1, logs)
                if self.checkpoint_every and self.optimizer.step_count % self.checkpoint_every == 0:
                    dirty = self.save_checkpoint() is None
            logs = self._epoch_logs()
            if val is not None:
                logs.update({f"val_{k}": v for k, v in self.evaluate(val).items()})
            for k, v in logs.items():
                self.history.setdefault(k, []).append(v)
            for cb in self.callbacks:
                cb.on_epoch_end(self, self.epoch, logs)
            self.epoch, self.batch, self._sums, dirty = self.epoch + 1, 0, _zero_sums(), True
            if self.checkpoint_every is None:  # then a checkpoint each epoch
                dirty = self.save_checkpoint() is None
        if dirty:
            self.save_checkpoint()
        for cb in self.callbacks:
            cb.on_train_end(self, self.history)
        return self.history

    # --- checkpoints -----------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, str]]:
        """(optimizer step, path) of the checkpoints in checkpoint_dir, oldest first."""
        d = self.checkpoint_dir
        if d is None or not os.path.isdir(d):
            return []
        return sorted((int(m.group(1)), os.path.join(d, f)) for f in os.listdir(d)
                      if (m := CKPT.match(f)))

    def save_checkpoint(self) -> str | None:
        """Write ``ckpt-<step>`` atomically, then delete all but the newest ``keep_last``."""
        if self.checkpoint_dir is None:
            return None
        state, step = self.module._state, self.optimizer.step_count
        cbs = {k: cb.state_dict() for k, cb in _keyed(self.callbacks) if cb.state_dict()}
        state.properties.update({f"trainer.{k}": v for k, v in self._settings().items()})
        state.properties.update({
            "trainer.epoch": self.epoch, "trainer.batch": self.batch,
            "trainer.stopped": int(self.stop_training), "trainer.sums": json.dumps(self._sums),
            "trainer.history": json.dumps(self.history), "trainer.callbacks": json.dumps(cbs)})
        path = os.path.join(self.checkpoint_dir, f"ckpt-{step:08d}")
        state.save(path, include_optimizer_state=True)
        if self.keep_last is not None:  # only now that the new one is on disk
            older = [p for s, p in self.checkpoints() if s < step]
            for old in older[:max(0, len(older) - (self.keep_last - 1))]:
                _remove(old)
        return path

    def _settings(self) -> dict:  # what the data order depends on
        return {"seed": self.seed, "batch_size": self.batch_size, "shuffle": int(self.shuffle),
                "last_batch": self.last_batch, "samples": self._n}

    def _prepare_dir(self, resume: bool) -> None:
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        for f in os.listdir(self.checkpoint_dir):
            if f.startswith(".tmp-"):  # a write cut short by a crash
                _remove(os.path.join(self.checkpoint_dir, f))
        if not resume:
            newer = [p for s, p in self.checkpoints() if s > self.optimizer.step_count]
            if newer:
                raise TrainerError(f"{self.checkpoint_dir} holds checkpoints of a run further on "
                                   f"({os.path.basename(newer[-1])}): pass resume=True to continue "
                                   "it, or use another checkpoint_dir")
            return
        for _, path in reversed(self.checkpoints()):
            try:
                loaded = CheckpointState.load_checkpoint(path)
            except CheckpointError as e:
                warnings.warn(f"skipping checkpoint {path}: {e}; renamed to {path}.corrupt",
                              stacklevel=3)
                _remove(path, path + ".corrupt")
                continue
            self._restore(loaded, path)
            self.resumed_from = path
            return

    def _restore(self, loaded: CheckpointState, path: str) -> None:
        state, p, st = self.module._state, loaded.properties, self.optimizer._st
        kind = (loaded.optimizer or {}).get("type")
        for bad, why in (((loaded._shapes, loaded._dtypes, loaded._trainable, loaded.nominal) !=
                          (state._shapes, state._dtypes, state._trainable, False),
                          "belongs to another model (parameters, shapes or trainable flags)"),
                         (kind is None or "trainer.epoch" not in p, "was not written by a Trainer"),
                         (kind != st.get("type"), f"holds {kind} state, not {st.get('type')}")):
            if bad:
                raise CheckpointError(f"checkpoint {path!r} {why}")
        for k, v in self._settings().items():
            if p.get(f"trainer.{k}") != v:
                raise TrainerError(f"checkpoint {path!r} was made with "
                                   f"{k}={p.get(f'trainer.{k}')!r}; this run has {k}={v!r}: "
                                   "the batches would differ")
        for k in state._shapes:
            state._set(k, loaded._tensors[k])
        state.train_step = loaded.train_step
        state.properties.clear()
        dict.update(state.properties, p)
        st.clear()  # the Optimizer and its schedule hold this very dict
        st.update(loaded.optimizer)
        self.module.lazy_reset_grad()
        self.epoch, self.batch = p["trainer.epoch"], p["trainer.batch"]
        self.stop_training = bool(p["trainer.stopped"])
        self._sums, self.history = json.loads(p["trainer.sums"]), json.loads(p["trainer.history"])
        saved = json.loads(p["trainer.callbacks"])
        for k, cb in _keyed(self.callbacks):
            if k in saved:
                cb.load_state_dict(saved[k])


def _zero_sums() -> dict:
    return {"loss": 0.0, "n": 0, "correct": 0, "count": 0}


def _remove(path: str, to: str | None = None) -> None:
    try:
        os.replace(path, to) if to else os.remove(path)
    except OSError:
        pass


def _keyed(callbacks):
    """(ClassName#k, callback): the key its state is saved under."""
    seen: dict[str, int] = {}
    for cb in callbacks:
        seen[type(cb).__name__] = seen.get(type(cb).__name__, 0) + 1
        yield f"{type(cb).__name__}#{seen[type(cb).__name__]}", cb


def _load_artifacts(folder: str, prefix: str, **knobs) -> tuple[Module, Optimizer]:
    path = {n: os.path.join(folder, prefix + n) for n in ("training_model.onnx", "eval_model.onnx",
                                                         "optimizer_model.onnx", "checkpoint")}
    for name, p in path.items():
        if name != "eval_model.onnx" and not os.path.isfile(p):
            raise TrainerError(f"{p} is missing: make the artifacts with edgetrain.artifacts."
                               "generate_artifacts(..., optimizer=...)")
    evalm = path["eval_model.onnx"] if os.path.isfile(path["eval_model.onnx"]) else None
    module = Module(path["training_model.onnx"],
                    CheckpointState.load_checkpoint(path["checkpoint"]), evalm, **knobs)
    return module, Optimizer(path["optimizer_model.onnx"], module)
