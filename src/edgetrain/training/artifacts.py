"""generate_artifacts: from an inference ONNX model to the files on-device training needs
(ONNX Runtime's ``onnxruntime.training.artifacts.generate_artifacts``, same names).

Writes into ``artifact_directory`` (created if absent), each name prefixed with ``prefix``:
``training_model.onnx`` (forward, loss and backward; parameters are inputs), ``eval_model.onnx``
(forward and loss, training behaviour off), ``optimizer_model.onnx`` (the optimizer's settings)
when an optimizer is given, ``checkpoint`` (every parameter and buffer), and with
``nominal_checkpoint=True`` also ``nominal_checkpoint`` (names and shapes only, for apps that ship
the weights separately).
"""
from __future__ import annotations

import enum
import os
from typing import Sequence

from ..graph.ir import Graph
from ..graph.load import ModelLike, load_graph
from . import losses as L
from .checkpoint import CheckpointState, atomic_write
from .graphs import ArtifactError, build_graphs
from .optim import as_config, write_description


class LossType(enum.Enum):
    """ONNX Runtime's names (MSELoss, CrossEntropyLoss, BCEWithLogitsLoss, L1Loss) and the rest,
    at default settings; pass a loss object (e.g. ``CrossEntropyLoss(label_smoothing=0.1)``) for
    options."""
    MSELoss = "MSELoss"
    CrossEntropyLoss = "CrossEntropyLoss"
    BCEWithLogitsLoss = "BCEWithLogitsLoss"
    L1Loss = "L1Loss"
    SmoothL1Loss = "SmoothL1Loss"
    HuberLoss = "HuberLoss"
    KLDivLoss = "KLDivLoss"
    NLLLoss = "NLLLoss"


def as_loss(loss) -> L.Loss | L.CustomLoss | None:
    if loss is None or isinstance(loss, (L.Loss, L.CustomLoss)):
        return loss
    if isinstance(loss, LossType):
        return getattr(L, loss.value)()
    if isinstance(loss, (str, os.PathLike, bytes, Graph)) or hasattr(loss, "graph"):
        return L.CustomLoss(loss)
    raise ArtifactError(f"unknown loss {loss!r}: use a LossType, a loss object from "
                        "edgetrain.artifacts, or an ONNX model computing the loss")


def generate_artifacts(model: ModelLike, requires_grad: Sequence[str] | None = None,
                       frozen_params: Sequence[str] | None = None, loss=None, optimizer=None,
                       artifact_directory: str | os.PathLike | None = None, prefix: str = "",
                       ort_format: bool = False, custom_op_library=None,
                       additional_output_names: Sequence[str] | None = None,
                       nominal_checkpoint: bool = False,
                       loss_input_names: Sequence[str] | None = None, *,
                       batchnorm: str = "auto", dropout: bool = True, seed: int = 0,
                       untie_aliases: bool = True) -> dict[str, str]:
    """Build and write the training artifacts; returns {artifact kind: path}.

    ``requires_grad``: the parameters to train (default: all but ``frozen_params``).
    ``loss``: a :class:`LossType`, a loss object, an ONNX model over the outputs (custom loss), or
    None when the model's first output already is the loss. ``loss_input_names``: the model
    outputs the loss reads (default: the first). ``batchnorm``: "auto" (follow the export),
    "train" or "frozen"; ``dropout``: Dropout active in training; ``seed``: its generator's seed.
    """
    if ort_format:
        raise ArtifactError("ort_format=True: edgetrain writes ONNX artifacts only")
    if custom_op_library is not None:
        raise ArtifactError("custom_op_library: edgetrain has no custom-op libraries; every op "
                            "must be one edgetrain supports")
    loss = as_loss(loss)
    config = as_config(optimizer) if optimizer is not None else None
    graph = load_graph(model) if not isinstance(model, Graph) else model
    if loss is None:
        loss = L.CustomLoss(_identity_loss(graph))
    train, evalg, roles, state = build_graphs(
        graph, requires_grad=requires_grad, frozen_params=frozen_params or (), loss=loss,
        loss_input_names=loss_input_names, additional_output_names=additional_output_names or (),
        batchnorm=batchnorm, dropout=dropout, seed=seed, untie=untie_aliases)
    folder = os.fspath(artifact_directory or os.getcwd())
    os.makedirs(folder, exist_ok=True)
    paths = {k: os.path.join(folder, prefix + f) for k, f in (
        ("training_model", "training_model.onnx"), ("eval_model", "eval_model.onnx"),
        ("optimizer_model", "optimizer_model.onnx"), ("checkpoint", "checkpoint"),
        ("nominal_checkpoint", "nominal_checkpoint"))}
    atomic_write(paths["training_model"], train.to_onnx().SerializeToString())
    atomic_write(paths["eval_model"], evalg.to_onnx().SerializeToString())
    if config is not None:
        write_description(config, paths["optimizer_model"])
    else:
        del paths["optimizer_model"]
    CheckpointState.from_arrays(state, roles.trainable, roles.buffers).save(paths["checkpoint"])
    if nominal_checkpoint:
        CheckpointState.from_arrays(state, roles.trainable, roles.buffers, nominal=True).save(
            paths["nominal_checkpoint"])
    else:
        del paths["nominal_checkpoint"]
    return paths


def _identity_loss(graph: Graph) -> Graph:
    """loss=None: the model's first output is the loss already."""
    from ..graph.ir import Node, Value
    out = graph.outputs[0]
    return Graph([Node("Identity", [out.name], ["loss"], {}, "loss")], [Value(out.name, out.dtype,
                 out.shape)], [Value("loss", out.dtype, out.shape)], {}, dict(graph.opsets))
