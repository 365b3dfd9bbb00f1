"""Regenerate tests/data/golden/, PyTorch reference data for training (needs torch; tests do not):

    .venv/bin/python tools/make_golden.py [OUT_DIR]      # default: tests/data/golden

What it writes (all deterministic: fixed seeds, one thread, deterministic algorithms):

A. Trajectories. Three small models, each exported ONCE (eval mode, legacy TorchScript exporter,
   opset 17, ``training=PRESERVE`` so BatchNorm stays an inference ``BatchNormalization`` node with
   running statistics instead of being fused into the Conv, ``do_constant_folding=True``, batch axis
   dynamic and named "N", input "x" (float32) / "tokens" (int64), output "logits"):

   - ``mlp``: Linear(20,32)-ReLU-Linear(32,32)-ReLU-Linear(32,5); x [N,20], logits [N,5].
   - ``cnn``: Conv(3->8,3x3,pad1)-BN-ReLU-Conv(8->8,3x3,stride2,pad1,groups=8)-BN-ReLU-
     Conv1x1(8->16)-BN-ReLU6(Clip)-GlobalAveragePool-Flatten-Linear(16->4); x [N,3,12,12]; convs
     have no bias; BN running stats come from a few train-mode passes, BN weight/bias randomized.
   - ``lm``: pre-norm transformer LM, vocab 50, d 16, 2 heads, 1 layer, T 8, untied embedding and
     head, LayerNorm (random affine), exact GELU MLP, additive causal mask, no dropout; attention is
     written out with separate q/k/v/o nn.Linear layers (no nn.MultiheadAttention, whose packed
     in_proj weight constant folding would split into several initializers); tokens [N,8] int64,
     logits [N,8,50].

   ``<model>.onnx`` is the exported model, ``<model>_data.npz`` the 20 fixed batches (B=8) shared by
   every run of that model: ``x`` [20,8,...] (float32, or int64 tokens for the LM), ``labels``
   [20,8] / [20,8,8] int64 (LM: next-token labels).
   Each run ``<model>_<opt>[_<bnmode>][_last].npz`` holds ``losses`` (float64 [20]: the loss of each
   step's forward, before that step's update), ``param/<onnx initializer>`` for every parameter
   after step 20 (frozen ones unchanged), ``grad0/<onnx initializer>`` (gradient of the step-0 loss
   for each trainable parameter), ``buffer/<onnx initializer>`` (BN running mean/var after step 20;
   CNN only) and ``config`` (a JSON string, also gathered in ``manifest.json``).
   The trajectories are computed in float64 from the float32 exported weights (the model is cast
   with ``.double()``), so they are the exact-arithmetic reference a float32 trainer is compared to
   with a tolerance. Loss: ``F.cross_entropy`` with mean reduction (LM: logits [N,T,V] and labels
   [N,T] flattened to [N*T,V] / [N*T]). Optimizers: torch.optim.SGD(lr=0.05, momentum=0.9) and
   torch.optim.AdamW(lr=1e-2, betas=(0.9,0.999), eps=1e-8, weight_decay=0.01) over all trainable
   parameters in one group (AdamW decays biases, norms and embeddings too). BN modes (CNN):
   "train" (model.train(): batch statistics, biased batch variance to normalize, running stats
   updated with momentum 0.1 and the unbiased variance) and "frozen" (BN modules .eval(): running
   statistics used, BN weight/bias still trained). "_last" runs train only the final Linear
   (weight and bias) with SGD; the CNN's last-layer run uses frozen BN.

   Parameters are keyed by ONNX initializer name. The mapping is found by value: every torch
   parameter and BN buffer must equal exactly one initializer, either as is or transposed. Linears
   applied to 2-D inputs export as Gemm(transB=1) and keep the torch name ("fc1.weight"); Linears
   applied to 3-D inputs (the LM) export as MatMul(x, W^T) and constant folding stores W^T under a
   generated name ("onnx::MatMul_123"): those are stored (params and grads) in the ONNX layout,
   i.e. transposed, and listed in the config's "transposed". The script asserts that no two
   parameters share an initializer and that no initializer is aliased through an Identity node.

B. Losses: ``losses.npz`` (+ ``losses.json``, the same options). For every case KEY:
   ``KEY/input``, ``KEY/target``, optional ``KEY/weight`` / ``KEY/pos_weight``, ``KEY/loss``
   (torch's value; shape [] for mean/sum/batchmean, the per-element shape for "none"),
   ``KEY/grad_output`` (the upstream gradient: 1.0 for scalar reductions, a fixed random array for
   "none") and
   ``KEY/grad`` (d(sum(loss * grad_output))/d input), all float64 except integer class targets
   (int64). ``__options__`` holds the options of every case as one JSON string.
   Cross-entropy / nll on sequences are stored in the ONNX/edgetrain layout [N,T,C] (targets
   [N,T]); torch's own layout is [N,C,T], so the script calls torch with ``input.permute(0,2,1)``.

C. Self-checks: onnx.checker; the CNN graph keeps three inference BatchNormalization nodes; each
   model run in onnxruntime (batch 3, to exercise the dynamic axis) matches the torch float32 eval
   output; the float64 step-0 loss matches the loss of the onnxruntime logits where the forward is
   the inference one (MLP, LM, CNN frozen); the stored final param/ and buffer/ arrays, written into
   the ONNX model, reproduce in onnxruntime the trained torch model's eval output.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import warnings
import zlib

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from golden_losses import make_losses

STEPS = 20
BATCH = 8
SGD = {"type": "SGD", "lr": 0.05, "momentum": 0.9, "dampening": 0.0, "nesterov": False,
       "weight_decay": 0.0}
ADAMW = {"type": "AdamW", "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01,
         "amsgrad": False}
OPTIMIZERS = {"sgd": SGD, "adamw": ADAMW}


# ----------------------------------------------------------------------------------------- models
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(20, 32), nn.Linear(32, 32), nn.Linear(32, 5)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu6(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x, mask):
        n, t, d = x.shape
        dh = d // self.heads

        def split(y):
            return y.reshape(n, t, self.heads, dh).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-2, -1) * (dh ** -0.5) + mask, dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x, mask):
        x = x + self.attn(self.ln1(x), mask)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyLM(nn.Module):
    def __init__(self, vocab=50, d=16, heads=2, T=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, T, d) * 0.1)
        self.block = Block(d, heads)
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", torch.triu(torch.full((T, T), float("-inf")), 1))

    def forward(self, tokens):
        return self.head(self.ln_f(self.block(self.emb(tokens) + self.pos, self.mask)))


def _init_cnn(model: CNN, gen: torch.Generator) -> None:
    # Running statistics from a few train-mode passes on shifted, scaled inputs; then random affine.
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(16, 3, 12, 12, generator=gen) * 1.5 + 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
    model.eval()


def _init_lm(model: TinyLM, gen: torch.Generator) -> None:
    # Random LayerNorm affine: default ones/zeros would be identical tensors the exporter dedupes.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.normalized_shape, generator=gen))
                m.bias.copy_(0.1 * torch.randn(m.normalized_shape, generator=gen))


def _batches_float(shape, classes, gen):
    x = torch.randn(STEPS, BATCH, *shape, generator=gen)
    y = torch.randint(0, classes, (STEPS, BATCH), generator=gen)
    return x, y


def _batches_lm(gen, vocab=50, T=8):
    seq = torch.randint(0, vocab, (STEPS, BATCH, T + 1), generator=gen)
    return seq[..., :T].contiguous(), seq[..., 1:].contiguous()


MODELS = {
    # name: (class, init, input name, data maker, final Linear's torch name, example input)
    "mlp": (MLP, None, "x", lambda g: _batches_float((20,), 5, g), "fc3",
            lambda g: torch.randn(3, 20, generator=g)),
    "cnn": (CNN, _init_cnn, "x", lambda g: _batches_float((3, 12, 12), 4, g), "fc",
            lambda g: torch.randn(3, 3, 12, 12, generator=g)),
    "lm": (TinyLM, _init_lm, "tokens", _batches_lm, "head",
           lambda g: torch.randint(0, 50, (3, 8), generator=g)),
}

RUNS = [  # (model, optimizer, bn mode, last layer only)
    ("mlp", "sgd", None, False), ("mlp", "adamw", None, False), ("mlp", "sgd", None, True),
    ("cnn", "sgd", "train", False), ("cnn", "sgd", "frozen", False),
    ("cnn", "adamw", "train", False), ("cnn", "adamw", "frozen", False),
    ("cnn", "sgd", "frozen", True),
    ("lm", "sgd", None, False), ("lm", "adamw", None, False), ("lm", "sgd", None, True),
]


# ----------------------------------------------------------------------------------------- export
def export(name: str, out_dir: str):
    cls, init, in_name, _, _, example = MODELS[name]
    torch.manual_seed(zlib.crc32(name.encode()))
    model = cls()
    if init is not None:
        init(model, torch.Generator().manual_seed(zlib.crc32(b"init/" + name.encode())))
    model.eval()
    path = os.path.join(out_dir, f"{name}.onnx")
    ex = example(torch.Generator().manual_seed(7))
    torch.onnx.export(model, (ex,), path, input_names=[in_name], output_names=["logits"],
                      dynamic_axes={in_name: {0: "N"}, "logits": {0: "N"}}, opset_version=17,
                      dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,
                      do_constant_folding=True)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    return model, proto, path


def map_initializers(model: nn.Module, proto: onnx.ModelProto):
    """torch name -> (onnx initializer name, transposed) for every parameter and BN buffer."""
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    aliased = [n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in inits]
    assert not aliased, f"initializers aliased through Identity: {aliased}"
    tensors = [(n, p, True) for n, p in model.named_parameters()]
    tensors += [(n, b, isinstance(model.get_submodule(n.rpartition(".")[0]), nn.BatchNorm2d))
                for n, b in model.named_buffers() if not n.endswith("num_batches_tracked")]
    mapping, used = {}, {}
    for tname, t, required in tensors:
        a = t.detach().cpu().numpy()
        hits = [(n, False) for n, v in inits.items() if v.shape == a.shape and np.array_equal(v, a)]
        if a.ndim == 2:
            hits += [(n, True) for n, v in inits.items()
                     if v.shape == a.T.shape and np.array_equal(v, a.T)]
        if not hits and not required:
            continue  # e.g. the LM's causal mask (a constant, not state)
        assert len(hits) == 1, f"{tname}: {len(hits)} matching initializers {hits}"
        oname, transposed = hits[0]
        assert oname not in used, f"initializer {oname} shared by {used[oname]} and {tname}"
        used[oname] = tname
        mapping[tname] = (oname, transposed)
    # Every float initializer that is not a parameter/buffer is a small constant.
    return mapping, [n for n in inits if n not in used]


def check_ort(name, model, path, in_name):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = MODELS[name][5](torch.Generator().manual_seed(11))
    with torch.no_grad():
        ref = model(x).numpy()
    got = sess.run(["logits"], {in_name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=f"{name}: onnxruntime")
    return sess


# --------------------------------------------------------------------------------------- training
def _cross_entropy(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def train_run(name, model32, mapping, data, opt_key, bn_mode, last):
    final = MODELS[name][4]
    model = copy.deepcopy(model32).double()
    model.train()
    if bn_mode == "frozen":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
    names = [n for n, _ in model.named_parameters()]
    trainable = [n for n in names if not last or n.rsplit(".", 1)[0] == final]
    params = dict(model.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in trainable)
    o = OPTIMIZERS[opt_key]
    group = [params[n] for n in trainable]
    if o["type"] == "SGD":
        opt = torch.optim.SGD(group, lr=o["lr"], momentum=o["momentum"], dampening=o["dampening"],
                              nesterov=o["nesterov"], weight_decay=o["weight_decay"])
    else:
        opt = torch.optim.AdamW(group, lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"],
                                weight_decay=o["weight_decay"], amsgrad=o["amsgrad"])
    x_all, y_all = data
    losses, grad0 = [], {}
    for step in range(STEPS):
        x = x_all[step] if x_all.dtype == torch.int64 else x_all[step].double()
        opt.zero_grad(set_to_none=True)
        loss = _cross_entropy(model(x), y_all[step])
        loss.backward()
        if step == 0:
            grad0 = {n: params[n].grad.detach().clone() for n in trainable}
        opt.step()
        losses.append(loss.item())

    def onnx_layout(tname, t):
        oname, transposed = mapping[tname]
        a = t.detach().numpy()
        return oname, np.ascontiguousarray(a.T if transposed else a)

    out = {"losses": np.asarray(losses, dtype=np.float64)}
    for n in names:
        k, a = onnx_layout(n, params[n])
        out[f"param/{k}"] = a
    for n in trainable:
        k, a = onnx_layout(n, grad0[n])
        out[f"grad0/{k}"] = a
    if name == "cnn":
        for n, b in model.named_buffers():
            if n in mapping:
                k, a = onnx_layout(n, b)
                out[f"buffer/{k}"] = a
    run = f"{name}_{opt_key}" + (f"_{bn_mode}" if bn_mode else "") + ("_last" if last else "")
    model.eval()
    with torch.no_grad():
        x = x_all[0] if x_all.dtype == torch.int64 else x_all[0].double()
        final_logits = model(x).numpy()
    config = {
        "run": run, "model": name, "onnx": f"{name}.onnx", "data": f"{name}_data.npz",
        "input": MODELS[name][2], "output": "logits", "steps": STEPS, "batch": BATCH,
        "dtype": "float64 (float32 exported weights cast to float64)",
        "loss": "cross_entropy, reduction mean" + (
            ", logits [N,T,V] and labels [N,T] flattened" if name == "lm" else ""),
        "optimizer": o, "bn_mode": bn_mode, "last_layer_only": last,
        "bn": ({"momentum": 0.1, "eps": 1e-5, "running_var_update": "unbiased batch variance"}
               if name == "cnn" else None),
        "trainable": [mapping[n][0] for n in trainable],
        "frozen": [mapping[n][0] for n in names if n not in trainable],
        "torch_names": {mapping[n][0]: n for n in mapping},
        "transposed": sorted(mapping[n][0] for n in mapping if mapping[n][1]),
    }
    out["config"] = np.array(json.dumps(config, sort_keys=True))
    return run, out, config, final_logits


def check_stored_state(proto, arrays, in_name, x, ref_logits, run):
    """The stored param/ and buffer/ arrays, put into the ONNX model, give torch's final output."""
    proto = copy.deepcopy(proto)
    stored = {k.split("/", 1)[1]: v for k, v in arrays.items()
              if k.startswith(("param/", "buffer/"))}
    for init in proto.graph.initializer:
        if init.name in stored:
            value = stored.pop(init.name).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(value, init.name))
    assert not stored, f"{run}: stored arrays with no initializer: {sorted(stored)}"
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {in_name: x})[0]
    np.testing.assert_allclose(got, ref_logits, rtol=1e-4, atol=1e-4, err_msg=f"{run}: final state")


# ------------------------------------------------------------------------------------------- main
def main(argv):
    out_dir = argv[0] if argv else os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                                "tests", "data", "golden")
    out_dir = os.path.normpath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    # The legacy exporter is deprecated, and warns about constant folding under PRESERVE, which only
    # matters for a model in training mode (ours are in eval mode).
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
    warnings.filterwarnings("ignore", message=".*constant folding be turned off.*")
    warnings.filterwarnings("ignore", message="reduction: 'mean' divides the total loss")
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    manifest = {"models": {}, "runs": {}}
    for name in MODELS:
        model, proto, path = export(name, out_dir)
        in_name = MODELS[name][2]
        mapping, constants = map_initializers(model, proto)
        missing = [n for n, _ in model.named_parameters() if n not in mapping]
        assert not missing, f"{name}: parameters without an initializer: {missing}"
        if name == "cnn":
            bns = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
            assert len(bns) == 3 and all(len(n.output) == 1 for n in bns), "BN not inference nodes"
        sess = check_ort(name, model, path, in_name)

        data = MODELS[name][3](torch.Generator().manual_seed(zlib.crc32(b"data/" + name.encode())))
        np.savez_compressed(os.path.join(out_dir, f"{name}_data.npz"), x=data[0].numpy(),
                            labels=data[1].numpy())
        manifest["models"][name] = {
            "onnx": f"{name}.onnx", "data": f"{name}_data.npz", "input": in_name,
            "parameters": {mapping[n][0]: n for n, _ in model.named_parameters()},
            "buffers": {mapping[n][0]: n for n, _ in model.named_buffers() if n in mapping},
            "transposed": sorted(mapping[n][0] for n in mapping if mapping[n][1]),
            "other_initializers": constants}

        # The float64 step-0 loss must be the loss of the exported graph where the forward is the
        # inference one (this also checks the runs start from the exported weights).
        logits0 = sess.run(["logits"], {in_name: data[0][0].numpy()})[0]
        ort_loss0 = _cross_entropy(torch.from_numpy(logits0).double(), data[1][0]).item()

        for model_name, opt_key, bn_mode, last in RUNS:
            if model_name != name:
                continue
            run, arrays, config, final_logits = train_run(name, model, mapping, data, opt_key,
                                                          bn_mode, last)
            check_stored_state(proto, arrays, in_name, data[0][0].numpy(), final_logits, run)
            if bn_mode != "train":
                assert abs(arrays["losses"][0] - ort_loss0) < 1e-5, (run, arrays["losses"][0],
                                                                      ort_loss0)
            assert np.isfinite(arrays["losses"]).all(), run
            np.savez_compressed(os.path.join(out_dir, f"{run}.npz"), **arrays)
            manifest["runs"][run] = config
            print(f"{run}: loss {arrays['losses'][0]:.4f} -> {arrays['losses'][-1]:.4f}")

    with open(os.path.join(out_dir, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(f"losses.npz: {make_losses(out_dir)} cases")
    total = 0
    for f in sorted(os.listdir(out_dir)):
        size = os.path.getsize(os.path.join(out_dir, f))
        total += size
        print(f"{f:32s} {size:8d}")
    print(f"{'total':32s} {total:8d}")


if __name__ == "__main__":
    main(sys.argv[1:])
