"""Make the demo's pretrained model, ``src/edgetrain/data/digits_classifier.onnx``.

    python tools/make_demo_model.py [--epochs 20] [--out PATH]

torch only defines the network and exports it, untrained (seeded initial weights); the training is
edgetrain's own (artifacts, Module, Optimizer), on the population split of the digits that
``edgetrain demo`` uses (``edgetrain.cli.demo.split``), with a fixed seed. The inference export
takes ``input`` float32 [N, 1, 8, 8] (pixels / 16) and gives ``logits`` [N, 10].
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from edgetrain import artifacts as A
from edgetrain.api import CheckpointState, Module, Optimizer
from edgetrain.cli.demo import MODEL, accuracy, load_digits, split, user_style
from edgetrain.runtime import InferenceSession

SEED = 0


def export_untrained(path: str) -> None:
    import torch
    from torch import nn

    class DigitsCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)             # 16 x 8 x 8
            self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)  # 32 x 4 x 4
            self.fc1 = nn.Linear(32 * 4 * 4, 64)
            self.fc2 = nn.Linear(64, 10)

        def forward(self, x):
            x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
            return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))

    torch.manual_seed(SEED)
    torch.onnx.export(DigitsCNN().eval(), (torch.zeros(1, 1, 8, 8),), path,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17,
                      dynamo=False)


def train(untrained: str, folder: str, out: str, epochs: int, batch: int = 32) -> float:
    images, labels = load_digits()
    tr, _, _ = split(len(labels))
    paths = A.generate_artifacts(untrained, loss=A.CrossEntropyLoss(),
                                 optimizer=A.AdamW(lr=3e-3), artifact_directory=folder)
    state = CheckpointState.load_checkpoint(paths["checkpoint"])
    module = Module(paths["training_model"], state, paths["eval_model"])
    optimizer = Optimizer(paths["optimizer_model"], module)
    rng = np.random.default_rng(SEED)
    t0 = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(tr)
        losses = []
        for i in range(0, len(order), batch):
            b = order[i:i + batch]
            losses.append(float(module(images[b], labels[b])))
            optimizer.step()
            module.lazy_reset_grad()
        print(f"epoch {epoch + 1:2d}: mean loss {np.mean(losses):.4f}")
    module.export_model_for_inferencing(out, ["logits"])
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--out", default=str(MODEL))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        untrained = os.path.join(tmp, "untrained.onnx")
        export_untrained(untrained)
        seconds = train(untrained, os.path.join(tmp, "artifacts"), args.out, args.epochs)
    images, labels = load_digits()
    tr, te, user = split(len(labels))
    sess = InferenceSession(args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes), trained in {seconds:.1f} s")
    print(f"accuracy: population train {accuracy(sess, images[tr], labels[tr]):.2%}, "
          f"population test {accuracy(sess, images[te], labels[te]):.2%} ({len(te)}), "
          f"user's digits as written by the population {accuracy(sess, images[user], labels[user]):.2%}, "
          f"in the user's style {accuracy(sess, user_style(images[user]), labels[user]):.2%} "
          f"({len(user)})")


if __name__ == "__main__":
    main()
