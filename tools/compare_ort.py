"""Compare edgetrain's outputs with onnxruntime's on ONNX files, at several batch sizes.

    python tools/compare_ort.py MODEL.onnx [MODEL.onnx ...] [--batch 1 8] [--vocab 2000]

Prints, per model and batch, the largest error relative to the output's scale
(max |ours - ort| / max |ort|), the largest elementwise relative error where |ort| is not tiny,
and both run times. Float inputs are standard normal; integer inputs are uniform in [0, vocab).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

import edgetrain


def feeds_for(sess, batch, vocab, rng):
    feeds = {}
    for v in sess.get_inputs():
        shape = [d if isinstance(d, int) and d > 0 else batch for d in v.shape]
        if v.dtype.kind == "f":
            feeds[v.name] = rng.standard_normal(shape).astype(v.dtype)
        else:
            feeds[v.name] = rng.integers(0, vocab, shape).astype(v.dtype)
    return feeds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--vocab", type=int, default=2000)
    args = ap.parse_args()
    for path in args.models:
        sess = edgetrain.InferenceSession(path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        ref_sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        for batch in args.batch:
            feeds = feeds_for(sess, batch, args.vocab, np.random.default_rng(batch))
            t0 = time.perf_counter()
            ours = sess.run(None, feeds)
            t1 = time.perf_counter()
            ref = ref_sess.run(None, feeds)
            t2 = time.perf_counter()
            for o, r, v in zip(ours, ref, sess.get_outputs()):
                err = np.abs(o.astype(np.float64) - r)
                scale = float(np.abs(r).max())
                big = np.abs(r) > 1e-3 * scale
                elem = float((err[big] / np.abs(r[big])).max()) if big.any() else 0.0
                print(f"{path} batch={batch} output={v.name} shape={list(o.shape)} "
                      f"max_err/scale={err.max() / scale:.2e} max_rel_elem={elem:.2e} "
                      f"edgetrain={1000 * (t1 - t0):.0f}ms (first run, incl. planning) "
                      f"ort={1000 * (t2 - t1):.0f}ms")


if __name__ == "__main__":
    main()
