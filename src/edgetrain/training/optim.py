"""Optimizers: their settings (what the optimizer description file holds), their update rules,
and the ``Optimizer`` that applies them to a Module's trainable parameters.

``AdamW`` is ONNX Runtime's ``OptimType.AdamW`` (the Hugging Face variant: ε added to √v, bias
correction folded into the step size, decay applied after the step; defaults β = (0.9, 0.999),
ε = 1e-6, no weight decay), so a model moved from ONNX Runtime trains to the same numbers.
``TorchAdamW`` is ``torch.optim.AdamW`` (decay first, ε after bias correction; weight decay 0.01).
``Adam`` and ``SGD`` (momentum, dampening, Nesterov, weight decay) follow ``torch.optim``.
Any of them can clip gradients by their global norm first (``max_grad_norm``, as
``torch.nn.utils.clip_grad_norm_``).
"""
from __future__ import annotations

import enum
import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import helper

from ..errors import EdgetrainError
from .fused import UpdateHook

META_KEY = "edgetrain.optimizer"


class OptimizerError(EdgetrainError):
    """Bad optimizer settings, description file or state."""


@dataclass
class SGD:
    lr: float = 1e-3
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    max_grad_norm: float | None = None


@dataclass
class Adam:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0  # L2: added to the gradient
    max_grad_norm: float | None = None


@dataclass
class AdamW:  # ONNX Runtime's (Hugging Face's) AdamW
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-6
    weight_decay: float = 0.0
    bias_correction: bool = True
    max_grad_norm: float | None = None


@dataclass
class TorchAdamW:  # torch.optim.AdamW
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    max_grad_norm: float | None = None


class OptimType(enum.Enum):
    """ONNX Runtime's names (SGD, AdamW) plus Adam and PyTorch's AdamW, at default settings."""
    SGD = "SGD"
    Adam = "Adam"
    AdamW = "AdamW"
    TorchAdamW = "TorchAdamW"


CONFIGS = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW, "TorchAdamW": TorchAdamW}


def as_config(optimizer) -> object:
    if isinstance(optimizer, OptimType):
        return CONFIGS[optimizer.value]()
    if isinstance(optimizer, str) and optimizer in CONFIGS:
        return CONFIGS[optimizer]()
    if type(optimizer) in CONFIGS.values():
        return optimizer
    raise OptimizerError(f"unknown optimizer {optimizer!r}; use OptimType.SGD, OptimType.Adam, "
                         "OptimType.AdamW, OptimType.TorchAdamW or a settings object such as "
                         "SGD(momentum=0.9)")


# --- description file: a small ONNX model whose metadata holds the settings -------------------

def write_description(config, path: str | os.PathLike) -> None:
    lr_in = helper.make_tensor_value_info("learning_rate", onnx.TensorProto.FLOAT, [])
    lr_out = helper.make_tensor_value_info("learning_rate_out", onnx.TensorProto.FLOAT, [])
    g = helper.make_graph([helper.make_node("Identity", ["learning_rate"], ["learning_rate_out"])],
                          "optimizer", [lr_in], [lr_out])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgetrain")
    m.ir_version = 7
    cfg = {"type": type(config).__name__, **asdict(config)}
    helper.set_model_props(m, {META_KEY: json.dumps(cfg)})
    onnx.save(m, os.fspath(path))


def read_description(path: str | os.PathLike) -> object:
    try:
        m = onnx.load(os.fspath(path))
        props = {p.key: p.value for p in m.metadata_props}
        cfg = json.loads(props[META_KEY])
        cls = CONFIGS[cfg.pop("type")]
        if "betas" in cfg:
            cfg["betas"] = tuple(cfg["betas"])
        return cls(**cfg)
    except OSError as e:
        raise OptimizerError(f"cannot read optimizer description {os.fspath(path)!r}: {e}") from e
    except Exception as e:
        raise OptimizerError(f"{os.fspath(path)!r} is not an edgetrain optimizer description: "
                             f"{e!r}") from e


# --- update rules (in place); state: this parameter's moments --------------------------------

def _sgd(cfg: SGD, p, g, st, lr, t):
    if cfg.weight_decay:
        g = g + p.dtype.type(cfg.weight_decay) * p
    if cfg.momentum:
        buf = st.get("momentum_buffer")
        if buf is None:
            buf = st["momentum_buffer"] = np.array(g, dtype=p.dtype)
        else:
            buf *= p.dtype.type(cfg.momentum)
            buf += p.dtype.type(1.0 - cfg.dampening) * g
        g = g + p.dtype.type(cfg.momentum) * buf if cfg.nesterov else buf
    p -= p.dtype.type(lr) * g


def _moment(st, key: str, p) -> np.ndarray:
    a = st.get(key)
    if a is None:
        a = st[key] = np.zeros_like(p)
    return a


def _moments(p, g, st, betas):
    """The moments updated in place, and one scratch array of p's shape (the update's only
    temporary; same arithmetic, in the same order, as the textbook expressions)."""
    b1, b2 = (p.dtype.type(b) for b in betas)
    m, v = _moment(st, "exp_avg", p), _moment(st, "exp_avg_sq", p)
    tmp = np.multiply(g, 1 - b1)
    m *= b1
    m += tmp
    np.multiply(g, g, out=tmp)
    tmp *= 1 - b2
    v *= b2
    v += tmp
    return m, v, tmp


def _adam(cfg, p, g, st, lr, t, decoupled: bool):
    if cfg.weight_decay:
        if decoupled:
            p *= p.dtype.type(1.0 - lr * cfg.weight_decay)
        else:
            g = g + p.dtype.type(cfg.weight_decay) * p
    m, v, tmp = _moments(p, g, st, cfg.betas)
    bc1, bc2 = 1.0 - cfg.betas[0] ** t, 1.0 - cfg.betas[1] ** t
    np.sqrt(v, out=tmp)  # denom = sqrt(v) / sqrt(bc2) + eps
    tmp /= p.dtype.type(math.sqrt(bc2))
    tmp += p.dtype.type(cfg.eps)
    np.divide(m, tmp, out=tmp)
    tmp *= p.dtype.type(lr / bc1)
    p -= tmp


def _hf_adamw(cfg: AdamW, p, g, st, lr, t):
    m, v, tmp = _moments(p, g, st, cfg.betas)
    step = lr
    if cfg.bias_correction:
        step = lr * math.sqrt(1.0 - cfg.betas[1] ** t) / (1.0 - cfg.betas[0] ** t)
    np.sqrt(v, out=tmp)  # step * (m / (sqrt(v) + eps))
    tmp += p.dtype.type(cfg.eps)
    np.divide(m, tmp, out=tmp)
    tmp *= p.dtype.type(step)
    p -= tmp
    if cfg.weight_decay:
        p -= p.dtype.type(lr * cfg.weight_decay) * p


UPDATES: dict[type, Callable] = {
    SGD: _sgd,
    Adam: lambda cfg, p, g, st, lr, t: _adam(cfg, p, g, st, lr, t, decoupled=False),
    TorchAdamW: lambda cfg, p, g, st, lr, t: _adam(cfg, p, g, st, lr, t, decoupled=True),
    AdamW: _hf_adamw,
}


def global_norm(grads) -> float:
    return math.sqrt(sum(float(np.vdot(g, g)) for g in grads))


class Optimizer:
    """Updates the trainable parameters of a Module from their accumulated gradients
    (ONNX Runtime's ``Optimizer(optimizer_uri, module)``). A settings object or OptimType may be
    given instead of a description file."""

    def __init__(self, optimizer_uri, module):
        if isinstance(optimizer_uri, (str, os.PathLike)):
            self.config = read_description(optimizer_uri)
        else:
            self.config = as_config(optimizer_uri)
        self.module = module
        state = module._state
        kind = type(self.config).__name__
        if state.optimizer is None:
            state.optimizer = {"type": kind, "step": 0, "lr": float(self.config.lr), "moments": {}}
        elif state.optimizer.get("type") != kind:
            raise OptimizerError(f"the checkpoint holds {state.optimizer.get('type')} optimizer "
                                 f"state; this optimizer is {kind}")
        self._st = state.optimizer
        self._st.setdefault("moments", {})
        self._update = UPDATES[type(self.config)]
        self._hook = UpdateHook()  # what the fused step's ApplyUpdate nodes call
        # the state it will keep, for a memory budget planned before the first step
        slots = {"AdamW": 2, "Adam": 2, "TorchAdamW": 2}.get(kind, int(bool(
            getattr(self.config, "momentum", 0))))
        module._micro.state_bytes = slots * sum(
            np.asarray(state._tensors[k]).nbytes for k in module._roles.trainable)

    @property
    def step_count(self) -> int:
        return int(self._st["step"])

    def get_learning_rate(self) -> float:
        return float(self._st["lr"])

    def set_learning_rate(self, learning_rate: float) -> None:
        lr = float(learning_rate)
        if not math.isfinite(lr) or lr < 0:
            raise OptimizerError(f"learning rate must be a finite number >= 0, got {learning_rate!r}")
        self._st["lr"] = lr

    def step(self) -> None:
        """One update of every trainable parameter from its gradient."""
        state = self.module._state
        names = [k for k in state.parameters if state.parameters[k].requires_grad]
        missing = [k for k in names if state._grads.get(k) is None]
        if missing:
            raise OptimizerError(f"no gradient for {', '.join(missing[:3])}"
                                 f"{' ...' if len(missing) > 3 else ''}: run a training step "
                                 "(module(...) in train mode) before optimizer.step()")
        grads = [state._grads[k] for k in names]
        clip = getattr(self.config, "max_grad_norm", None)
        if clip is not None:
            norm = global_norm(grads)
            if norm > clip:
                coef = clip / (norm + 1e-6)
                grads = [g * g.dtype.type(coef) for g in grads]
        apply = self._applier()
        for k, g in zip(names, grads):
            apply(k, g)
        self._st["step"] += 1

    def _applier(self):
        """``apply(name, grad)``: this step's update of one parameter (and its moments)."""
        state, moments = self.module._state, self._st["moments"]
        t, lr = self.step_count + 1, self.get_learning_rate()

        def apply(k: str, g: np.ndarray) -> None:
            per = {m: d[k] for m, d in moments.items() if k in d}
            self._update(self.config, state._tensors[k], g, per, lr, t)
            for m, a in per.items():
                moments.setdefault(m, {})[k] = a
        return apply

    def train_step(self, *inputs, **named):
        """One training step and update: ``loss = module(*inputs); optimizer.step();
        module.lazy_reset_grad()``, to the same bits, with less memory: each parameter is
        updated as soon as its gradient is final and nothing else reads it, so a gradient lives
        briefly and none is kept for the optimizer. Returns what ``module(...)`` returns.

        Falls back to the three calls when the update needs every gradient first
        (``max_grad_norm``) or when gradients are accumulating (``module(...)`` ran since the
        last reset). Bad inputs are refused before anything runs; but should a kernel fail
        midway (a bug, out of memory), parameters updated before it stay updated: reload the
        last checkpoint."""
        m = self.module
        if not m.training:
            raise OptimizerError("train_step needs the module in training mode (module.train())")
        if getattr(self.config, "max_grad_norm", None) is not None or (
                m._state._grads and not m._reset_pending):
            out = m(*inputs, **named)
            self.step()
            m.lazy_reset_grad()
            return out
        feeds = m._feeds(inputs, named)
        feeds.update(m._state_feeds())
        self._hook.fn = self._applier()
        try:
            out = m._train_step(feeds, self._hook)
        finally:
            self._hook.fn = None
        self._st["step"] += 1
        return out
