"""Losses, built as ordinary graph nodes over a model output (their gradients come from the ops').

Each loss appends nodes to the training graph through a :class:`NodeBuilder` and declares the
label input(s) it adds. Class scores are on the **last** axis: logits ``[N, C]`` or sequence
logits ``[N, T, C]`` (what a language model exports) take labels ``[N]`` / ``[N, T]`` as they are,
with no reshape by the user. (PyTorch puts classes on axis 1; ONNX exports of sequence models put
them last.) Semantics, reductions and defaults follow PyTorch's functional losses.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from onnx import helper

from ..errors import EdgetrainError
from ..graph.build import NodeBuilder
from ..graph.ir import Value

REDUCTIONS = ("mean", "sum", "none")


def _onnx_type(dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class LossError(EdgetrainError):
    """A loss that cannot be attached: bad option, wrong output, clashing names."""


@dataclass
class Loss:
    """Base: one model output in, a scalar (or per-element, reduction="none") loss out."""

    reduction: str = "mean"
    label_name: str = "target"

    def __post_init__(self):
        if self.reduction not in self.reductions():
            raise LossError(f"{type(self).__name__}: reduction {self.reduction!r} is not one of "
                            f"{', '.join(self.reductions())}")

    def reductions(self) -> tuple[str, ...]:
        return REDUCTIONS

    def label_value(self, output: Value) -> Value:
        """The label input's declaration: by default, like the output."""
        return Value(self.label_name, output.dtype, output.shape)

    def build(self, b: NodeBuilder, output: str, label: str, dtype: np.dtype) -> str:
        raise NotImplementedError

    def batch_split(self) -> dict | None:
        """How the loss of a batch combines the losses of its parts (micro-batches): "sum" adds
        them; "count" weighs each by its share of the samples; None: it does not split (no
        scalar). Read by :mod:`edgetrain.training.microbatch`."""
        if self.reduction == "sum":
            return {"kind": "sum"}
        return {"kind": "count"} if self.reduction in ("mean", "batchmean") else None

    # helpers for subclasses ------------------------------------------------------------------
    @staticmethod
    def scalar(b: NodeBuilder, value: float, dtype: np.dtype) -> str:
        return b.const(np.asarray(value, dtype=dtype), "loss/c")

    def reduce(self, b: NodeBuilder, per_elem: str) -> str:
        if self.reduction == "none":
            return per_elem
        op = "ReduceMean" if self.reduction == "mean" else "ReduceSum"
        return b.op(op, [per_elem], keepdims=0)


class MSELoss(Loss):
    def build(self, b, output, label, dtype):
        d = b.op("Sub", [output, label])
        return self.reduce(b, b.op("Mul", [d, d]))


class L1Loss(Loss):
    def build(self, b, output, label, dtype):
        return self.reduce(b, b.op("Abs", [b.op("Sub", [output, label])]))


@dataclass
class SmoothL1Loss(Loss):
    """0.5 d²/beta where |d| < beta, else |d| - 0.5 beta (beta = 0 is the L1 loss)."""

    beta: float = 1.0

    def build(self, b, output, label, dtype):
        if self.beta < 0:
            raise LossError(f"SmoothL1Loss: beta must be >= 0, got {self.beta}")
        d = b.op("Abs", [b.op("Sub", [output, label])])
        if self.beta == 0:
            return self.reduce(b, d)
        quad = b.op("Mul", [b.op("Mul", [d, d]), self.scalar(b, 0.5 / self.beta, dtype)])
        lin = b.op("Sub", [d, self.scalar(b, 0.5 * self.beta, dtype)])
        small = b.op("Less", [d, self.scalar(b, self.beta, dtype)])
        return self.reduce(b, b.op("Where", [small, quad, lin]))


@dataclass
class HuberLoss(Loss):
    """0.5 d² where |d| < delta, else delta (|d| - 0.5 delta)."""

    delta: float = 1.0

    def build(self, b, output, label, dtype):
        if self.delta <= 0:
            raise LossError(f"HuberLoss: delta must be > 0, got {self.delta}")
        d = b.op("Abs", [b.op("Sub", [output, label])])
        quad = b.op("Mul", [b.op("Mul", [d, d]), self.scalar(b, 0.5, dtype)])
        lin = b.op("Mul", [b.op("Sub", [d, self.scalar(b, 0.5 * self.delta, dtype)]),
                           self.scalar(b, self.delta, dtype)])
        small = b.op("Less", [d, self.scalar(b, self.delta, dtype)])
        return self.reduce(b, b.op("Where", [small, quad, lin]))


@dataclass
class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits x with targets t in [0, 1]:
    (1 - t) x + (1 + (pos_weight - 1) t) softplus(-x), times ``weight`` (both broadcast)."""

    weight: Sequence[float] | np.ndarray | None = None
    pos_weight: Sequence[float] | np.ndarray | None = None

    def build(self, b, output, label, dtype):
        one = self.scalar(b, 1.0, dtype)
        sp = b.op("Softplus", [b.op("Neg", [output])])
        if self.pos_weight is not None:
            pw = b.const(np.asarray(self.pos_weight, dtype=dtype), "loss/pos_weight")
            lw = b.op("Add", [one, b.op("Mul", [b.op("Sub", [pw, one]), label])])
            sp = b.op("Mul", [lw, sp])
        per = b.op("Add", [b.op("Mul", [b.op("Sub", [one, label]), output]), sp])
        if self.weight is not None:
            per = b.op("Mul", [per, b.const(np.asarray(self.weight, dtype=dtype), "loss/weight")])
        return self.reduce(b, per)


@dataclass
class KLDivLoss(Loss):
    """KL(target ‖ input) with ``input`` given as log-probabilities (PyTorch's ``kl_div``):
    t (log t - x), or exp(t) (t - x) with ``log_target``. "batchmean" divides the sum by N."""

    log_target: bool = False

    def reductions(self):
        return REDUCTIONS + ("batchmean",)

    def build(self, b, output, label, dtype):
        if self.log_target:
            per = b.op("Mul", [b.op("Exp", [label]), b.op("Sub", [label, output])])
        else:
            zero = self.scalar(b, 0.0, dtype)
            tlogt = b.op("Where", [b.op("Greater", [label, zero]),
                                  b.op("Mul", [label, b.op("Log", [label])]), zero])
            per = b.op("Sub", [tlogt, b.op("Mul", [label, output])])
        if self.reduction != "batchmean":
            return self.reduce(b, per)
        total = b.op("ReduceSum", [per], keepdims=0)
        batch = b.op("Gather", [b.op("Shape", [output]), b.const(np.asarray(0, np.int64),
                                                                "loss/zero")])
        return b.op("Div", [total, b.op("Cast", [batch], to=_onnx_type(dtype))])


@dataclass
class NLLLoss(Loss):
    """Negative log-likelihood of log-probabilities ``[..., C]`` (classes last) at int64 labels
    ``[...]``; ``weight`` per class, labels equal to ``ignore_index`` count for nothing; "mean"
    divides by the summed weights of the counted labels (as PyTorch does)."""

    weight: Sequence[float] | np.ndarray | None = None
    ignore_index: int = -100
    label_name: str = "labels"

    def label_value(self, output: Value) -> Value:
        shape = None if output.shape is None else tuple(output.shape[:-1])
        return Value(self.label_name, np.dtype(np.int64), shape)

    def log_probs(self, b, output):
        return output

    def build(self, b, output, label, dtype):
        logp = self.log_probs(b, output)
        ignore = b.const(np.asarray(self.ignore_index, np.int64), "loss/ignore_index")
        valid = b.op("Not", [b.op("Equal", [label, ignore])])
        safe = b.op("Where", [valid, label, b.const(np.asarray(0, np.int64), "loss/zero")])
        last = b.const(np.asarray([-1], np.int64), "loss/last_axis")
        picked = b.op("Squeeze", [b.op("GatherElements", [logp, b.op("Unsqueeze", [safe, last])],
                                       axis=-1), last])
        zero = self.scalar(b, 0.0, dtype)
        if self.weight is not None:
            weight = b.const(np.asarray(self.weight, dtype=dtype), "loss/class_weight")
            w = b.op("Where", [valid, b.op("Gather", [weight, safe]), zero])
        else:
            weight = None
            w = b.op("Cast", [valid], to=_onnx_type(dtype))
        per = b.op("Neg", [b.op("Mul", [picked, w])])
        per = self.add_smoothing(b, per, logp, valid, weight, dtype)
        if self.reduction == "none":
            return per
        total = b.op("ReduceSum", [per], keepdims=0)
        if self.reduction == "sum":
            return total
        return b.op("Div", [total, b.op("ReduceSum", [w], keepdims=0)])

    def add_smoothing(self, b, per, logp, valid, weight, dtype):
        return per

    def batch_split(self) -> dict | None:
        if self.reduction != "mean":
            return super().batch_split()
        # "mean" divides by the summed weights of the counted labels: a part weighs its own sum
        weight = None if self.weight is None else [float(w) for w in np.ravel(self.weight)]
        return {"kind": "label_weight", "ignore_index": int(self.ignore_index), "weight": weight}


@dataclass
class CrossEntropyLoss(NLLLoss):
    """Softmax cross-entropy on logits ``[..., C]`` (classes last) with int64 labels ``[...]``:
    class ``weight``, ``ignore_index``, ``label_smoothing`` ε (the target mixes 1 - ε of the label
    with ε spread uniformly over the C classes), reductions as PyTorch's ``cross_entropy``."""

    label_smoothing: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= self.label_smoothing <= 1.0:
            raise LossError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got "
                            f"{self.label_smoothing}")

    def log_probs(self, b, output):
        return b.op("LogSoftmax", [output], axis=-1)

    def add_smoothing(self, b, per, logp, valid, weight, dtype):
        eps = float(self.label_smoothing)
        if eps == 0.0:
            return per
        wl = logp if weight is None else b.op("Mul", [logp, weight])
        uniform = b.op("Neg", [b.op("ReduceSum", [wl, b.const(np.asarray([-1], np.int64),
                                                              "loss/last_axis")], keepdims=0)])
        n_classes = b.op("Cast", [b.op("Gather", [b.op("Shape", [logp]), b.const(
            np.asarray(-1, np.int64), "loss/class_axis")])], to=_onnx_type(dtype))
        uniform = b.op("Where", [valid, b.op("Div", [uniform, n_classes]),
                                 self.scalar(b, 0.0, dtype)])
        return b.op("Add", [b.op("Mul", [per, self.scalar(b, 1.0 - eps, dtype)]),
                            b.op("Mul", [uniform, self.scalar(b, eps, dtype)])])


@dataclass
class CustomLoss:
    """A loss given as an ONNX model (path, bytes, ModelProto or Graph). Its inputs named like a
    model output are wired to that output; its other inputs become label inputs of the training
    model; its first output is the loss."""

    model: object
    inputs: dict[str, str] = field(default_factory=dict)  # loss input -> model output (renames)
