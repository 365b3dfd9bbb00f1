"""Recurrent ops: RNN, GRU and LSTM (one layer, forward / reverse / bidirectional).

The input projections of all time steps and gates are one matmul; the recurrence loops over time
steps with one matmul per step for all gates, vectorized over the batch. ``sequence_lens`` gives
per-batch lengths: steps past a sequence's end keep its state and output zeros, and the reverse
direction starts at each sequence's own last valid step.
"""
from __future__ import annotations

import numpy as np

from .elementwise import sigmoid
from .registry import OpContext, TensorType, register
from .rules import shape_error

VERSIONS = (7, 14, 22)

# --- activation functions, by (case-insensitive) name: fn(x, alpha, beta), default alpha, beta --

_ACTIVATIONS = {
    "sigmoid": (lambda x, a, b: sigmoid(x), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0))), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.logaddexp(0, x), None, None),
}

_DEFAULTS = {"RNN": ("Tanh",), "GRU": ("Sigmoid", "Tanh"), "LSTM": ("Sigmoid", "Tanh", "Tanh")}
_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}


def activation_specs(ctx: OpContext, num_dir: int) -> list[list[tuple[str, object, object]]]:
    """Per direction, the (lower-case name, alpha, beta) of each activation function; alpha/beta
    are consumed by the functions that take them, in order. The backward reads them too."""
    n = len(_DEFAULTS[ctx.op_type])
    names = ctx.attr("activations")
    names = list(names) if names else list(_DEFAULTS[ctx.op_type]) * num_dir
    if len(names) == n and num_dir == 2:
        names = names * 2
    if len(names) != n * num_dir:
        raise ctx.error(f"activations {names} should list {n * num_dir} functions "
                        f"({n} per direction)")
    alphas = list(ctx.attr("activation_alpha") or [])
    betas = list(ctx.attr("activation_beta") or [])
    specs = []
    for name in names:
        name = name.decode() if isinstance(name, bytes) else name
        entry = _ACTIVATIONS.get(name.lower())
        if entry is None:
            raise ctx.error(f"activation {name!r} is not supported (supported: "
                            f"{', '.join(sorted(_ACTIVATIONS))})")
        _, a, b = entry
        if a is not None and alphas:
            a = alphas.pop(0)
        if b is not None and betas:
            b = betas.pop(0)
        specs.append((name.lower(), a, b))
    return [specs[d * n:(d + 1) * n] for d in range(num_dir)]


def _activations(ctx: OpContext, num_dir: int):
    """One list of callables per direction."""
    return [[lambda x, fn=_ACTIVATIONS[name][0], a=a, b=b: fn(x, a, b) for name, a, b in specs]
            for specs in activation_specs(ctx, num_dir)]


# --- shape rule --------------------------------------------------------------------------------

def _num_dir(ctx: OpContext) -> int:
    direction = ctx.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise ctx.error(f"direction {direction!r} should be forward, reverse or bidirectional")
    return 2 if direction == "bidirectional" else 1


def _rnn_infer(ctx: OpContext, x, w, r, b=None, lens=None, h0=None, c0=None, p=None):
    layout = ctx.attr("layout", 0) if ctx.version >= 14 else 0
    if x.rank != 3 or w.rank != 3 or r.rank != 3:
        raise shape_error(ctx, "X, W and R must have rank 3", x, w, r)
    seq, batch = (x.shape[1], x.shape[0]) if layout else x.shape[:2]
    nd, gates = _num_dir(ctx), _GATES[ctx.op_type]
    hidden = int(ctx.attr("hidden_size", r.shape[-1]))
    checks = [(w, (nd, gates * hidden, x.shape[2]), "W"), (r, (nd, gates * hidden, hidden), "R"),
              (b, (nd, 2 * gates * hidden), "B"), (lens, (batch,), "sequence_lens"),
              (p, (nd, 3 * hidden), "P")]
    state = (batch, nd, hidden) if layout else (nd, batch, hidden)
    checks += [(h0, state, "initial_h"), (c0, state, "initial_c")]
    for t, want, what in checks:
        if t is not None and t.shape != want:
            raise shape_error(ctx, f"{what} should have shape {list(want)}", x, w, r, t)
    y = (batch, seq, nd, hidden) if layout else (seq, nd, batch, hidden)
    outs = [TensorType(x.dtype, y), TensorType(x.dtype, state), TensorType(x.dtype, state)]
    return outs[:max(ctx.n_outputs, 1)]


# --- the time loop -----------------------------------------------------------------------------

def _scan(xp, lens, reverse, step, state):
    """Run ``step(x_t, state) -> state`` (state[0] is h) over time; xp: [T, B, G]. Returns Y
    [T, B, H] (zeros past each length) and the final states."""
    seq, batch = xp.shape[:2]
    full = lens is None or bool(np.all(lens >= seq))
    if full:
        xs = xp[::-1] if reverse else xp
    else:
        s = np.arange(seq)[:, None]
        valid = s < lens[None, :]                                 # [T, B]
        # reverse: step s reads time L_b - 1 - s of sequence b (an involution on [0, T))
        order = np.where(valid, lens[None, :] - 1 - s, s) if reverse else \
            np.broadcast_to(s, valid.shape)
        xs = xp[order, np.arange(batch)[None, :]]
    ys = np.empty((seq,) + state[0].shape, dtype=state[0].dtype)
    for t in range(seq):
        new = step(xs[t], state)
        if full:
            state = new
            ys[t] = new[0]
        else:
            v = valid[t][:, None]
            state = tuple(np.where(v, n, o) for n, o in zip(new, state))
            ys[t] = np.where(v, new[0], 0)
    if full:
        return (ys[::-1] if reverse else ys), state
    state = tuple(np.where(lens[:, None] > 0, st, 0) for st in state)  # as onnxruntime
    return ys[order, np.arange(batch)[None, :]], state


def _clip(ctx):
    c = ctx.attr("clip")
    return (lambda g: g) if c is None else (lambda g: np.clip(g, -c, c))


def _run(ctx, x, w, r, b, lens, h0, c0, p, make_step):
    """Shared driver: layout, dtype, directions and outputs; ``make_step(d, ...)`` builds one
    direction's step."""
    dtype = x.dtype
    cdt = np.float32 if dtype == np.float16 else dtype
    layout = ctx.attr("layout", 0) if ctx.version >= 14 else 0
    if layout:
        x = x.transpose(1, 0, 2)
        h0 = None if h0 is None else h0.transpose(1, 0, 2)
        c0 = None if c0 is None else c0.transpose(1, 0, 2)
    x, w, r = x.astype(cdt, copy=False), w.astype(cdt, copy=False), r.astype(cdt, copy=False)
    seq, batch = x.shape[:2]
    nd, hidden = w.shape[0], r.shape[-1]
    g = w.shape[1]
    b = np.zeros((nd, 2 * g), cdt) if b is None else b.astype(cdt, copy=False)
    lens = None if lens is None else lens.astype(np.int64)
    if lens is not None and lens.size and (lens.min() < 0 or lens.max() > seq):
        raise ctx.error(f"sequence_lens {lens.tolist()} must lie in [0, {seq}]")
    acts = _activations(ctx, nd)
    reverse = [ctx.attr("direction", "forward") == "reverse", True][:nd]
    ys, hs, cs = [], [], []
    for d in range(nd):
        xp = (x.reshape(-1, x.shape[2]) @ w[d].T).reshape(seq, batch, g) + b[d, :g]
        h = np.zeros((batch, hidden), cdt) if h0 is None else h0[d].astype(cdt)
        state = (h,)
        if ctx.op_type == "LSTM":
            state += (np.zeros((batch, hidden), cdt) if c0 is None else c0[d].astype(cdt),)
        pd = None if p is None else p[d].astype(cdt, copy=False)
        xp, step = make_step(ctx, xp, r[d], b[d, g:], pd, acts[d], _clip(ctx))
        y, state = _scan(xp, lens, reverse[d], step, state)
        ys.append(y)
        hs.append(state[0])
        cs.append(state[-1])
    y = np.stack(ys, axis=1)                                      # [T, nd, B, H]
    yh, yc = np.stack(hs), np.stack(cs)                           # [nd, B, H]
    if layout:
        y, yh, yc = y.transpose(2, 0, 1, 3), yh.transpose(1, 0, 2), yc.transpose(1, 0, 2)
    outs = tuple(np.ascontiguousarray(o).astype(dtype, copy=False) for o in (y, yh, yc))
    return outs[:max(ctx.n_outputs, 1)]


# --- the cells ---------------------------------------------------------------------------------

def _rnn_step(ctx, xp, r, rb, p, acts, clip):
    (f,) = acts
    rt = r.T
    return xp + rb, lambda xt, s: (f(clip(xt + s[0] @ rt)),)


def _gru_step(ctx, xp, r, rb, p, acts, clip):
    f, g = acts
    hid = r.shape[-1]
    lbr = ctx.attr("linear_before_reset", 0)
    rt = r.T                                                      # [H, 3H]
    if lbr:
        xp = xp + np.concatenate([rb[:2 * hid], np.zeros_like(rb[2 * hid:])])
        rbh = rb[2 * hid:]

        def step(xt, s):
            h = s[0]
            gh = h @ rt
            zr = f(clip(xt[:, :2 * hid] + gh[:, :2 * hid]))
            z, rr = zr[:, :hid], zr[:, hid:]
            hh = g(clip(xt[:, 2 * hid:] + rr * (gh[:, 2 * hid:] + rbh)))
            return ((1 - z) * hh + z * h,)
    else:
        xp = xp + rb
        rzr, rh = rt[:, :2 * hid], rt[:, 2 * hid:]

        def step(xt, s):
            h = s[0]
            zr = f(clip(xt[:, :2 * hid] + h @ rzr))
            z, rr = zr[:, :hid], zr[:, hid:]
            hh = g(clip(xt[:, 2 * hid:] + (rr * h) @ rh))
            return ((1 - z) * hh + z * h,)
    return xp, step


def _lstm_step(ctx, xp, r, rb, p, acts, clip):
    f, g, hact = acts
    hid = r.shape[-1]
    rt = r.T                                                      # [H, 4H] gates i, o, f, c
    coupled = bool(ctx.attr("input_forget", 0))
    pi, po, pf = (None, None, None) if p is None else (p[:hid], p[hid:2 * hid], p[2 * hid:])

    def step(xt, s):
        h, c = s
        gates = xt + h @ rt
        i, o, fg, cc = (gates[:, k * hid:(k + 1) * hid] for k in range(4))
        if pi is not None:
            i, fg = i + pi * c, fg + pf * c
        i = f(clip(i))
        fg = 1 - i if coupled else f(clip(fg))
        c_new = fg * c + i * g(clip(cc))
        if po is not None:
            o = o + po * c_new
        return f(clip(o)) * hact(c_new), c_new
    return xp + rb, step


# --- registrations -----------------------------------------------------------------------------

@register("RNN", versions=VERSIONS, infer=_rnn_infer)
def rnn(ctx, x, w, r, b=None, lens=None, h0=None):
    # x [T,B,I] (layout 1: [B,T,I]) -> Y [T,nd,B,H], Y_h [nd,B,H]
    return _run(ctx, x, w, r, b, lens, h0, None, None, _rnn_step)


@register("GRU", versions=VERSIONS, infer=_rnn_infer)
def gru(ctx, x, w, r, b=None, lens=None, h0=None):
    # x [T,B,I] (layout 1: [B,T,I]) -> Y [T,nd,B,H], Y_h [nd,B,H]
    return _run(ctx, x, w, r, b, lens, h0, None, None, _gru_step)


@register("LSTM", versions=VERSIONS, infer=_rnn_infer)
def lstm(ctx, x, w, r, b=None, lens=None, h0=None, c0=None, p=None):
    # x [T,B,I] (layout 1: [B,T,I]) -> Y [T,nd,B,H], Y_h [nd,B,H], Y_c [nd,B,H]
    return _run(ctx, x, w, r, b, lens, h0, c0, p, _lstm_step)
