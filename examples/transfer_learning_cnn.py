"""Transfer learning on the device: teach a pretrained CNN new classes from a user's own images.

The pretrained network is split in two: a **backbone** (every layer but the last), which has
learned to turn pixels into useful features, and a **head** (the last layer), which maps those
features to class scores. To learn a new label set from a few examples, keep the backbone frozen
and train the head only: the frozen backbone gets no backward pass and no optimizer state, so a
step costs little more than a forward pass, and a few examples cannot spoil the features.

The story of the default run: an app ships the digit classifier that comes with edgetrain
(``edgetrain/data/digits_classifier.onnx``, 8x8 images of handwritten digits). Its user wants a
calculator that also reads the operators they write: ``+``, ``-``, ``x``, ``=`` and ``/``. The
script

1. grows the model's head from 10 to 15 classes with ``onnx`` (the ten digit rows are kept, the
   five new rows start near zero),
2. makes training artifacts with ``edgetrain.artifacts.generate_artifacts`` in which only the
   head's weight and bias require gradients,
3. trains them with ``edgetrain.Trainer`` on 10 of the user's examples per class, with 5 per
   class for validation, early stopping on the validation loss and checkpoints every epoch (run
   it again with ``--resume`` after an interruption and it carries on from the last checkpoint),
4. exports the inference model (``export_model_for_inferencing``), and checks it with
   ``edgetrain.InferenceSession`` (and ONNX Runtime when it is installed) on the user's other
   examples, against the shipped model.

The user's digits are the 600 samples of ``digits.npz`` that the shipped model never saw in its
training (the split in ``edgetrain/data/README.md``); the operators are drawn by this script the
way the digits were made: strokes on a 32x32 bitmap, counted in 4x4 blocks (values 0..16).

The ten digit rows of the head train too, on 10 examples of each digit, so the digits lose a few
points while the operators are learnt (about 98% to 92% in the default run): the usual price of
extending a head from a few examples. More examples of the old classes make it smaller.

Run it with no arguments (no network; a few seconds on two cores)::

    python examples/transfer_learning_cnn.py

Bring your own model and images::

    python examples/transfer_learning_cnn.py --model my_cnn.onnx --data my_images.npz

``my_images.npz`` holds ``images`` (float32, shaped as the model's input, preprocessed the way the
model expects) and ``labels`` (ints ``0..K-1``; keys ``x`` and ``y`` work too). The model's first
output must be the class scores (logits, before any softmax), computed by a ``Gemm`` or a
``MatMul`` (+ ``Add``) layer whose weight and bias are initializers. ``--head extend`` (default)
keeps the model's classes as labels ``0..C-1`` and adds rows for labels ``C..K-1``; ``--head
new`` replaces the head by a fresh one with ``K`` classes (a new label set: before training it
guesses).
"""
from __future__ import annotations

import argparse
import shutil
import time
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgetrain import InferenceSession, Trainer
from edgetrain import artifacts as A
from edgetrain.api import EarlyStopping

DATA = resources.files("edgetrain") / "data"
SYMBOLS = ["+", "-", "x", "=", "/"]          # the user's new classes: labels 10, 11, ...


# --- the user's images -----------------------------------------------------------------------

def held_out_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 600 digits the shipped model never trained on, as float32 [N, 1, 8, 8] in 0..1."""
    with (DATA / "digits.npz").open("rb") as f, np.load(f) as d:
        images, labels = d["images"], d["labels"]
    user = np.random.default_rng(0).permutation(len(labels))[:600]   # data/README.md's split
    return (images[user].astype(np.float32) / 16.0)[:, None], labels[user].astype(np.int64)


def _stroke(canvas: np.ndarray, p0, p1, width: float) -> None:
    """Sets the pixels of a 32x32 canvas within width/2 of the segment p0-p1 (row, col)."""
    r, c = np.mgrid[0:32, 0:32].astype(np.float64) + 0.5
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    t = np.clip(((r - p0[0]) * d[0] + (c - p0[1]) * d[1]) / max(d @ d, 1e-9), 0.0, 1.0)
    dist = np.hypot(r - (p0[0] + t * d[0]), c - (p0[1] + t * d[1]))
    canvas[dist <= width / 2] = 1


def draw_symbols(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` handwritten-looking samples of each symbol, as float32 [N, 1, 8, 8] in 0..1,
    labels 10 + symbol index. Each is drawn with its own size, position, slant and pen width."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for k, sym in enumerate(SYMBOLS):
        for _ in range(per_class):
            canvas = np.zeros((32, 32), np.uint8)
            cy, cx = 16 + rng.uniform(-2.5, 2.5, 2)
            half = rng.uniform(8, 13)              # half the symbol's size, in pixels
            width = rng.uniform(2.5, 4.5)          # pen width
            turn = rng.uniform(-0.25, 0.25)        # slant, radians
            rot = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])

            def line(a, b):                        # a, b: (row, col) offsets in units of half
                pa, pb = rot @ np.asarray(a, float), rot @ np.asarray(b, float)
                _stroke(canvas, (cy + half * pa[0], cx + half * pa[1]),
                        (cy + half * pb[0], cx + half * pb[1]), width)
            if sym == "+":
                line((0, -1), (0, 1)); line((-1, 0), (1, 0))
            elif sym == "-":
                line((0, -1), (0, 1))
            elif sym == "x":
                line((-0.8, -0.8), (0.8, 0.8)); line((-0.8, 0.8), (0.8, -0.8))
            elif sym == "=":
                gap = rng.uniform(0.3, 0.5)
                line((-gap, -1), (-gap, 1)); line((gap, -1), (gap, 1))
            else:                                  # "/"
                line((1, -0.6), (-1, 0.6))
            blocks = canvas.reshape(8, 4, 8, 4).sum(axis=(1, 3))   # 0..16, as the digits
            images.append(blocks.astype(np.float32) / 16.0)
            labels.append(10 + k)
    return np.stack(images)[:, None], np.array(labels, np.int64)


def default_data(seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    x_digits, y_digits = held_out_digits()
    x_symbols, y_symbols = draw_symbols(60, seed=1000 + seed)   # about as many as of each digit
    names = [str(d) for d in range(10)] + SYMBOLS
    return np.concatenate([x_digits, x_symbols]), np.concatenate([y_digits, y_symbols]), names


def load_data(path: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as d:
        xk = "images" if "images" in d.files else "x"
        yk = "labels" if "labels" in d.files else "y"
        if xk not in d.files or yk not in d.files:
            raise SystemExit(f"{path}: expected arrays 'images' and 'labels' (or 'x' and 'y'), "
                             f"found {', '.join(d.files)}")
        return d[xk].astype(np.float32), d[yk].astype(np.int64)


def split(labels: np.ndarray, train: int, val: int, seed: int):
    """Per class: ``train`` samples to train on, ``val`` to validate on, the rest to test on."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        if len(idx) < train + val + 1:
            raise SystemExit(f"class {k} has {len(idx)} samples; need at least {train + val + 1} "
                             f"(--train-per-class {train}, --val-per-class {val}, one to test)")
        for part, chunk in zip(parts, (idx[:train], idx[train:train + val], idx[train + val:])):
            part.append(chunk)
    return [rng.permutation(np.concatenate(p)) for p in parts]


# --- the head --------------------------------------------------------------------------------

def find_head(model: onnx.ModelProto) -> dict:
    """The layer computing the model's first output: {weight, bias, layout, output}. ``layout``
    "out_in" when the weight is [classes, features] (a Gemm with transB=1, as torch exports
    nn.Linear), "in_out" when it is [features, classes]."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    out = g.output[0].name
    node = producer.get(out)
    bias = None
    if node is not None and node.op_type == "Add":
        mm = next((producer[x] for x in node.input if x in producer
                   and producer[x].op_type == "MatMul"), None)
        other = [x for x in node.input if mm is None or x != mm.output[0]]
        if mm is not None and len(other) == 1 and other[0] in inits:
            node, bias = mm, other[0]
    if node is not None and node.op_type == "Gemm" and node.input[1] in inits:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        return {"weight": node.input[1], "bias": bias, "layout": "out_in" if trans_b else "in_out",
                "output": out}
    if node is not None and node.op_type == "MatMul" and node.input[1] in inits:
        return {"weight": node.input[1], "bias": bias, "layout": "in_out", "output": out}
    raise SystemExit(f"the model's output {out!r} is not computed by a Gemm or MatMul(+Add) layer "
                     "with constant weights; this example needs such a classifier head")


def set_classes(model: onnx.ModelProto, head: dict, classes: int, mode: str,
                seed: int) -> onnx.ModelProto:
    """A copy of the model whose head has ``classes`` outputs. "extend": the old rows are kept
    and rows for more classes start small; "new": all rows start afresh (uniform, as torch
    initializes nn.Linear)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    tensors = {t.name: t for t in model.graph.initializer}
    w = numpy_helper.to_array(tensors[head["weight"]])
    w = w if head["layout"] == "out_in" else w.T                      # [classes, features]
    b = (numpy_helper.to_array(tensors[head["bias"]]) if head["bias"]
         else np.zeros(len(w), w.dtype))
    old, features = w.shape
    rng = np.random.default_rng(seed)
    if mode == "new":
        bound = 1 / np.sqrt(features)
        w = rng.uniform(-bound, bound, (classes, features)).astype(w.dtype)
        b = np.zeros(classes, b.dtype)
    elif classes > old:
        w = np.concatenate([w, (rng.standard_normal((classes - old, features)) * 0.01
                                ).astype(w.dtype)])
        b = np.concatenate([b, np.zeros(classes - old, b.dtype)])
    tensors[head["weight"]].CopyFrom(numpy_helper.from_array(
        w if head["layout"] == "out_in" else np.ascontiguousarray(w.T), head["weight"]))
    if head["bias"]:
        tensors[head["bias"]].CopyFrom(numpy_helper.from_array(b, head["bias"]))
    elif mode == "new" or classes > old:
        raise SystemExit("the head has no bias; this example only grows heads with a bias")
    dims = model.graph.output[0].type.tensor_type.shape.dim
    if dims:
        dims[-1].Clear()
        dims[-1].dim_value = classes
    del model.graph.value_info[:]                 # shapes are inferred again
    return model


# --- measuring -------------------------------------------------------------------------------

def predict(session, x: np.ndarray, batch: int = 256) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0].argmax(-1)
                           for i in range(0, len(x), batch)])


def report(pred: np.ndarray, y: np.ndarray, old_classes: int) -> dict:
    """Accuracy overall, on the model's original classes and on the new ones."""
    old = y < old_classes
    acc = {"all": float((pred == y).mean())}
    if old.any():
        acc["original_classes"] = float((pred[old] == y[old]).mean())
    if (~old).any():
        acc["new_classes"] = float((pred[~old] == y[~old]).mean())
    return acc


def fmt(acc: dict) -> str:
    parts = [f"{acc['all']:.1%} overall"]
    if "original_classes" in acc and "new_classes" in acc:
        parts.append(f"{acc['original_classes']:.1%} on the original classes, "
                     f"{acc['new_classes']:.1%} on the new ones")
    return "; ".join(parts)


# --- the run ---------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Transfer learning on the device: freeze a pretrained CNN's backbone and train "
                    "its classifier head on a user's images (default: teach the shipped digit "
                    "classifier five handwritten operators).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="your ONNX classifier (default: the shipped digit classifier)")
    p.add_argument("--data", help=".npz with images and labels (default: the user's digits and "
                                  "operators)")
    p.add_argument("--head", choices=["extend", "new"], default="extend",
                   help="extend: keep the model's classes and add the data's new ones; "
                        "new: a fresh head for the data's label set")
    p.add_argument("--out", default="transfer-learning-out", help="folder for artifacts, "
                   "checkpoints and the exported model")
    p.add_argument("--train-per-class", type=int, default=10)
    p.add_argument("--val-per-class", type=int, default=5)
    p.add_argument("--epochs", type=int, default=60, help="at most this many epochs")
    p.add_argument("--patience", type=int, default=8,
                   help="early stopping: epochs without a better validation loss")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true",
                   help="carry on from the newest checkpoint in --out (after an interruption)")
    p.add_argument("--verbose", action="store_true", help="print a line per epoch")
    p.add_argument("--quiet", action="store_true", help="print the summary only")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    """Run the example; returns a summary (accuracies before and after, seconds, paths)."""
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else print
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. the pretrained model, and the user's labelled images
    model_path = args.model or str(DATA / "digits_classifier.onnx")
    shipped = onnx.load(model_path)
    if args.data:
        x, y = load_data(args.data)
        class_names = [str(k) for k in range(int(y.max()) + 1)]
    else:
        x, y, class_names = default_data(args.seed)
    head = find_head(shipped)
    old_classes = next(t for t in shipped.graph.initializer if t.name == head["weight"]).dims[
        0 if head["layout"] == "out_in" else 1]
    # extend: labels 0..C-1 are the model's classes, higher ones are new; new: all are new
    classes = max(old_classes, int(y.max()) + 1) if args.head == "extend" else int(y.max()) + 1
    kept = old_classes if args.head == "extend" else 0
    train_idx, val_idx, test_idx = split(y, args.train_per_class, args.val_per_class, args.seed)
    say(f"1. {Path(model_path).name}: {old_classes} classes; the user's data: {len(y)} images "
        f"of {len(np.unique(y))} classes ({len(train_idx)} to train on, {len(val_idx)} to "
        f"validate, {len(test_idx)} to test).")

    # 2. a head with the user's classes; artifacts where only the head trains
    grown = set_classes(shipped, head, classes, args.head, args.seed)
    if args.head == "extend":
        before = report(predict(InferenceSession(model_path), x[test_idx]), y[test_idx], kept)
        say(f"   The shipped model on the user's test images: {fmt(before)}.")
    else:
        before = report(predict(InferenceSession(grown), x[test_idx]), y[test_idx], kept)
        say(f"   A new label set: with a fresh {classes}-class head the model guesses, "
            f"{fmt(before)}.")
    trainable = [head["weight"]] + ([head["bias"]] if head["bias"] else [])
    art = out / "artifacts"
    A.generate_artifacts(grown, requires_grad=trainable, loss=A.CrossEntropyLoss(),
                         optimizer=A.AdamW(lr=args.lr), artifact_directory=art,
                         additional_output_names=[head["output"]])  # for training accuracy
    sizes = {t.name: int(np.prod(t.dims)) for t in grown.graph.initializer}
    n_train = sum(sizes[p] for p in trainable)
    say(f"2. The head now has {classes} classes; {n_train:,} of {sum(sizes.values()):,} values "
        f"train ({', '.join(trainable)}); the backbone is frozen.")

    # 3. train: validation, early stopping, a checkpoint every epoch
    ckpts = out / "checkpoints"
    if ckpts.exists() and not args.resume:
        shutil.rmtree(ckpts)                      # a new run starts from the shipped model
    trainer = Trainer(art, checkpoint_dir=ckpts, keep_last=2, batch_size=args.batch_size,
                      seed=args.seed, last_batch="keep", quiet=not args.verbose, progress=False,
                      callbacks=[EarlyStopping("val_loss", patience=args.patience)])
    t0 = time.perf_counter()
    history = trainer.fit((x[train_idx], y[train_idx]), epochs=args.epochs, resume=args.resume,
                          validation_data=(x[val_idx], y[val_idx]))
    train_s = time.perf_counter() - t0
    epochs_run = len(history["loss"])
    stopped = "stopped early" if epochs_run < args.epochs else "all epochs"
    say(f"3. Trained the head for {epochs_run} epochs ({stopped}) in {train_s:.1f} s: validation "
        f"loss {history['val_loss'][0]:.3f} after the first epoch, {min(history['val_loss']):.3f} "
        f"at best; checkpoints in {ckpts}.")

    # 4. export the inference model and check it
    personalized = out / "personalized.onnx"
    trainer.module.export_model_for_inferencing(str(personalized), [head["output"]])
    pred = predict(InferenceSession(str(personalized)), x[test_idx])
    after = report(pred, y[test_idx], kept)
    say(f"4. The personalized model on the same test images: {fmt(after)}.")
    summary = {"accuracy_before": before, "accuracy_after": after, "classes": class_names,
               "epochs_run": epochs_run, "train_seconds": round(train_s, 2),
               "history": history, "personalized_model": str(personalized),
               "test_samples": len(test_idx), "train_samples": len(train_idx)}
    try:
        import onnxruntime as ort
    except ImportError:
        summary["onnxruntime_agrees"] = None
        say("   (onnxruntime is not installed: skipped checking the export in it)")
    else:
        sess = ort.InferenceSession(str(personalized), providers=["CPUExecutionProvider"])
        summary["onnxruntime_agrees"] = bool((predict(sess, x[test_idx]) == pred).all())
        same = "the same" if summary["onnxruntime_agrees"] else "DIFFERENT"
        say(f"   ONNX Runtime predicts {same} classes from the exported model.")
    summary["seconds"] = round(time.perf_counter() - t_start, 2)
    say(f"Done in {summary['seconds']:.1f} s; wrote {personalized}.")
    if args.quiet:
        print(f"accuracy {before['all']:.1%} -> {after['all']:.1%} ({summary['seconds']:.1f} s)")
    return summary


if __name__ == "__main__":
    main()
