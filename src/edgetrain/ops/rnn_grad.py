"""Gradients of RNN, GRU and LSTM: one fused backward op per family (RNNGrad, GRUGrad, LSTMGrad,
domain ai.edgetrain) that recomputes the forward and runs backpropagation through time in NumPy.

Gradients go to X, W, R, B, initial_h, initial_c and P (none to sequence_lens), from any subset
of Y, Y_h, Y_c. The backward node reads ``[dY, dY_h, dY_c, X, W, R, B, sequence_lens, initial_h,
initial_c, P]`` ("" where absent) and gives one output per forward input, "" where no gradient is
needed (its ``need`` attribute: 0/1 flags per forward input). The forward's schema version goes
along as ``of_version`` (``layout`` exists from 14).

Time is walked in *step* order, as the forward's scan: step s of sequence b reads time
``order[s, b]`` (reverse with sequence_lens: ``L_b - 1 - s``, an involution, so gathering by the
same table maps step gradients back to time). Past a sequence's length a step keeps the state
and outputs zeros: the state gradient passes through unchanged and dY there is dropped; Y_h / Y_c
of an empty sequence are zeros (no gradient). ``clip`` acts on gate pre-activations: where it
clips, the gradient is zero. Each cell's forward records, per step, the inputs of its products
and its activations' derivatives; its backward accumulates dR, dRb (and dP) and gives the gate
gradients (to X, W and Wb through the input projection) and the previous state's gradients.
float16 is computed in float32, like the forward.
"""
from __future__ import annotations

import numpy as np

from .activation import forward_context
from .conv_grad import emit_grad
from .elementwise import sigmoid
from .registry import ET_DOMAIN, OpContext, TensorType, gradient, register
from .rnn import _ACTIVATIONS, _DEFAULTS, _num_dir, activation_specs

# --- activation derivatives, by name: f'(x, alpha, beta) of rnn._ACTIVATIONS ---------------------
# Saturating ones are written without cancellation (not 1 - tanh^2, nor s (1 - s)): deep in
# saturation those keep few correct digits, and BPTT multiplies them over the steps.

def _sech2(x):
    c = np.cosh(np.clip(x, -40, 40))  # beyond, sech^2 < 1e-34: no overflow (float32 too)
    return 1 / (c * c)


_DERIVATIVES = {
    "sigmoid": lambda x, a, b: sigmoid(x) * sigmoid(-x),
    "tanh": lambda x, a, b: _sech2(x),
    "relu": lambda x, a, b: (x > 0).astype(x.dtype),
    "affine": lambda x, a, b: np.full_like(x, a),
    "leakyrelu": lambda x, a, b: np.where(x >= 0, 1, a).astype(x.dtype),
    "thresholdedrelu": lambda x, a, b: (x > a).astype(x.dtype),
    "scaledtanh": lambda x, a, b: a * b * _sech2(b * x),
    "hardsigmoid": lambda x, a, b: np.where((a * x + b > 0) & (a * x + b < 1), a, 0
                                            ).astype(x.dtype),
    "elu": lambda x, a, b: np.where(x >= 0, 1, a * np.exp(np.minimum(x, 0))).astype(x.dtype),
    "softsign": lambda x, a, b: 1 / (1 + np.abs(x)) ** 2,
    "softplus": lambda x, a, b: sigmoid(x),
}


def _act_pairs(ctx: OpContext, nd: int):
    """Per direction, (f, f') callables of each activation function."""
    return [[(lambda x, fn=_ACTIVATIONS[n][0], a=a, b=b: fn(x, a, b),
              lambda x, fn=_DERIVATIVES[n], a=a, b=b: fn(x, a, b)) for n, a, b in specs]
            for specs in activation_specs(ctx, nd)]


# --- the rule ----------------------------------------------------------------------------------

def _recurrent_grad(g, node, dys):
    n_in = len(node.inputs)
    need = [g.needs(node, i) and i != 4 for i in range(n_in)]   # never to sequence_lens
    dys = list(dys) + [None] * (3 - len(dys))
    if not any(need) or all(d is None for d in dys[:3]):
        return [None] * n_in
    ctx = forward_context(g, node)
    for specs in activation_specs(ctx, _num_dir(ctx)):
        for name, _, _ in specs:
            if name not in _DERIVATIVES:
                raise ctx.error(f"cannot differentiate: activation {name!r} has no derivative "
                                f"(differentiable: {', '.join(sorted(_DERIVATIVES))})")
    inputs = [d or "" for d in dys[:3]] + list(node.inputs)
    return emit_grad(g, node.op_type + "Grad", inputs, need, of_version=ctx.version,
                     **node.attrs)


for _op in _DEFAULTS:
    gradient(_op)(_recurrent_grad)


def _grad_infer(ctx: OpContext, dy, dyh, dyc, *ins: TensorType | None):
    """One output per forward input, like it (an absent input: an empty placeholder)."""
    ref = next(t for t in (dy, dyh, dyc) if t is not None)
    return [TensorType(ref.dtype, (0,)) if t is None else TensorType(t.dtype, t.shape)
            for t in ins]


# --- the cells: forward(xt, state) -> (state, tape); backward(tape, dstate) -> (dxt, dstate) ---
# xt: a step's input projection X W^T + Wb [B, G]; R [G, H]; rb the recurrence bias [G].

def _act(pair, pre, clip):
    """f(clip(pre)) and its derivative in pre (zero where clipped)."""
    fn, dfn = pair
    if clip is None:
        return fn(pre), dfn(pre)
    cl = np.clip(pre, -clip, clip)
    return fn(cl), dfn(cl) * (np.abs(pre) <= clip)


class _Cell:
    def __init__(self, ctx, r, rb, p, acts, clip):
        self.r, self.rb, self.p, self.acts, self.clip = r, rb, p, acts, clip
        self.hid = r.shape[-1]
        self.dr, self.drb = np.zeros_like(r), np.zeros_like(rb)
        self.dp = None if p is None else np.zeros_like(p)
        self.lbr = bool(ctx.attr("linear_before_reset", 0))
        self.coupled = bool(ctx.attr("input_forget", 0))

    def _recur(self, dgr, h, dh):
        """Backward of h @ R^T + rb: accumulate dR, dRb; dh + dgr R."""
        self.dr += dgr.T @ h
        self.drb += dgr.sum(axis=0)
        return dh + dgr @ self.r


class _RNNCell(_Cell):
    # h' = f(xt + h R^T + rb)
    def forward(self, xt, s):
        h = s[0]
        y, d = _act(self.acts[0], xt + h @ self.r.T + self.rb, self.clip)
        return (y,), (h, d)

    def backward(self, tape, ds):
        h, d = tape
        da = ds[0] * d
        return da, (self._recur(da, h, 0),)


class _GRUCell(_Cell):
    # z, r = f(xt[zr] + h Rzr^T + rb[zr]); h' = (1 - z) n + z h, with
    # n = g(xt[n] + (r h) Rn^T + rb[n]) (linear_before_reset 0) or g(xt[n] + r (h Rn^T + rb[n]))
    def forward(self, xt, s):
        h, k = s[0], 2 * self.hid
        if self.lbr:
            gh = h @ self.r.T + self.rb
            zr, dzr = _act(self.acts[0], xt[:, :k] + gh[:, :k], self.clip)
            rr, ghn = zr[:, self.hid:], gh[:, k:]
            n, dn = _act(self.acts[1], xt[:, k:] + rr * ghn, self.clip)
        else:
            zr, dzr = _act(self.acts[0], xt[:, :k] + h @ self.r[:k].T + self.rb[:k], self.clip)
            rr = zr[:, self.hid:]
            ghn = rr * h                                          # what Rn multiplies
            n, dn = _act(self.acts[1], xt[:, k:] + ghn @ self.r[k:].T + self.rb[k:], self.clip)
        z = zr[:, :self.hid]
        return ((1 - z) * n + z * h,), (h, z, rr, ghn, n, dzr, dn)

    def backward(self, tape, ds):
        h, z, rr, ghn, n, dzr, dn = tape
        k = 2 * self.hid
        dnew = ds[0]
        dn_pre = dnew * (1 - z) * dn
        dh = dnew * z
        if self.lbr:
            dzr_pre = np.concatenate([dnew * (h - n), dn_pre * ghn], axis=1) * dzr
            dgh = np.concatenate([dzr_pre, dn_pre * rr], axis=1)
            dh = self._recur(dgh, h, dh)
        else:
            drh = dn_pre @ self.r[k:]                              # d(r h)
            dzr_pre = np.concatenate([dnew * (h - n), drh * h], axis=1) * dzr
            self.dr[k:] += dn_pre.T @ ghn
            self.drb[k:] += dn_pre.sum(axis=0)
            self.dr[:k] += dzr_pre.T @ h
            self.drb[:k] += dzr_pre.sum(axis=0)
            dh = dh + drh * rr + dzr_pre @ self.r[:k]
        return np.concatenate([dzr_pre, dn_pre], axis=1), (dh,)


class _LSTMCell(_Cell):
    # gates i, o, f, c = xt + h R^T + rb; peepholes add P[i] c, P[f] c, P[o] c';
    # c' = f c + i g(c~) (f = 1 - i with input_forget); h' = o h(c') (no clip on h(c'))
    def forward(self, xt, s):
        h, c = s
        hid, (fa, ga, ha) = self.hid, self.acts
        gates = xt + h @ self.r.T + self.rb
        i_, o_, f_, c_ = (gates[:, k * hid:(k + 1) * hid] for k in range(4))
        p = self.p
        if p is not None:
            i_, f_ = i_ + p[:hid] * c, f_ + p[2 * hid:] * c
        i, di = _act(fa, i_, self.clip)
        fg, dfg = (1 - i, None) if self.coupled else _act(fa, f_, self.clip)
        cc, dcc = _act(ga, c_, self.clip)
        c_new = fg * c + i * cc
        if p is not None:
            o_ = o_ + p[hid:2 * hid] * c_new
        o, do = _act(fa, o_, self.clip)
        hc, dhc = _act(ha, c_new, None)
        return (o * hc, c_new), (h, c, i, fg, cc, o, hc, c_new, di, dfg, dcc, do, dhc)

    def backward(self, tape, ds):
        h, c, i, fg, cc, o, hc, c_new, di, dfg, dcc, do, dhc = tape
        dh_new, dc_new = ds
        hid, p = self.hid, self.p
        do_pre = dh_new * hc * do
        dc = dc_new + dh_new * o * dhc
        if p is not None:
            dc = dc + do_pre * p[hid:2 * hid]
            self.dp[hid:2 * hid] += (do_pre * c_new).sum(axis=0)
        di_, df_ = dc * cc, dc * c
        dc_pre = dc * i * dcc
        dc_prev = dc * fg
        if self.coupled:
            di_pre, df_pre = (di_ - df_) * di, np.zeros_like(df_)
        else:
            di_pre, df_pre = di_ * di, df_ * dfg
        if p is not None:
            dc_prev = dc_prev + di_pre * p[:hid] + df_pre * p[2 * hid:]
            self.dp[:hid] += (di_pre * c).sum(axis=0)
            self.dp[2 * hid:] += (df_pre * c).sum(axis=0)
        dgates = np.concatenate([di_pre, do_pre, df_pre, dc_pre], axis=1)
        return dgates, (self._recur(dgates, h, 0), dc_prev)


_CELLS = {"RNN": _RNNCell, "GRU": _GRUCell, "LSTM": _LSTMCell}


# --- backpropagation through time --------------------------------------------------------------

def _bptt(cell, xp, state, lens, reverse, dy, dfinal):
    """One direction. xp [T, B, G] input projections by time, state: initial (h[, c]) [B, H],
    dy [T, B, H] or None, dfinal: gradients of the final states (or None) -> dxp [T, B, G] and
    the initial states' gradients."""
    seq, batch = xp.shape[:2]
    full = lens is None or bool(np.all(lens >= seq))
    s = np.arange(seq)[:, None]
    valid = np.ones((seq, batch), bool) if full else s < lens[None, :]
    if reverse:
        ends = np.full(batch, seq) if full else lens
        order = np.where(valid, ends[None, :] - 1 - s, s)
    else:
        order = np.broadcast_to(s, (seq, batch))
    cols = np.arange(batch)[None, :]
    xs = xp[order, cols]
    tapes = []
    for t in range(seq):                                          # forward, recording
        new, tape = cell.forward(xs[t], state)
        v = valid[t][:, None]
        state = new if full else tuple(np.where(v, n, o) for n, o in zip(new, state))
        tapes.append(tape)
    ds = [np.zeros_like(st) for st in state]
    if dfinal is not None:
        for k, d in enumerate(dfinal):
            if d is not None:
                ds[k] = d if full else np.where(lens[:, None] > 0, d, 0)
    dys = None if dy is None else dy[order, cols]
    dxs = np.zeros_like(xs)
    for t in range(seq - 1, -1, -1):                              # backward through time
        v = valid[t][:, None]
        if dys is not None:
            ds[0] = ds[0] + np.where(v, dys[t], 0)
        dstep = [np.where(v, d, 0) for d in ds]
        dxs[t], dprev = cell.backward(tapes[t], dstep)
        ds = [dp + np.where(v, 0, d) for dp, d in zip(dprev, ds)]
    return dxs[order, cols], ds


@register("RNNGrad", versions=(1,), infer=_grad_infer, domain=ET_DOMAIN)
@register("GRUGrad", versions=(1,), infer=_grad_infer, domain=ET_DOMAIN)
@register("LSTMGrad", versions=(1,), infer=_grad_infer, domain=ET_DOMAIN)
def recurrent_grad(ctx, dy, dyh, dyc, x, w, r, b=None, lens=None, h0=None, c0=None, p=None):
    # dY [T,nd,B,H], dY_h, dY_c [nd,B,H] (each may be absent; layout 1: batch first) and the
    # forward's inputs -> dX, dW, dR, dB, None (sequence_lens), dinitial_h, dinitial_c, dP
    op = ctx.op_type[:-len("Grad")]
    fctx = ctx.extra.get("forward")
    if fctx is None:
        v = int(ctx.attr("of_version"))
        fctx = ctx.extra["forward"] = OpContext(op, "", ctx.name, v, v, ctx.attrs, 8, 3)
    need = list(ctx.attr("need")) + [0] * 8
    dtypes = [None if a is None else a.dtype for a in (x, w, r, b, lens, h0, c0, p)]
    cdt = np.float32 if x.dtype == np.float16 else x.dtype
    layout = fctx.attr("layout", 0) if fctx.version >= 14 else 0
    tr = (lambda a: a) if not layout else (lambda a: None if a is None else a.transpose(1, 0, 2))
    x, h0, c0, dyh, dyc = tr(x), tr(h0), tr(c0), tr(dyh), tr(dyc)
    if dy is not None and layout:
        dy = dy.transpose(1, 2, 0, 3)                             # [B,T,nd,H] -> [T,nd,B,H]
    cast = lambda a: None if a is None else a.astype(cdt, copy=False)  # noqa: E731
    x, w, r, b, h0, c0, p, dy, dyh, dyc = map(cast, (x, w, r, b, h0, c0, p, dy, dyh, dyc))
    seq, batch = x.shape[:2]
    nd, hidden, gsz = w.shape[0], r.shape[-1], w.shape[1]
    b = np.zeros((nd, 2 * gsz), cdt) if b is None else b
    lens = None if lens is None else lens.astype(np.int64)
    clip = fctx.attr("clip")
    acts = _act_pairs(fctx, nd)
    reverse = [fctx.attr("direction", "forward") == "reverse", True][:nd]
    grads = {k: [] for k in ("x", "w", "r", "b", "h0", "c0", "p")}
    x2 = x.reshape(-1, x.shape[2])
    for d in range(nd):
        xp = (x2 @ w[d].T).reshape(seq, batch, gsz) + b[d, :gsz]
        state = (np.zeros((batch, hidden), cdt) if h0 is None else h0[d],)
        if op == "LSTM":
            state += (np.zeros((batch, hidden), cdt) if c0 is None else c0[d],)
        cell = _CELLS[op](fctx, r[d], b[d, gsz:], None if p is None else p[d], acts[d], clip)
        dfinal = (None if dyh is None else dyh[d], None if dyc is None else dyc[d])
        dxp, ds = _bptt(cell, xp, state, lens, reverse[d], None if dy is None else dy[:, d],
                        dfinal[:len(state)])
        dxp2 = dxp.reshape(-1, gsz)
        grads["x"].append(dxp2 @ w[d])
        grads["w"].append(dxp2.T @ x2)
        grads["r"].append(cell.dr)
        grads["b"].append(np.concatenate([dxp2.sum(axis=0), cell.drb]))
        grads["h0"].append(ds[0])
        grads["c0"].append(ds[-1])
        grads["p"].append(cell.dp)
    dx = sum(grads["x"]).reshape(x.shape)
    stack = {k: np.stack(grads[k]) if need[i] else None
             for i, k in ((1, "w"), (2, "r"), (3, "b"), (5, "h0"), (6, "c0"), (7, "p"))}
    outs = [tr(dx) if need[0] else None, stack["w"], stack["r"], stack["b"], None,
            tr(stack["h0"]), tr(stack["c0"]), stack["p"]]
    return tuple(None if o is None else np.ascontiguousarray(o).astype(t, copy=False)
                 for o, t in zip(outs, dtypes))
