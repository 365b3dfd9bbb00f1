"""Fine-tune a small language model on a user's own text, on the device.

A keyboard that learns how *you* write is the classic case for on-device training: the text never
leaves the phone, and a small model adapts in seconds. This example walks through it with a tiny
character-level transformer:

1. **Build the model** with ``onnx.helper`` (no PyTorch): an embedding (``Gather``) plus learned
   positions, one causal self-attention block with four heads and a ReLU MLP, each behind a
   ``LayerNormalization``, a final ``LayerNormalization`` and an output projection to logits
   ``[N, T, V]``. The causal mask is a constant of ``-inf`` above the diagonal; edgetrain treats
   initializers holding infinities as constants, not parameters.
2. **Pretrain** it briefly on a built-in generic English text (edgetrain's ``Trainer``, AdamW),
   and export it as ``pretrained.onnx``: this stands for the model an app ships.
3. **Personalize** the shipped model on a few lines of one user's writing (a beekeeper's log),
   with fresh artifacts made from ``pretrained.onnx``, and export ``personalized.onnx``.
4. **Measure** both models on lines of the user's text that training never saw: the mean
   per-character loss (nats) and the perplexity ``exp(loss)``; and let each model complete the
   same prompt greedily.

Run it with no arguments (no network; about 10 seconds on two cores)::

    python examples/finetune_lm.py

Bring your own text (one example a line; the last fifth of the lines is held out)::

    python examples/finetune_lm.py --text my_notes.txt

Bring your own export too (pretraining is then skipped)::

    python examples/finetune_lm.py --model my_lm.onnx --text my_notes.txt

The export must be a causal character-level model with one input, the token ids (int64
``[N, T]``, e.g. ``tokens``; ``T`` a fixed number, or a symbolic dimension that ``--context``
sets), and as its first output the logits (float32 ``[N, T, V]``, e.g. ``logits``), where
position ``t`` sees tokens ``0..t`` only. Token ids index
a vocabulary: the characters of the model's metadata entry ``vocab`` when it has one (this
script writes it into the models it builds), else this script's default vocabulary (newline and
printable ASCII, ``V = 96``). Every op must be one edgetrain can differentiate (``Gather``,
``MatMul``, ``Softmax``, ``LayerNormalization``, ``GRU``, ... - see ``edgetrain.ops``).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgetrain import InferenceSession, Trainer
from edgetrain import artifacts as A

# Token 0 is the newline; then printable ASCII from the space to the tilde. Other characters are
# read as "?".
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
IGNORE = -100           # label of padding positions: they count for nothing in the loss

# Generic text for the short pretraining (written for this example).
GENERIC_TEXT = """\
The morning was cold and clear, and the road into town was quiet.
A few people waited at the bus stop with their hands in their pockets.
The baker had opened early, and the smell of fresh bread drifted down the street.
Children walked to school in small groups, talking about the weekend.
In the market square the traders set out boxes of apples, pears and potatoes.
An old man sat on a bench and read the newspaper while his dog slept at his feet.
By noon the sun was warm enough to sit outside, and the cafes filled with people.
The river ran fast after the rain of the last few days.
Along the path by the water, runners passed walkers and cyclists rang their bells.
In the afternoon the wind turned, and grey clouds came in from the west.
Shops closed one by one, and the lights came on in the windows of the houses.
Families sat down to dinner, and the streets grew quiet again.
Later the rain came back, soft at first and then heavy on the roofs.
It is easy to forget how much a small town changes from one hour to the next.
The library keeps a shelf of books about the history of the region.
Most of them were written by people who lived here all their lives.
They describe the old mill, the first railway station and the great flood.
The station is still in use, and trains leave for the city every half hour.
On the platform there is a clock that has not been right for many years.
Nobody seems to mind, because everyone checks the time on their phone.
In the summer the hills above the town are green and full of sheep.
Walkers come from far away to climb to the top and look out over the valley.
On a good day you can see the sea, a thin bright line at the edge of the land.
In the winter the same hills are white, and the roads over them are often closed.
Then the town feels far from everything, and people stay close to home.
They bake, they read, they visit friends and talk late into the evening.
When spring comes, the first flowers appear along the walls and in the gardens.
The days grow longer, and the whole town seems to wake up at once.
My neighbour grows beans, peas and tomatoes in a small garden behind her house.
Every evening she waters the plants and checks the leaves for slugs.
She says the secret of a good garden is patience and a little luck with the weather.
Last year the tomatoes were late, but the beans grew taller than the fence.
On Saturdays she takes a basket of vegetables to the market and sells them by the gate.
The money pays for seeds, and there is always something left for a cake.
A good cake needs butter, sugar, eggs and flour, mixed well and baked slowly.
Check it with a knife in the middle; when the knife comes out clean, it is ready.
Let it cool on the table before you cut it, or the slices will break.
Some people like to add lemon or chocolate, and some add a handful of nuts.
The school at the end of the road has a new roof and a bigger playground.
The teachers planted trees along the fence, and the children help to look after them.
Each class has a tree of its own and writes down how much it grows every month.
In the spring they count the birds that come to the trees and the insects on the leaves.
It is a simple way to learn about the seasons and about the animals around us.
The bus to the city takes an hour, and the train takes a little less.
Many people work in the city and come home in the evening, tired but glad to be back.
On the way home they see the hills turn dark and the first lights come on in the valley.
The weather report says there will be rain tomorrow, with wind from the north.
After that the week should be dry and bright, with cold nights and warm afternoons.
It is a good time to walk in the woods, where the leaves are turning red and gold.
Take a warm coat, a bottle of water and something to eat, and tell someone where you are going.
"""

# The user: a hobby beekeeper who keeps a log on the phone. Personalization sees USER_TRAIN only;
# USER_HELDOUT measures the models before and after.
USER_TRAIN = """\
Checked hive 1: calm bees, plenty of capped brood and fresh pollen.
Checked hive 2: the queen is laying well, added a super for the lime flow.
Checked hive 3: a little grumpy today, smoked them gently and closed up.
Hive 1 is heavy with honey, will take two frames off on Saturday.
Hive 2 needs a new super before the lime trees flower.
Hive 3 is building queen cells, split it into the spare box tomorrow.
Fed hive 3 with syrup, the frames were light after the rain.
Saw the queen in hive 1, marked her with a blue dot.
Varroa count in hive 2 is low, check again next week.
Checked hive 1: the bees are bringing in orange pollen from the willows.
Took six frames of honey from hive 2 and spun them in the kitchen.
Hive 3 settled down after the split, the new queen is laying.
Checked hive 2: calm and busy, plenty of capped honey.
"""
USER_HELDOUT = """\
Checked hive 3: calm bees, the new queen is laying well.
Hive 1 needs a super before the lime flow.
Checked hive 2: plenty of capped brood and fresh pollen.
"""
PROMPT = "Checked hive "


# --- text and windows ------------------------------------------------------------------------

def encode(text: str, vocab: str) -> np.ndarray:
    index = {ch: i for i, ch in enumerate(vocab)}
    unknown = index.get("?", 0)
    return np.array([index.get(ch, unknown) for ch in text], dtype=np.int64)


def decode(ids, vocab: str) -> str:
    return "".join(vocab[int(i)] for i in ids)


def windows(ids: np.ndarray, context: int, stride: int,
            pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs: tokens ``ids[i:i+T]`` and, as labels, the next characters ``ids[i+1:i+T+1]``
    for i = 0, stride, 2*stride, ...; a window running past the end is padded (label IGNORE)."""
    starts = range(0, max(1, len(ids) - 1), stride)
    x = np.full((len(starts), context), pad_id, np.int64)
    y = np.full((len(starts), context), IGNORE, np.int64)
    for row, i in enumerate(starts):
        chunk = ids[i:i + context + 1]
        x[row, :len(chunk) - 1] = chunk[:-1]
        y[row, :len(chunk) - 1] = chunk[1:]
        if i + context + 1 >= len(ids):
            return x[:row + 1], y[:row + 1]
    return x, y


def line_windows(text: str, vocab: str, context: int) -> tuple[np.ndarray, np.ndarray]:
    """One window per line for evaluation: the line after a newline, each character (and the
    closing newline) predicted once from the characters before it in the line."""
    pad = encode(" ", vocab)[0]
    pairs = [windows(encode("\n" + line + "\n", vocab), context, context, pad)
             for line in text.splitlines() if line.strip()]
    return np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])


# --- the model -------------------------------------------------------------------------------

def build_char_lm(vocab_size: int, context: int, dim: int = 64, heads: int = 4,
                  hidden: int = 128, seed: int = 0, vocab: str | None = None) -> onnx.ModelProto:
    """A one-block causal transformer over characters, as plain ONNX (opset 17)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32

    def normal(name, *shape, std):
        return numpy_helper.from_array((rng.standard_normal(shape) * std).astype(f32), name)

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value), name)

    d_head = dim // heads
    inits = [
        normal("embed", vocab_size, dim, std=0.1), normal("position", context, dim, std=0.1),
        const("ln1.weight", np.ones(dim, f32)), const("ln1.bias", np.zeros(dim, f32)),
        normal("attn.q", dim, dim, std=dim ** -0.5), normal("attn.k", dim, dim, std=dim ** -0.5),
        normal("attn.v", dim, dim, std=dim ** -0.5), normal("attn.out", dim, dim, std=dim ** -0.5),
        const("attn.out_bias", np.zeros(dim, f32)),
        const("ln2.weight", np.ones(dim, f32)), const("ln2.bias", np.zeros(dim, f32)),
        normal("mlp.fc1", dim, hidden, std=dim ** -0.5),
        const("mlp.fc1_bias", np.zeros(hidden, f32)),
        normal("mlp.fc2", hidden, dim, std=hidden ** -0.5),
        const("mlp.fc2_bias", np.zeros(dim, f32)),
        const("ln_f.weight", np.ones(dim, f32)), const("ln_f.bias", np.zeros(dim, f32)),
        normal("head.weight", dim, vocab_size, std=dim ** -0.5),
        const("head.bias", np.zeros(vocab_size, f32)),
        # constants: the causal mask (-inf above the diagonal), shapes, the attention scale
        const("causal_mask", np.triu(np.full((context, context), -np.inf, f32), 1)),
        const("split_heads", np.array([0, context, heads, d_head], np.int64)),
        const("merge_heads", np.array([0, context, dim], np.int64)),
        const("scale", np.array(d_head ** -0.5, f32)),
    ]
    n = helper.make_node
    ln = dict(axis=-1, epsilon=1e-5)
    nodes = [
        n("Gather", ["embed", "tokens"], ["tok_emb"]),
        n("Add", ["tok_emb", "position"], ["x0"]),
        # causal self-attention, pre-norm, residual
        n("LayerNormalization", ["x0", "ln1.weight", "ln1.bias"], ["h1"], **ln),
        n("MatMul", ["h1", "attn.q"], ["q_flat"]),
        n("MatMul", ["h1", "attn.k"], ["k_flat"]),
        n("MatMul", ["h1", "attn.v"], ["v_flat"]),
        n("Reshape", ["q_flat", "split_heads"], ["q_split"]),
        n("Transpose", ["q_split"], ["q"], perm=[0, 2, 1, 3]),          # [N, H, T, d]
        n("Reshape", ["k_flat", "split_heads"], ["k_split"]),
        n("Transpose", ["k_split"], ["k_t"], perm=[0, 2, 3, 1]),        # [N, H, d, T]
        n("Reshape", ["v_flat", "split_heads"], ["v_split"]),
        n("Transpose", ["v_split"], ["v"], perm=[0, 2, 1, 3]),
        n("MatMul", ["q", "k_t"], ["scores_raw"]),
        n("Mul", ["scores_raw", "scale"], ["scores_scaled"]),
        n("Add", ["scores_scaled", "causal_mask"], ["scores"]),
        n("Softmax", ["scores"], ["attention"], axis=-1),
        n("MatMul", ["attention", "v"], ["mixed"]),
        n("Transpose", ["mixed"], ["mixed_t"], perm=[0, 2, 1, 3]),
        n("Reshape", ["mixed_t", "merge_heads"], ["merged"]),
        n("MatMul", ["merged", "attn.out"], ["attn_proj"]),
        n("Add", ["attn_proj", "attn.out_bias"], ["attn_out"]),
        n("Add", ["x0", "attn_out"], ["x1"]),
        # MLP, pre-norm, residual
        n("LayerNormalization", ["x1", "ln2.weight", "ln2.bias"], ["h2"], **ln),
        n("MatMul", ["h2", "mlp.fc1"], ["fc1"]),
        n("Add", ["fc1", "mlp.fc1_bias"], ["fc1_b"]),
        n("Relu", ["fc1_b"], ["fc1_act"]),
        n("MatMul", ["fc1_act", "mlp.fc2"], ["fc2"]),
        n("Add", ["fc2", "mlp.fc2_bias"], ["mlp_out"]),
        n("Add", ["x1", "mlp_out"], ["x2"]),
        # output
        n("LayerNormalization", ["x2", "ln_f.weight", "ln_f.bias"], ["h_f"], **ln),
        n("MatMul", ["h_f", "head.weight"], ["logits_raw"]),
        n("Add", ["logits_raw", "head.bias"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "char_lm",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["N", context])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", context, vocab_size])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="edgetrain examples/finetune_lm.py")
    if vocab is not None:
        helper.set_model_props(model, {"vocab": vocab})
    onnx.checker.check_model(model)
    return model


def describe(path: str | Path, context: int | None) -> tuple[str, int, str, str]:
    """(vocabulary, context length, input name, output name) of an exported char LM."""
    model = onnx.load(str(path), load_external_data=False)
    vocab = next((p.value for p in model.metadata_props if p.key == "vocab"), VOCAB)
    graph = model.graph
    constants = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in constants]
    if len(inputs) != 1:
        raise SystemExit(f"{path}: expected one input (tokens [N, T]), found {len(inputs)}")
    inp, out = inputs[0], graph.output[0]
    dims = inp.type.tensor_type.shape.dim
    out_dims = out.type.tensor_type.shape.dim
    if inp.type.tensor_type.elem_type != TensorProto.INT64 or len(dims) != 2:
        raise SystemExit(f"{path}: the input {inp.name!r} must be int64 [N, T]")
    if len(out_dims) != 3:
        raise SystemExit(f"{path}: the output {out.name!r} must be logits [N, T, V]")
    fixed = dims[1].dim_value if dims[1].HasField("dim_value") else None
    if fixed and context and context != fixed:
        raise SystemExit(f"{path}: the model's context is fixed at {fixed}; --context {context} "
                         "does not fit")
    v = out_dims[2].dim_value if out_dims[2].HasField("dim_value") else len(vocab)
    if v != len(vocab):
        raise SystemExit(f"{path}: the model predicts {v} tokens but the vocabulary has "
                         f"{len(vocab)} characters; store yours in the model's metadata as 'vocab'")
    return vocab, fixed or context or 48, inp.name, out.name


# --- measuring -------------------------------------------------------------------------------

def char_loss(session, names, x: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood per predicted character, in nats."""
    (logits,) = session.run([names[1]], {names[0]: x})
    logits = logits.astype(np.float64)
    logits -= logits.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = y != IGNORE
    picked = np.take_along_axis(logp, np.where(keep, y, 0)[..., None], -1)[..., 0]
    return float(-picked[keep].mean())


def generate(session, names, prompt: str, vocab: str, context: int, length: int) -> str:
    """Greedy completion: append the most likely next character, ``length`` times."""
    ids = list(encode(prompt, vocab))
    pad = encode(" ", vocab)[0]
    for _ in range(length):
        window = ids[-context:]
        x = np.full((1, context), pad, np.int64)
        x[0, :len(window)] = window                  # causal: the padding after it is not seen
        (logits,) = session.run([names[1]], {names[0]: x})
        ids.append(int(logits[0, len(window) - 1].argmax()))
        if vocab[ids[-1]] == "\n":
            break
    return decode(ids, vocab).rstrip("\n")


# --- training --------------------------------------------------------------------------------

def train(model, out: Path, name: str, x, y, *, epochs: int, lr: float, batch: int, seed: int,
          output: str, validation=None, say=print) -> tuple[Path, dict, float]:
    """Artifacts for ``model``, AdamW over every parameter, and the exported inference model."""
    art = out / f"{name}_artifacts"
    A.generate_artifacts(model, loss=A.CrossEntropyLoss(ignore_index=IGNORE),
                         optimizer=A.AdamW(lr=lr, weight_decay=0.0), artifact_directory=art)
    trainer = Trainer(art, batch_size=batch, seed=seed, last_batch="keep", quiet=True,
                      progress=False)
    t0 = time.perf_counter()
    history = trainer.fit((x, y), epochs=epochs, validation_data=validation)
    seconds = time.perf_counter() - t0
    path = out / f"{name}.onnx"
    trainer.module.export_model_for_inferencing(str(path), [output])
    return path, history, seconds


def read_user_text(path: str | None) -> tuple[str, str]:
    """(training text, held-out text): the built-in log, or the file's lines with the last fifth
    (at least one line) held out."""
    if path is None:
        return USER_TRAIN, USER_HELDOUT
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) < 2:
        raise SystemExit(f"{path}: need at least two non-empty lines (one is held out)")
    k = max(1, len(lines) // 5)
    return "\n".join(lines[:-k]) + "\n", "\n".join(lines[-k:]) + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Pretrain a tiny character-level transformer on generic text, personalize it "
                    "on a user's text on the device, and compare the two on held-out user text.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="your char-LM export (tokens [N,T] -> logits [N,T,V]); "
                                   "skips pretraining")
    p.add_argument("--text", help="your text file, one example a line (the last fifth is held out)")
    p.add_argument("--out", default="finetune-lm-out", help="folder for artifacts and models")
    p.add_argument("--context", type=int, default=None,
                   help="characters of context T (default: the model's, or 48)")
    p.add_argument("--pretrain-epochs", type=int, default=8,
                   help="epochs over the generic text")
    p.add_argument("--epochs", type=int, default=10, help="personalization epochs")
    p.add_argument("--lr", type=float, default=2e-3, help="personalization learning rate")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt", default=None, help="prompt for the greedy samples")
    p.add_argument("--quiet", action="store_true", help="print the summary only")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    """Run the example; returns a summary (losses, perplexities, samples, seconds, paths)."""
    args = parse_args(argv)
    say = (lambda *a: None) if args.quiet else print
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_text, heldout_text = read_user_text(args.text)
    summary: dict = {}

    if args.model is None:
        context = args.context or 48
        vocab = VOCAB
        say(f"1. Pretraining a {context}-character transformer on {len(GENERIC_TEXT)} characters "
            f"of generic text ({args.pretrain_epochs} epochs)...")
        ids = encode(GENERIC_TEXT, vocab)
        x, y = windows(ids, context, stride=3, pad_id=encode(" ", vocab)[0])
        model = build_char_lm(len(vocab), context, seed=args.seed, vocab=vocab)
        pretrained, hist, secs = train(model, out, "pretrained", x, y,
                                       epochs=args.pretrain_epochs, lr=3e-3,
                                       batch=args.batch_size, seed=args.seed, output="logits")
        say(f"   loss {hist['loss'][0]:.2f} -> {hist['loss'][-1]:.2f} nats/char in {secs:.1f} s; "
            f"wrote {pretrained}")
        summary["pretrain_seconds"] = round(secs, 2)
    else:
        pretrained = Path(args.model)
        vocab, context, _, _ = describe(pretrained, args.context)
        say(f"1. Using your model {pretrained} (context {context}, {len(vocab)} characters).")
    vocab, context, inp, outp = describe(pretrained, context)
    names = (inp, outp)

    pad = encode(" ", vocab)[0]
    ux, uy = windows(encode("\n" + train_text, vocab), context, stride=2, pad_id=pad)
    hx, hy = line_windows(heldout_text, vocab, context)
    prompt = args.prompt if args.prompt is not None else (
        PROMPT if args.text is None else heldout_text.splitlines()[0][:12])

    before_session = InferenceSession(str(pretrained))
    before = char_loss(before_session, names, hx, hy)
    sample_before = generate(before_session, names, prompt, vocab, context, 60)
    say(f"2. On the user's held-out text the shipped model scores {before:.3f} nats/char "
        f"(perplexity {math.exp(before):.1f}).")
    say(f"   Greedy completion of {prompt!r}: {sample_before!r}")

    say(f"3. Personalizing on {len(train_text)} characters of the user's text "
        f"({len(ux)} windows, {args.epochs} epochs, every parameter)...")
    personalized, hist, secs = train(pretrained, out, "personalized", ux, uy, epochs=args.epochs,
                                     lr=args.lr, batch=args.batch_size, seed=args.seed,
                                     output=outp, validation=(hx, hy))
    say(f"   training loss {hist['loss'][0]:.2f} -> {hist['loss'][-1]:.2f} in {secs:.1f} s; "
        f"wrote {personalized}")

    after_session = InferenceSession(str(personalized))
    after = char_loss(after_session, names, hx, hy)
    sample_after = generate(after_session, names, prompt, vocab, context, 60)
    say(f"4. On the same held-out text the personalized model scores {after:.3f} nats/char "
        f"(perplexity {math.exp(after):.1f}; it was {math.exp(before):.1f}).")
    say(f"   Greedy completion of {prompt!r}: {sample_after!r}")

    summary.update({
        "heldout_loss_before": round(before, 4), "heldout_loss_after": round(after, 4),
        "perplexity_before": round(math.exp(before), 2),
        "perplexity_after": round(math.exp(after), 2),
        "sample_before": sample_before, "sample_after": sample_after, "prompt": prompt,
        "personalize_seconds": round(secs, 2), "pretrained_model": str(pretrained),
        "personalized_model": str(personalized),
    })
    try:
        import onnxruntime as ort
    except ImportError:
        summary["onnxruntime_loss"] = None
    else:
        sess = ort.InferenceSession(str(personalized), providers=["CPUExecutionProvider"])
        summary["onnxruntime_loss"] = round(char_loss(sess, names, hx, hy), 4)
        say(f"   ONNX Runtime runs personalized.onnx: {summary['onnxruntime_loss']:.3f} nats/char.")
    summary["seconds"] = round(time.perf_counter() - t_start, 2)
    say(f"Done in {summary['seconds']:.1f} s.")
    if args.quiet:
        print(f"held-out user text: {before:.3f} -> {after:.3f} nats/char, perplexity "
              f"{math.exp(before):.1f} -> {math.exp(after):.1f} ({summary['seconds']:.1f} s)")
    return summary


if __name__ == "__main__":
    main()
