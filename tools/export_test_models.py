"""Export the small torch models the tests use (needs torch; the tests do not).

    python tools/export_test_models.py [OUT_DIR]     # default: tests/data

Each model mirrors a kind of export users bring — an MLP, a MobileNetV2-style CNN (depthwise
convolutions, BatchNorm, ReLU6 as Clip, residual Add, global pooling) and a pre-norm transformer LM
(nn.MultiheadAttention, whose export carries Shape/Gather/Concat/Reshape sub-graphs, a causal mask,
LayerNormalization and exact GELU) — at a size that keeps the files small. Exported with the
TorchScript exporter at opset 17, batch axis dynamic, weights from a fixed seed; BatchNorm running
statistics are randomized so that BatchNorm is not the identity.
"""
from __future__ import annotations

import os
import sys

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


def conv_bn(cin, cout, k=3, stride=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(conv_bn(cin, hidden, 1), conv_bn(hidden, hidden, 3, stride, hidden),
                                   conv_bn(hidden, cout, 1, act=False))

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


class TinyMobileNet(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8, 3, 2), InvertedResidual(8, 8, 1, 2), InvertedResidual(8, 12, 2, 3),
            InvertedResidual(12, 12, 1, 3), conv_bn(12, 32, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.att = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x, mask):
        h = self.ln1(x)
        x = x + self.att(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab=50, d=16, heads=2, layers=2, T=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, T, d) * 0.1)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", torch.triu(torch.full((T, T), float("-inf")), 1))

    def forward(self, idx):
        x = self.emb(idx) + self.pos
        for b in self.blocks:
            x = b(x, self.mask)
        return self.head(self.ln(x))


def randomize_bn(model: nn.Module, gen: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


MODELS = {
    "mlp": (MLP, lambda: torch.randn(2, 1, 8, 8)),
    "mobilenet_tiny": (TinyMobileNet, lambda: torch.randn(2, 3, 16, 16)),
    "tinylm_tiny": (TinyLM, lambda: torch.randint(0, 50, (2, 8))),
}


def export(name: str, out_dir: str) -> str:
    torch.manual_seed(0)
    cls, example = MODELS[name]
    model = cls().eval()
    randomize_bn(model, torch.Generator().manual_seed(1))
    path = os.path.join(out_dir, f"{name}.onnx")
    torch.onnx.export(model, (example(),), path, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}}, opset_version=17,
                      dynamo=False, training=torch.onnx.TrainingMode.PRESERVE)
    return path


def main(argv):
    out_dir = argv[0] if argv else os.path.join(os.path.dirname(__file__), "..", "tests", "data")
    os.makedirs(out_dir, exist_ok=True)
    for name in MODELS:
        path = export(name, out_dir)
        print(f"{path}: {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
