"""Trainer callbacks: early stopping, a learning-rate schedule stepped each step, a line per epoch
and a progress bar (tqdm when it is installed, ``pip install edgetrain[progress]``, else a small
built-in one).

A callback overrides any of ``on_train_begin(trainer)``, ``on_epoch_begin(trainer, epoch)``,
``on_batch_end(trainer, batch, logs)`` (after the optimizer step; ``logs``: loss, samples,
batch_size, step), ``on_epoch_end(trainer, epoch, logs)`` (the epoch's metrics; set
``trainer.stop_training = True`` to stop) and ``on_train_end(trainer, history)``. A callback with
state that must survive a crash returns it from ``state_dict()`` (ints, floats, strs) and takes
it back in ``load_state_dict(d)``: it is saved in every checkpoint.
"""
from __future__ import annotations

import math
import sys
import time
import warnings

from .lr_scheduler import LRScheduler


class Callback:
    def on_train_begin(self, trainer) -> None: ...
    def on_epoch_begin(self, trainer, epoch: int) -> None: ...
    def on_batch_end(self, trainer, batch: int, logs: dict) -> None: ...
    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None: ...
    def on_train_end(self, trainer, history: dict) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.
    ``mode``: "min", "max" or "auto" (max for accuracies, min otherwise)."""

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0,
                 mode: str = "auto"):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping mode {mode!r}: use 'auto', 'min' or 'max'")
        if patience < 0:
            raise ValueError(f"EarlyStopping patience must be >= 0, got {patience}")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), abs(float(min_delta))
        self.maximize = mode == "max" or (mode == "auto" and "acc" in monitor)
        self.best = -math.inf if self.maximize else math.inf
        self.wait, self.stopped_epoch, self._warned = 0, -1, False

    def on_train_begin(self, trainer) -> None:
        if trainer.resumed_from is None:  # a new run starts from scratch
            self.best = -math.inf if self.maximize else math.inf
            self.wait, self.stopped_epoch = 0, -1

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        value = logs.get(self.monitor)
        if value is None:
            if not self._warned:
                warnings.warn(f"EarlyStopping monitors {self.monitor!r}, which the epoch does not "
                              f"report (it has {', '.join(sorted(logs))}); pass validation_data "
                              "for val_ metrics", stacklevel=2)
                self._warned = True
            return
        better = (value > self.best + self.min_delta if self.maximize
                  else value < self.best - self.min_delta)
        if better:
            self.best, self.wait = float(value), 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            trainer.stop_training = True

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best = float(state["best"])
        self.wait, self.stopped_epoch = int(state["wait"]), int(state["stopped_epoch"])


class LRSchedule(Callback):
    """Steps a learning-rate schedule after every optimizer step. ``schedule``: an LRScheduler, or
    a function of the optimizer returning one (for a Trainer that builds its own optimizer)."""

    def __init__(self, schedule):
        if not isinstance(schedule, LRScheduler) and not callable(schedule):
            raise TypeError(f"LRSchedule needs an LRScheduler or a function of the optimizer "
                            f"returning one, not {type(schedule).__name__}")
        self.schedule = schedule

    def bind(self, optimizer) -> LRScheduler:
        if not isinstance(self.schedule, LRScheduler):
            self.schedule = self.schedule(optimizer)
            if not isinstance(self.schedule, LRScheduler):
                raise TypeError(f"the schedule function returned {type(self.schedule).__name__}, "
                                "not an LRScheduler")
        if self.schedule.optimizer is not optimizer:
            raise ValueError("the schedule was built for another optimizer than the Trainer's")
        return self.schedule

    def on_batch_end(self, trainer, batch: int, logs: dict) -> None:
        self.schedule.scheduler_step()


def format_logs(logs: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in logs.items())


class Logger(Callback):
    """Prints one line per epoch: its metrics and how long it took (``quiet=True``: nothing)."""

    def __init__(self, quiet: bool = False, stream=None):
        self.quiet, self.stream = quiet, stream
        self._t0 = 0.0

    def on_train_begin(self, trainer) -> None:
        if trainer.resumed_from and not self.quiet:
            print(f"resumed from {trainer.resumed_from} (epoch {trainer.epoch + 1}, batch "
                  f"{trainer.batch}, step {trainer.optimizer.step_count})",
                  file=self.stream or sys.stdout, flush=True)

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        if not self.quiet:
            print(f"epoch {epoch + 1}/{trainer.epochs}: {format_logs(logs)} "
                  f"({time.perf_counter() - self._t0:.2f} s)", file=self.stream or sys.stdout,
                  flush=True)


class _LineBar:
    """The built-in progress bar: one line on stderr, redrawn at most 10 times a second."""

    def __init__(self, total, desc):
        self.total, self.desc, self.n, self._shown, self._post = total, desc, 0, 0.0, ""

    def update(self, k=1):
        self.n += k
        now = time.perf_counter()
        if now - self._shown >= 0.1 or self.n == self.total:
            self._shown = now
            of = f"/{self.total}" if self.total else ""
            sys.stderr.write(f"\r{self.desc} {self.n}{of} {self._post}\x1b[K")
            sys.stderr.flush()

    def set_postfix_str(self, s):
        self._post = s

    def close(self):
        sys.stderr.write("\r\x1b[K")  # the epoch's line (Logger) takes its place
        sys.stderr.flush()


class ProgressBar(Callback):
    """A progress bar per epoch on stderr: tqdm's when installed, else a one-line one."""

    def __init__(self):
        self._bar = None

    def on_epoch_begin(self, trainer, epoch: int) -> None:
        desc = f"epoch {epoch + 1}/{trainer.epochs}"
        total = trainer.batches_per_epoch
        try:
            from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, initial=trainer.batch, leave=False)
        except ImportError:
            self._bar = _LineBar(total, desc)
            self._bar.n = trainer.batch

    def on_batch_end(self, trainer, batch: int, logs: dict) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {logs['loss']:.4g}")
            self._bar.update(1)

    def on_epoch_end(self, trainer, epoch: int, logs: dict) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def on_train_end(self, trainer, history: dict) -> None:
        self.on_epoch_end(trainer, trainer.epoch, {})
