"""PyTorch's functional losses on small random cases, for tests/data/golden/losses.npz (written
by tools/make_golden.py): per case the input(s), target(s), options, the loss and its gradient
with respect to the input, in float64. Sequence cases are stored classes-last ([N, T, C], the
layout of edgetrain and of sequence-model exports); torch is called on the permuted input."""
from __future__ import annotations

import json
import os
import zlib

import numpy as np
import torch
import torch.nn.functional as F


def _seed(key):
    return torch.Generator().manual_seed(zlib.crc32(key.encode()))


def loss_cases():
    """Yield (key, options, tensors dict, loss fn(input) -> loss) for every loss configuration."""
    N, T, C = 6, 3, 5
    for fn in ("ce", "nll"):
        for seq in (False, True):
            for weighted in (False, True):
                for ignore in (None, -100, 2):
                    for smooth in ((0.0, 0.1) if fn == "ce" else (0.0,)):
                        for red in ("mean", "sum", "none"):
                            key = (fn + ("_seq" if seq else "") + ("_weight" if weighted else "")
                                   + {None: "", -100: "_ignore", 2: "_ignore2"}[ignore]
                                   + ("_smooth" if smooth else "") + f"_{red}")
                            g = _seed(key)
                            shape = (N, T) if seq else (N,)
                            x = torch.randn(*shape, C, generator=g, dtype=torch.float64) * 2
                            if fn == "nll":
                                x = torch.log_softmax(x, -1)
                            tgt = torch.randint(0, C, shape, generator=g)
                            flat = tgt.view(-1)
                            if ignore == -100:
                                flat[[1, 4]] = -100
                            elif ignore == 2:
                                flat[[0, 3]] = 2
                            w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5
                                 if weighted else None)
                            opts = {"fn": "cross_entropy" if fn == "ce" else "nll_loss",
                                    "layout": "NTC (torch called with input.permute(0,2,1))"
                                    if seq else "NC",
                                    "weight": weighted, "reduction": red,
                                    "ignore_index": -100 if ignore is None else ignore,
                                    "labels_ignored": ignore is not None}
                            if fn == "ce":
                                opts["label_smoothing"] = smooth

                            def f(inp, tgt=tgt, w=w, ignore=ignore, smooth=smooth, red=red,
                                  seq=seq, fn=fn):
                                inp = inp.permute(0, 2, 1) if seq else inp
                                kw = dict(weight=w, reduction=red,
                                          ignore_index=-100 if ignore is None else ignore)
                                if fn == "ce":
                                    return F.cross_entropy(inp, tgt, label_smoothing=smooth, **kw)
                                return F.nll_loss(inp, tgt, **kw)

                            tensors = {"input": x, "target": tgt}
                            if weighted:
                                tensors["weight"] = w
                            yield key, opts, tensors, f

    for red in ("mean", "sum", "none"):
        for fn, extra in (("mse", {}), ("l1", {}), ("smooth_l1", {"beta": 1.0}),
                          ("smooth_l1_beta0.5", {"beta": 0.5}), ("huber", {"delta": 1.5})):
            key = f"{fn}_{red}"
            g = _seed(key)
            x = torch.randn(N, 4, generator=g, dtype=torch.float64) * 1.5
            t = torch.randn(N, 4, generator=g, dtype=torch.float64) * 1.5
            torch_fn = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss}.get(
                fn, F.smooth_l1_loss)
            opts = {"fn": torch_fn.__name__, "reduction": red, **extra}
            yield key, opts, {"input": x, "target": t}, (
                lambda inp, t=t, red=red, extra=extra, torch_fn=torch_fn:
                torch_fn(inp, t, reduction=red, **extra))

    for pw in (False, True):
        for wt in (False, True):
            for red in ("mean", "sum", "none"):
                key = ("bce_logits" + ("_pos_weight" if pw else "") + ("_weight" if wt else "")
                       + f"_{red}")
                g = _seed(key)
                x = torch.randn(N, 4, generator=g, dtype=torch.float64) * 2
                t = torch.bernoulli(torch.full((N, 4), 0.5, dtype=torch.float64), generator=g)
                t[0, :] = torch.tensor([0.25, 0.7, 0.5, 0.1], dtype=torch.float64)  # soft labels
                tensors = {"input": x, "target": t}
                if pw:
                    tensors["pos_weight"] = 2 * torch.rand(4, generator=g, dtype=torch.float64) + .5
                if wt:
                    tensors["weight"] = torch.rand(4, generator=g, dtype=torch.float64) + 0.5
                opts = {"fn": "binary_cross_entropy_with_logits", "reduction": red,
                        "pos_weight": "[C] broadcast over N" if pw else None,
                        "weight": "[C] broadcast over N" if wt else None}
                yield key, opts, tensors, (
                    lambda inp, t=t, red=red, w=tensors.get("weight"), p=tensors.get("pos_weight"):
                    F.binary_cross_entropy_with_logits(inp, t, weight=w, pos_weight=p,
                                                       reduction=red))

    for log_target in (False, True):
        for red in ("batchmean", "mean", "sum", "none"):
            key = "kl_div" + ("_log_target" if log_target else "") + f"_{red}"
            g = _seed(key)
            x = torch.log_softmax(torch.randn(N, C, generator=g, dtype=torch.float64), -1)
            t = torch.randn(N, C, generator=g, dtype=torch.float64)
            t = torch.log_softmax(t, -1) if log_target else torch.softmax(t, -1)
            opts = {"fn": "kl_div", "reduction": red, "log_target": log_target,
                    "input": "log-probabilities",
                    "target": "log-probabilities" if log_target else "probabilities"}
            yield key, opts, {"input": x, "target": t}, (
                lambda inp, t=t, red=red, lt=log_target:
                F.kl_div(inp, t, reduction=red, log_target=lt))


def make_losses(out_dir):
    arrays, options = {}, {}
    for key, opts, tensors, f in loss_cases():
        assert key not in options, key
        x = tensors["input"].clone().requires_grad_(True)
        loss = f(x)
        if loss.ndim == 0:
            go = torch.ones((), dtype=torch.float64)
        else:
            go = torch.randn(loss.shape, generator=_seed("grad_output/" + key), dtype=torch.float64)
        (grad,) = torch.autograd.grad(loss, x, go)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all(), key
        for k, v in tensors.items():
            arrays[f"{key}/{k}"] = v.detach().numpy()
        arrays[f"{key}/loss"] = loss.detach().numpy()
        arrays[f"{key}/grad_output"] = go.numpy()
        arrays[f"{key}/grad"] = grad.numpy()
        options[key] = opts
    arrays["__options__"] = np.array(json.dumps(options, sort_keys=True))
    np.savez_compressed(os.path.join(out_dir, "losses.npz"), **arrays)
    with open(os.path.join(out_dir, "losses.json"), "w") as fh:
        json.dump(options, fh, indent=1, sort_keys=True)
        fh.write("\n")
    return len(options)
