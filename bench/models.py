"""The benchmark's networks as torch modules, and their ONNX export (needs torch).

Every workload is built here from a fixed seed and exported once per configuration:
eval mode, TorchScript exporter, opset 17, IR version <= 9, batch axis dynamic ("N"),
``training=PRESERVE`` so BatchNorm stays an inference ``BatchNormalization`` node (running
statistics, not fused into the Conv) and Dropout disappears. The torch engine trains the very same
module from the weights saved beside the export (``weights.npz``), so all three engines start from
identical numbers.

Weights that torch initializes to identical values (BatchNorm/LayerNorm weights all ones, biases all
zeros) are randomized from the seed: the exporter would otherwise store them once and alias them
through ``Identity`` nodes, and an engine that trains the stored initializer (ONNX Runtime) would
train them tied, which is not the torch computation.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
from torch import nn

SEED = 0


# ------------------------------------------------------------------------------------------ MLP
class MLP(nn.Module):
    """784-512-512-10 on [N,1,28,28]."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(),
                                 nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, classes))

    def forward(self, x):
        return self.net(x)


# ---------------------------------------------------------------------------------- MobileNetV2
def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1) -> 3x3 depthwise -> 1x1 linear projection; residual when
    the shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   conv_bn(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_res = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0 (torchvision's layout: 17 inverted residual blocks, 1280 features,
    Dropout 0.2 + Linear classifier)."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]  # (expand t, channels c, repeats n, stride s)

    def __init__(self, classes: int = 10):
        super().__init__()
        layers, cin = [conv_bn(3, 32, 3, 2)], 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))
        for m in self.modules():  # torchvision's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# --------------------------------------------------------------------------------------- tinylm
class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x, mask):                       # x [N,T,d], mask [T,T] additive
        n, t, d = x.shape
        split = lambda y: y.reshape(n, t, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))   # [N,H,T,dh]
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads) + mask, dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.att = Attention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, mask):
        x = x + self.att(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    """Pre-norm transformer LM: tokens [N,T] int64 -> logits [N,T,vocab]; causal mask, exact
    GELU, learned positions, untied head."""

    def __init__(self, vocab: int = 2000, d: int = 256, heads: int = 4, layers: int = 4,
                 T: int = 64):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, T, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", torch.triu(torch.full((T, T), float("-inf")), 1))

    def forward(self, idx):
        x = self.emb(idx) + self.pos
        for b in self.blocks:
            x = b(x, self.mask)
        return self.head(self.ln(x))


# ------------------------------------------------------------------------------------ workloads
MODELS = {"MLP": MLP, "MobileNetV2": MobileNetV2, "TinyLM": TinyLM}

# job -> (model class, input shape without batch, input kind, batch, trainable, classes)
JOBS = {
    "mlp": dict(model="MLP", input=[1, 28, 28], dtype="float32", batch=64, trainable="all",
                classes=10),
    "mnv2_96_all": dict(model="MobileNetV2", input=[3, 96, 96], dtype="float32", batch=16,
                        trainable="all", classes=10),
    "mnv2_96_last": dict(model="MobileNetV2", input=[3, 96, 96], dtype="float32", batch=16,
                         trainable="last", classes=10),
    "mnv2_224_all": dict(model="MobileNetV2", input=[3, 224, 224], dtype="float32", batch=32,
                         trainable="all", classes=10),
    "mnv2_224_last": dict(model="MobileNetV2", input=[3, 224, 224], dtype="float32", batch=32,
                          trainable="last", classes=10),
    "tinylm": dict(model="TinyLM", input=[64], dtype="int64", batch=16, trainable="all",
                   classes=2000),
}
LAST_LAYER = {"MLP": "net.5", "MobileNetV2": "classifier.1", "TinyLM": "head"}


def build(name: str, seed: int = SEED) -> nn.Module:
    """The module with its initial weights: torch's initialization from ``seed``, then norm
    layers' affine parameters and BatchNorm statistics randomized (see the module docstring)."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            if isinstance(m, nn.Linear) and not m.bias.any():
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.01)
    return model.eval()


def example_input(job: dict, batch: int = 2) -> torch.Tensor:
    shape = [batch, *job["input"]]
    if job["dtype"] == "int64":
        return torch.randint(0, job["classes"], shape)
    return torch.randn(shape)


def export(job_name: str, out_dir: str) -> dict:
    """Export ``job_name``'s model into ``out_dir``: ``model.onnx``, ``weights.npz`` (the torch
    state dict) and ``spec.json`` (model, trainable ONNX names, trainable torch names). Returns
    the spec."""
    import onnx  # noqa: PLC0415  (local: the export path only)

    job = JOBS[job_name]
    os.makedirs(out_dir, exist_ok=True)
    model = build(job["model"])
    path = os.path.join(out_dir, "model.onnx")
    dyn = {"input": {0: "N"}, "output": {0: "N"}}
    torch.onnx.export(model, (example_input(job),), path, input_names=["input"],
                      output_names=["output"], dynamic_axes=dyn, opset_version=17, dynamo=False,
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=True)
    proto = onnx.load(path)
    if proto.ir_version > 9:
        proto.ir_version = 9
        onnx.save(proto, path)
    onnx.checker.check_model(proto)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    np.savez(os.path.join(out_dir, "weights.npz"), **state)
    params = onnx_parameters(proto)
    if job["trainable"] == "all":
        trainable = params
        torch_trainable = [k for k, _ in model.named_parameters()]
    else:
        last = LAST_LAYER[job["model"]]
        torch_trainable = [f"{last}.weight", f"{last}.bias"]
        trainable = [k for k in torch_trainable if k in params]
        if trainable != torch_trainable:
            raise RuntimeError(f"{job_name}: the last layer's parameters {torch_trainable} are "
                               f"not initializers of the export")
    spec = dict(job, job=job_name, onnx="model.onnx", trainable_onnx=trainable,
                trainable_torch=torch_trainable,
                batchnorm_nodes=sum(n.op_type == "BatchNormalization" for n in proto.graph.node),
                layernorm_1out_nodes=sum(n.op_type == "LayerNormalization" and len(n.output) == 1
                                         for n in proto.graph.node),
                n_params=int(sum(
                    np.prod(v.shape) for v in model.parameters())),
                n_trainable=int(sum(np.prod(p.shape) for k, p in model.named_parameters()
                                    if k in torch_trainable)))
    with open(os.path.join(out_dir, "spec.json"), "w") as f:
        json.dump(spec, f, indent=1)
    return spec


def onnx_parameters(proto) -> list[str]:
    """The export's trainable-parameter candidates: float initializers of rank >= 1 that nodes
    read, minus BatchNorm running statistics and non-finite ones (attention masks). Refuses an
    export that aliases an initializer through Identity (the engines would disagree on ties)."""
    from onnx import numpy_helper  # noqa: PLC0415

    inits = {i.name: i for i in proto.graph.initializer}
    stats = {x for n in proto.graph.node if n.op_type == "BatchNormalization" for x in n.input[3:5]}
    read = {x for n in proto.graph.node for x in n.input}
    aliased = [n.input[0] for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in inits]
    if aliased:
        raise RuntimeError(f"the export aliases initializers through Identity: {aliased[:3]}")
    out = []
    for k, t in inits.items():
        a = numpy_helper.to_array(t)
        if k in read and k not in stats and a.dtype.kind == "f" and a.ndim >= 1 \
                and np.isfinite(a).all():
            out.append(k)
    return out
