"""From an inference export to the training and eval graphs (what the artifacts hold).

* **Untie aliases**: torch's exporter stores parameters with identical initial values once and
  reads them through ``Identity`` nodes; each such alias becomes its own parameter again, named as
  torch names it, so that training does not tie what the model never tied.
* **State**: parameters are the float initializers of rank >= 1 the model uses, except those
  holding infinities (attention masks: constants); BatchNormalization running means and
  variances are *buffers* (state, never trainable). In the training and eval
  graphs every state tensor is a graph input fed from the checkpoint, so the model files hold no
  weights (as ONNX Runtime's artifacts).
* **Modes**: BatchNormalization trains with batch statistics and updates its running statistics, or
  stays frozen on them: ``batchnorm="auto"`` (the default) follows the export — a node exported in
  training mode trains, one exported for inference stays frozen (PyTorch's eval-mode computation,
  the usual choice for fine-tuning with small batches; ONNX Runtime 1.19.2 instead normalizes every
  BatchNorm with batch statistics); ``"train"``/``"frozen"`` force one mode.
  Dropout (when the export kept its nodes) is active in training with a seeded generator that
  depends only on the seed and the training step, so a resumed run draws the same masks.
  The eval graph has both off.
* **Loss** nodes over a model output, then the backward (``autodiff``) for the trainable
  parameters only.
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from onnx import version_converter

from ..autodiff import build_backward
from ..errors import EdgetrainError
from ..graph.build import NodeBuilder
from ..graph.ir import Graph, Node, Value
from ..graph.load import ModelLike, load_graph
from ..ops.registry import ET_DOMAIN
from .losses import CustomLoss, Loss, LossError

RNG_STEP = "edgetrain::rng_step"  # int64 scalar input of a training graph with Dropout
META_KEY = "edgetrain.training"   # metadata_props key holding the roles of inputs and outputs


class ArtifactError(EdgetrainError):
    """Bad arguments for building the training artifacts (names, loss, modes)."""


def untie_aliases(graph: Graph) -> Graph:
    """Replace ``y = Identity(initializer)`` by an initializer ``y`` of its own (a copy)."""
    inits = dict(graph.initializers)
    outputs = {v.name for v in graph.outputs}
    nodes = []
    for n in graph.nodes:
        src = n.inputs[0] if n.inputs else ""
        if (n.op_type == "Identity" and n.domain in ("", "ai.onnx") and src in graph.initializers
                and n.outputs[0] not in outputs and src not in graph.overridable):
            inits[n.outputs[0]] = graph.initializers[src].copy()
        else:
            nodes.append(n)
    used = {x for n in nodes for x in n.inputs} | outputs
    inits = {k: v for k, v in inits.items() if k in used}
    return Graph(nodes, list(graph.inputs), list(graph.outputs), inits, dict(graph.opsets),
                 graph.name, graph.overridable & set(inits), dict(graph.doc))


def split_state(graph: Graph) -> tuple[list[str], list[str]]:
    """(parameters, buffers) of a graph, in initializer order."""
    buffers = {x for n in graph.nodes if n.op_type == "BatchNormalization"
               for x in n.inputs[3:5] if x in graph.initializers}
    used = {x for n in graph.nodes for x in n.inputs}
    params = [k for k, a in graph.initializers.items()
              if a.dtype.kind == "f" and a.ndim >= 1 and k in used and k not in buffers
              and np.isfinite(a).all()]
    return params, [k for k in graph.initializers if k in buffers]


def check_names(what: str, names: Sequence[str], known: Sequence[str]) -> None:
    for n in names:
        if n not in known:
            close = difflib.get_close_matches(n, known, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ArtifactError(f"{what} {n!r} is not a parameter of the model{hint} "
                                f"({len(known)} parameters, e.g. {', '.join(known[:5])})")


def last_layers(graph: Graph, n: int = 1) -> list[str]:
    """The parameters of the last ``n`` layers. A layer is a node that reads parameters, together
    with the elementwise node right after it that adds or scales by a parameter (a MatMul's bias)."""
    # values computed from parameters and constants only (a transposed weight) stand for them
    derived = {p: [p] for p in split_state(graph)[0]}
    layers: list[list[str]] = []
    last_out: set[str] = set()
    for node in graph.nodes:
        ins = [x for x in node.inputs if x]
        reads = [p for x in ins if x in derived for p in derived[x]]
        if ins and reads and all(x in derived or x in graph.initializers for x in ins):
            for o in node.outputs:
                derived[o] = reads
            continue
        if not reads:
            continue
        if node.op_type in ("Add", "Mul") and any(x in last_out for x in node.inputs) and layers:
            layers[-1] += reads
        else:
            layers.append(reads)
        last_out = set(node.outputs)
    if n < 1 or n > len(layers):
        raise ArtifactError(f"the model has {len(layers)} layers with parameters; cannot take the "
                            f"last {n}")
    return [p for layer in layers[-n:] for p in dict.fromkeys(layer)]


# --- modes -------------------------------------------------------------------------------------

def _bn_node(n: Node, train: bool, b: NodeBuilder, opset: int, updates: dict[str, str]) -> Node:
    attrs = {k: v for k, v in n.attrs.items() if k not in ("training_mode", "is_test")}
    if opset < 7:
        attrs["is_test"] = 0 if train else 1
    elif opset >= 14:
        attrs["training_mode"] = int(train)
    if not train:
        return Node(n.op_type, n.inputs, n.outputs[:1], attrs, n.name, n.domain)
    outs = [n.outputs[0]] + [b.claim(f"{x}.new") for x in n.inputs[3:5]]
    updates.update(zip(n.inputs[3:5], outs[1:]))
    return Node(n.op_type, n.inputs, outs, attrs, n.name, n.domain)


def _bn_trains(n: Node, opset: int, mode: str) -> bool:
    if mode == "auto":
        if opset >= 14:
            return bool(n.attrs.get("training_mode", 0))
        if opset < 7:
            return not n.attrs.get("is_test", 0)
        return sum(1 for o in n.outputs if o) > 1
    return mode == "train"


def _dropout_ratio(graph: Graph, n: Node, opset: int) -> float:
    if opset < 12:
        return float(n.attrs.get("ratio", 0.5))
    r = n.inputs[1] if len(n.inputs) > 1 else ""
    if not r:
        return 0.5
    if r not in graph.initializers:
        raise ArtifactError(f"Dropout node {n.name!r}: its ratio {r!r} must be a constant to train")
    return float(np.asarray(graph.initializers[r]).reshape(-1)[0])


def set_modes(graph: Graph, *, train: bool, batchnorm: str, dropout: bool, seed: int
              ) -> tuple[Graph, dict[str, str], bool]:
    """The graph with BatchNorm and Dropout in training or eval behaviour.
    Returns (graph, buffer -> updated-value name, whether it reads the RNG step)."""
    if batchnorm not in ("auto", "train", "frozen"):
        raise ArtifactError(f"batchnorm must be 'auto', 'train' or 'frozen', not {batchnorm!r}")
    b = NodeBuilder(graph)
    updates: dict[str, str] = {}
    uses_rng = False
    opset = graph.opset("") or 1
    nodes = []
    for i, n in enumerate(graph.nodes):
        if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx"):
            nodes.append(_bn_node(n, train and _bn_trains(n, opset, batchnorm), b, opset, updates))
        elif n.op_type == "Dropout" and n.domain in ("", "ai.onnx"):
            ratio = _dropout_ratio(graph, n, opset)
            if train and dropout and ratio > 0:
                uses_rng = True
                mask = n.outputs[1] if len(n.outputs) > 1 and n.outputs[1] else b.fresh("mask")
                nodes.append(Node("TrainingDropout", [n.inputs[0], RNG_STEP],
                                  [n.outputs[0], mask], {"ratio": ratio, "seed": seed + i},
                                  n.name, ET_DOMAIN))
            else:  # inference behaviour: no training_mode input, no is_test=0
                attrs = {**n.attrs, "is_test": 1} if opset < 7 else n.attrs
                nodes.append(Node(n.op_type, n.inputs[:2], n.outputs, attrs, n.name, n.domain))
        else:
            nodes.append(n)
    inputs = list(graph.inputs) + ([Value(RNG_STEP, np.dtype(np.int64), ())] if uses_rng else [])
    opsets = {**graph.opsets, ET_DOMAIN: 1} if uses_rng or ET_DOMAIN in graph.opsets else graph.opsets
    g = Graph(nodes, inputs, list(graph.outputs), dict(graph.initializers), dict(opsets),
              graph.name, set(graph.overridable), dict(graph.doc))
    return g, updates, uses_rng


# --- loss --------------------------------------------------------------------------------------

def attach_loss(graph: Graph, loss: Loss | CustomLoss, outputs: Sequence[str]
                ) -> tuple[Graph, str, list[Value]]:
    """The graph plus the loss nodes; returns (graph, loss value, label inputs added)."""
    b = NodeBuilder(graph)
    b.current = "loss"
    by_name = {v.name: v for v in graph.outputs}
    for o in outputs:
        if o not in by_name:
            raise LossError(f"loss input {o!r} is not an output of the model (outputs: "
                            f"{', '.join(by_name)})")
    extra_opsets: dict[str, int] = {}
    if isinstance(loss, CustomLoss):
        value, labels, extra_opsets = _custom(b, graph, loss, outputs)
    else:
        out = by_name[outputs[0]]
        label = loss.label_value(out)
        if not b.reserve(label.name):
            raise LossError(f"the label input name {label.name!r} is already used in the model; "
                            "pass label_name=... to the loss")
        dtype = np.dtype(out.dtype) if out.dtype is not None else np.dtype(np.float32)
        value, labels = loss.build(b, out.name, label.name, dtype), [label]
    name = b.claim("loss")
    b.nodes.append(Node("Identity", [value], [name], {}, "loss/output"))
    g = Graph(graph.nodes + b.nodes, list(graph.inputs) + labels,
              [Value(name, by_name[outputs[0]].dtype, None)] + list(graph.outputs),
              {**graph.initializers, **b.constants}, {**extra_opsets, **graph.opsets},
              graph.name, set(graph.overridable), dict(graph.doc))
    return g, name, labels


def _custom(b: NodeBuilder, graph: Graph, loss: CustomLoss, outputs: Sequence[str]):
    lg = loss.model if isinstance(loss.model, Graph) else load_graph(loss.model)
    want, have = graph.opset(""), lg.opset("")
    if want and have and want != have:
        try:
            lg = load_graph(version_converter.convert_version(lg.to_onnx(), want))
        except Exception as e:
            raise LossError(f"the custom loss uses opset {have} and the model opset {want}; "
                            f"converting it failed: {e}") from e
    model_outs = {v.name: v for v in graph.outputs}
    rename: dict[str, str] = {}
    labels: list[Value] = []
    for v in lg.inputs:
        src = loss.inputs.get(v.name, v.name)
        if src in model_outs:
            rename[v.name] = src
        elif not b.reserve(src):
            raise LossError(f"custom loss input {v.name!r} clashes with a value of the model")
        else:
            rename[v.name] = src
            labels.append(Value(src, v.dtype, v.shape))
    for k, a in lg.initializers.items():
        rename[k] = b.claim(f"loss/{k}")
        b.constants[rename[k]] = a
    for n in lg.nodes:
        for o in n.outputs:
            if o:
                rename[o] = b.claim(f"loss/{o}")
        b.nodes.append(Node(n.op_type, [rename.get(x, x) if x else "" for x in n.inputs],
                            [rename[o] if o else "" for o in n.outputs], n.attrs,
                            b.claim(f"loss/{n.name}"), n.domain))
    if not lg.outputs:
        raise LossError("the custom loss model has no output")
    extra = {d: v for d, v in lg.opsets.items() if d != ""}
    return rename[lg.outputs[0].name], labels, extra


# --- the two graphs ----------------------------------------------------------------------------

@dataclass
class Roles:
    """Which input and output of a training/eval graph is what (stored in the model file)."""

    inputs: list[str]            # user inputs, then labels
    labels: list[str]
    loss: str
    outputs: list[str]           # loss, then the additional outputs
    params: list[str]
    trainable: list[str]
    buffers: list[str]
    gradients: dict[str, str] = field(default_factory=dict)       # param -> output
    buffer_updates: dict[str, str] = field(default_factory=dict)  # buffer -> output
    rng_step: str = ""
    model_outputs: list[str] = field(default_factory=list)        # the inference outputs
    # how the batch loss combines the losses of micro-batches (Loss.batch_split); None: it
    # cannot be split (custom loss, reduction "none", or artifacts older than the field)
    loss_split: dict | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Roles":
        return cls(**json.loads(text))


def _like(name: str, a: np.ndarray) -> Value:
    return Value(name, a.dtype, tuple(a.shape))


def state_to_inputs(graph: Graph, names: Sequence[str]) -> Graph:
    """Initializers ``names`` become graph inputs (fed from the checkpoint each step)."""
    inits = dict(graph.initializers)
    state = [Value(k, inits[k].dtype, tuple(inits.pop(k).shape)) for k in names]
    return Graph(list(graph.nodes), list(graph.inputs) + state, list(graph.outputs), inits,
                 dict(graph.opsets), graph.name, set(graph.overridable) - set(names),
                 dict(graph.doc))


def build_graphs(model: ModelLike | Graph, *, requires_grad: Sequence[str] | None = None,
                 frozen_params: Sequence[str] = (), loss: Loss | CustomLoss,
                 loss_input_names: Sequence[str] | None = None,
                 additional_output_names: Sequence[str] = (), batchnorm: str = "auto",
                 dropout: bool = True, seed: int = 0, untie: bool = True
                 ) -> tuple[Graph, Graph, Roles, dict[str, np.ndarray]]:
    """(training graph, eval graph, roles, initial state) for an inference model."""
    graph = model if isinstance(model, Graph) else load_graph(model)
    if untie:
        graph = untie_aliases(graph)
    params, buffers = split_state(graph)
    check_names("frozen parameter", frozen_params, params)
    if requires_grad is None:
        trainable = [p for p in params if p not in set(frozen_params)]
    else:
        check_names("requires_grad name", requires_grad, params)
        trainable = [p for p in params if p in set(requires_grad) and p not in set(frozen_params)]
    if not trainable:
        raise ArtifactError("no parameter requires a gradient: requires_grad and frozen_params "
                            "leave nothing to train")
    model_outputs = [v.name for v in graph.outputs]
    loss_on = list(loss_input_names or model_outputs[:1])
    for o in additional_output_names:
        if o not in model_outputs:
            raise ArtifactError(f"additional output {o!r} is not an output of the model "
                                f"(outputs: {', '.join(model_outputs)})")
    state = {k: graph.initializers[k] for k in params + buffers}
    user_inputs = [v.name for v in graph.inputs]

    def one(train: bool):
        g, updates, rng = set_modes(graph, train=train, batchnorm=batchnorm, dropout=dropout,
                                    seed=seed)
        g, loss_name, labels = attach_loss(g, loss, loss_on)
        roles = Roles(user_inputs + [v.name for v in labels], [v.name for v in labels],
                      loss_name, [loss_name, *additional_output_names], params, trainable,
                      buffers, rng_step=RNG_STEP if rng else "", model_outputs=model_outputs,
                      loss_split=None if isinstance(loss, CustomLoss) else loss.batch_split())
        order = roles.outputs + ([] if train else  # eval keeps the model's outputs (export)
                                 [o for o in model_outputs if o not in roles.outputs])
        g = Graph(g.nodes, g.inputs, sorted([v for v in g.outputs if v.name in order],
                                            key=lambda v: order.index(v.name)),
                  g.initializers, g.opsets, g.name, g.overridable, g.doc)
        if train:
            back = build_backward(g, loss_name, trainable)
            g = back.graph
            roles.gradients = dict(back.gradients)
            roles.buffer_updates = updates
            g.outputs = ([v for v in g.outputs if v.name in roles.outputs]
                         + [_like(back.gradients[p], state[p]) for p in trainable]
                         + [_like(u, state[k]) for k, u in updates.items()])
        g = state_to_inputs(g, [k for k in params + buffers if k in g.initializers])
        g.doc[META_KEY] = roles.to_json()
        return g, roles

    train_graph, roles = one(True)
    eval_graph, _ = one(False)
    return train_graph, eval_graph, roles, state
