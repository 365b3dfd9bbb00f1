"""Depthwise convolution (group == C_in, one input channel per group) and its gradients.

NumPy has no depthwise kernel, and in the (N, C, *spatial) layout every kernel tap is a strided
slice whose innermost run is one output row: a 3x3 or 7x7 map makes NumPy loop over runs of 3 to
7 numbers. So the kernels work channels-last on blocks of images (or of output rows, for one big
image): a block is copied once, padded and transposed, into scratch of shape (n, *reach, C); an
as_strided view (n, *out, *kernel, C) of it holds every window; and one einsum contracts the
taps with the weights, C innermost (a long, contiguous SIMD loop), accumulating each output over
the taps in tap order. The block's result is transposed back into the (N, C*mult, *out) output.

* forward: y[n, o, c, m] = sum_t w[c, m, t] * xp[n, o * s + t * d, c]
* dX: the correlation of dy (padded by span - 1 - pad) with the flipped kernel, summed over the
  multiplier: the forward's code. With strides, once per phase (the inputs i*s + phi), each
  with only the taps that reach it.
* dW: dw[c, m, t] = sum over images and outputs of dy[n, o, c, m] * xp[n, o * s + t * d, c]: one
  einsum per block, reading each window from the view.
The scratch is bounded by ``budget`` bytes per block (at least one output row of one image).

With few channels, 2-D maps go the other way round (see _flat): flat rows, one per (image,
channel), split into their stride phases, where each tap is one long contiguous run.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _window as W

_SP, _TAP = "pqr", "ijk"  # einsum letters: output axes, kernel axes (up to 3-D)


def _row_blocks(n: int, rows: int, row_bytes: int, budget: int):
    """(n0, n1, h0, h1) blocks: whole images while they fit, else slabs of output rows."""
    img = rows * row_bytes
    if img <= budget:
        step = max(1, budget // max(img, 1))
        return [(i, min(n, i + step), 0, rows) for i in range(0, n, step)]
    step = max(1, budget // max(row_bytes, 1))
    return [(i, i + 1, h, min(rows, h + step)) for i in range(n) for h in range(0, rows, step)]


def _gather(x: np.ndarray, n0: int, n1: int, lo: tuple[int, ...], size: tuple[int, ...],
            begin: tuple[int, ...], buf: np.ndarray) -> np.ndarray:
    """Channels-last padded block (in the flat scratch buf, or in buf itself when shaped):
    b[:, *p, :] = x[n0:n1, :, *(lo + p - begin)] where that lies in x, else 0 (p over size)."""
    shape = (n1 - n0,) + size + (x.shape[1],)
    b = buf if buf.ndim > 1 else buf[:math.prod(shape)].reshape(shape)
    dst, src = [slice(None)], [slice(n0, n1), slice(None)]
    for ax, (l, s, bg, i) in enumerate(zip(lo, size, begin, x.shape[2:])):
        a0 = min(max(0, l - bg), i)                 # first input index the block reads
        a1 = max(a0, min(i, l + s - bg))
        d0 = a0 + bg - l
        pre = (slice(None),) * (ax + 1)
        b[pre + (slice(0, d0),)] = 0                # the frame: padding on each side
        b[pre + (slice(d0 + a1 - a0, None),)] = 0
        dst.append(slice(d0, d0 + a1 - a0))
        src.append(slice(a0, a1))
    nd = len(size)
    b[tuple(dst)] = x[tuple(src)].transpose((0,) + tuple(range(2, 2 + nd)) + (1,))
    return b


def _windows(b: np.ndarray, out: tuple[int, ...], kernel, strides, dilations,
             merge: bool = False):
    """View (n, *out, *kernel, C, *rest) of every window of the block b (n, *size, C, *rest).

    ``merge`` (last stride 1, nothing after C): the last output axis and C as one axis of
    out[-1] * C values, contiguous in b, so that the loops run over whole output rows."""
    nd = len(out)
    st = b.strides
    sp = st[1:1 + nd]
    shape = (b.shape[0],) + tuple(out) + tuple(kernel) + b.shape[1 + nd:]
    strides = (st[0],) + tuple(s * a for s, a in zip(strides, sp)) \
        + tuple(d * a for d, a in zip(dilations, sp)) + st[1 + nd:]
    if merge:
        shape = shape[:nd] + shape[1 + nd:-1] + (out[-1] * b.shape[-1],)
        strides = strides[:nd] + strides[1 + nd:]
    return as_strided(b, shape, strides, writeable=False)


def _correlate(src: np.ndarray, wk: np.ndarray, out_shape: tuple[int, ...], kernel, strides,
               dilations, begin, budget: int, sum_mult: bool, y: np.ndarray) -> np.ndarray:
    """y (N, C*M or C, *out) = sum over taps (and M when sum_mult) of wk * windows of src.

    src (N, C*M or C, *in) is read as padded by ``begin`` (and zeros past its end); wk is
    (*kernel, C, M)."""
    n = src.shape[0]
    nd = len(out_shape)
    c, m = wk.shape[-2:]
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    rest = tuple(out_shape[1:])
    row_in = math.prod((o - 1) * s + sp for o, s, sp in
                       zip(rest, strides[1:], spans[1:])) * src.shape[1]
    cy = y.shape[1]
    row_out = math.prod(rest) * cy
    item = src.dtype.itemsize
    blocks = _row_blocks(n, out_shape[0], (row_in * strides[0] + row_out) * item, budget)
    nb = max(b[1] - b[0] for b in blocks)
    hb = max(b[3] - b[2] for b in blocks)
    size0 = (hb - 1) * strides[0] + spans[0]
    size = (size0,) + tuple((o - 1) * s + sp for o, s, sp in
                            zip(rest, strides[1:], spans[1:]))
    buf = np.empty(nb * math.prod(size) * src.shape[1], dtype=src.dtype)
    ybuf = np.empty((nb, hb) + rest + (cy,), dtype=y.dtype)
    sp_, tp = _SP[:nd], _TAP[:nd]
    merge = m == 1 and strides[-1] == 1 and nd > 1  # (1-D: the row is the blocked axis)
    if merge:  # one loop per output row and tap: the weights repeated along the row
        wk = np.ascontiguousarray(np.broadcast_to(
            wk.reshape(wk.shape[:nd] + (1, c)), wk.shape[:nd] + (out_shape[-1], c)))
        wk = wk.reshape(wk.shape[:nd] + (-1,))
        spec = f"{tp}x,n{sp_[:-1]}{tp}x->n{sp_[:-1]}x"
    elif sum_mult:
        spec = f"{tp}cm,n{sp_}{tp}cm->n{sp_}c"
    else:
        spec = f"{tp}cm,n{sp_}{tp}c->n{sp_}cm"
    perm = (0, nd + 1) + tuple(range(1, nd + 1))
    for n0, n1, h0, h1 in blocks:
        sz = ((h1 - h0 - 1) * strides[0] + spans[0],) + size[1:]
        bb = _gather(src, n0, n1, (h0 * strides[0],) + (0,) * (nd - 1), sz, begin, buf)
        yb = ybuf[:n1 - n0, :h1 - h0]
        if merge:
            v = _windows(bb, (h1 - h0,) + rest, kernel, strides, dilations, merge=True)
            np.einsum(spec, wk, v, out=yb.reshape(yb.shape[:nd] + (-1,)))
        else:
            if sum_mult:
                bb = bb.reshape(bb.shape[:-1] + (c, m))
            v = _windows(bb, (h1 - h0,) + rest, kernel, strides, dilations)
            np.einsum(spec, wk, v,
                      out=yb.reshape(yb.shape[:-1] + ((c,) if sum_mult else (c, m))))
        y[n0:n1, :, h0:h1] = yb.transpose(perm)
    return y


def _weights(w: np.ndarray, c: int, ndim: int) -> np.ndarray:
    """w (C*M, 1, *k) -> (*k, C, M) contiguous."""
    m = w.shape[0] // c
    wk = w.reshape((c, m) + w.shape[2:])
    return np.ascontiguousarray(wk.transpose(tuple(range(2, 2 + ndim)) + (0, 1)))


# When the flat rows win (measured on MobileNetV2's shapes, float32, 2 cores):
FLAT_MIN_PLANE = 3000  # stride 1, forward and dX: output planes at least this big
FLAT_MAX_C = 96        # stride 1, dW: fewer channels than this ...
FLAT_DW_PLANE = 256    # ... or output planes at least this big
FLAT_STRIDED_C = 128   # strided: fewer channels than this ...
FLAT_MIN_STRIDED = 64  # ... and output planes at least this big


def _flat(c: int, m: int, win: W.Window, grad_w: bool = False) -> bool:
    """Whether a 2-D single-multiplier depthwise conv runs on flat rows (one per image and
    channel) rather than channels-last. Channels-last loops run over C (over whole output rows
    when the last stride is 1), flat ones over a whole output plane, but pay a multiply and an
    add per tap (the einsum one fused step): flat rows win on big planes and with few channels.
    Fixed by the node's geometry, not the batch: every batch size takes the same path."""
    if win.ndim != 2 or m != 1 or win.out[1] < 8:
        return False
    plane = win.out[0] * win.out[1]
    if any(s > 1 for s in win.strides):
        return c < FLAT_STRIDED_C and plane >= FLAT_MIN_STRIDED
    if grad_w:
        return c < FLAT_MAX_C or plane >= FLAT_DW_PLANE
    return plane >= FLAT_MIN_PLANE


class _Flat:
    """Flat rows of a 2-D correlation. A padded row is split into its stride phases, planes
    (s0 * s1 of them) of shape (hq, wq) with plane (a, b)[u, v] = padded[a + s0 u, b + s1 v];
    tap (i, j) reads plane ((i d0) % s0, (j d1) % s1) from (i d0 // s0, j d1 // s1) on, so on the
    output grid (out0, wq) flattened (``length``), every tap is one contiguous run of the plane
    at ``offs[tap]``. The grid's last wq - out1 columns are dropped (or zero in dW)."""

    def __init__(self, out_shape, kernel, strides, dilations):
        (o0, o1), (s0, s1) = out_shape, strides
        taps = [(i * dilations[0], j * dilations[1])
                for i in range(kernel[0]) for j in range(kernel[1])]
        self.hq = o0 + max(a // s0 for a, _ in taps)
        self.wq = o1 + max(b // s1 for _, b in taps)
        self.strides, self.out = (s0, s1), (o0, o1)
        self.size = (s0 * self.hq, s1 * self.wq)          # padded extent read
        self.plane = self.hq * self.wq
        self.total = s0 * s1 * self.plane + self.wq       # + a spare row for the last runs
        self.length = o0 * self.wq
        self.offs = [((a % s0) * s1 + b % s1) * self.plane + (a // s0) * self.wq + b // s1
                     for a, b in taps]

    def fill(self, src_rows: np.ndarray, r0: int, r1: int, begin, buf: np.ndarray,
             flat: np.ndarray) -> np.ndarray:
        """Rows r0:r1 of src_rows (R, 1, *in), padded by begin, as (r1 - r0, total) planes."""
        k = r1 - r0
        f = flat[:k * self.total].reshape(k, self.total)
        f[:, -self.wq:] = 0
        s0, s1 = self.strides
        if s0 == s1 == 1:
            _gather(src_rows, r0, r1, (0, 0), self.size, begin,
                    f[:, :self.plane].reshape((k,) + self.size + (1,)))
            return f
        b = _gather(src_rows, r0, r1, (0, 0), self.size, begin, buf).reshape((k,) + self.size)
        planes = f[:, :-self.wq].reshape(k, s0, s1, self.hq, self.wq)
        for a in range(s0):
            for c in range(s1):
                planes[:, a, c] = b[:, a::s0, c::s1]
        return f

    def scratch(self, rows: int, dtype) -> tuple[np.ndarray, np.ndarray]:
        strided = self.strides != (1, 1)
        return (np.empty(rows * self.size[0] * self.size[1] if strided else 0, dtype=dtype),
                np.empty(rows * self.total, dtype=dtype))


def _flat_correlate(src: np.ndarray, wt: np.ndarray, geo: _Flat, begin, budget: int,
                    y_rows: np.ndarray) -> None:
    """y_rows (N*C, *out) = sum over taps, in tap order, of wt[c, tap] * the tap's run of the
    padded row of src (N, C, *in); wt is (C, taps)."""
    n, c = src.shape[:2]
    rows = n * c
    per_row = geo.total + geo.size[0] * geo.size[1] + 2 * geo.length
    step = max(1, budget // (per_row * src.dtype.itemsize))
    buf, flat = geo.scratch(min(rows, step), src.dtype)
    k = min(rows, step)
    ext, tmp = np.empty((k, geo.length), dtype=src.dtype), np.empty((k, geo.length), src.dtype)
    src_rows = src.reshape((rows, 1) + src.shape[2:])
    o0, o1 = geo.out
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        f = geo.fill(src_rows, r0, r1, begin, buf, flat)
        wr = wt[np.arange(r0, r1) % c]
        e, tp = ext[:r1 - r0], tmp[:r1 - r0]
        for t, off in enumerate(geo.offs):
            np.multiply(f[:, off:off + geo.length], wr[:, t:t + 1], out=tp if t else e)
            if t:
                e += tp
        y_rows[r0:r1] = e.reshape(r1 - r0, o0, geo.wq)[:, :, :o1]


def _flat_grad_w(x: np.ndarray, dy: np.ndarray, win: W.Window, budget: int) -> np.ndarray:
    """dW on flat rows: per row and tap, the dot product of dy (on the output grid, zeros in
    the dropped columns) with the tap's run of the padded input row; summed over images."""
    n, c = x.shape[:2]
    geo = _Flat(win.out, win.kernel, win.strides, win.dilations)
    rows = n * c
    per_row = geo.total + geo.size[0] * geo.size[1] + geo.length
    step = max(1, budget // (per_row * x.dtype.itemsize))
    k = min(rows, step)
    buf, flat = geo.scratch(k, x.dtype)
    dye = np.zeros((k, win.out[0], geo.wq), dtype=dy.dtype)
    per_tap = np.empty((rows, len(geo.offs)), dtype=dy.dtype)
    x_rows = x.reshape((rows, 1) + x.shape[2:])
    dy_rows = dy.reshape((rows,) + win.out)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        f = geo.fill(x_rows, r0, r1, win.pads_begin, buf, flat)
        d = dye[:r1 - r0]
        d[:, :, :win.out[1]] = dy_rows[r0:r1]
        d = d.reshape(r1 - r0, 1, geo.length)
        for t, off in enumerate(geo.offs):
            np.matmul(d, f[:, off:off + geo.length, None], out=per_tap[r0:r1, t, None, None])
    return per_tap.reshape(n, c, -1).sum(axis=0).reshape((c, 1) + win.kernel)


def forward(x: np.ndarray, w: np.ndarray, win: W.Window, budget: int,
            out: np.ndarray | None = None) -> np.ndarray:
    """x (N, C, *in), w (C*M, 1, *k) -> y (N, C*M, *out), into ``out`` when given."""
    n, c = x.shape[:2]
    shape = (n, w.shape[0]) + win.out
    y = np.empty(shape, dtype=x.dtype) if out is None else out.reshape(shape)
    if n == 0:
        return y
    if _flat(c, w.shape[0] // c, win):
        _flat_correlate(x, w.reshape(c, -1), _Flat(win.out, win.kernel, win.strides,
                                                   win.dilations),
                        win.pads_begin, budget, y.reshape((n * c,) + win.out))
        return y
    return _correlate(x, _weights(w, c, win.ndim), win.out, win.kernel, win.strides,
                      win.dilations, win.pads_begin, budget, False, y)


def _phases(s: int, d: int, k: int, pad: int, size: int) -> list:
    """One axis of a strided dX, split by phase: input i sits at padded P = i + pad = q*s + phi,
    and only the taps t with t*d = phi (mod s) reach it, from dy[q - t*d // s]. Each phase is a
    stride-1 correlation of dy with those taps reversed. Per phase with inputs:
    (taps reversed or None, dilation, begin padding of dy, first input, count)."""
    g = math.gcd(s, d)
    out = []
    for phi in range(s):
        q0, q1 = -(-(pad - phi) // s), (pad + size - 1 - phi) // s
        if q1 < q0:
            continue
        taps = [t for t in range(k) if (t * d) % s == phi]
        first = q0 * s + phi - pad
        if not taps:
            out.append((None, 1, 0, first, q1 - q0 + 1))
            continue
        dil = d // g
        begin = taps[0] * d // s + (len(taps) - 1) * dil - q0
        out.append((taps[::-1], dil, begin, first, q1 - q0 + 1))
    return out


def grad_x(dy: np.ndarray, w: np.ndarray, win: W.Window, c: int, budget: int,
           out: np.ndarray | None = None) -> np.ndarray:
    """dy (N, C*M, *out), w (C*M, 1, *k) -> dx (N, C, *in), into ``out`` when given: per phase
    of the strides, a correlation of dy with the flipped taps that reach it (one phase when the
    strides are 1)."""
    n, nd = dy.shape[0], win.ndim
    shape = (n, c) + win.in_shape
    dx = np.empty(shape, dtype=dy.dtype) if out is None else out.reshape(shape)
    if n == 0:
        return dx
    flat = _flat(c, dy.shape[1] // c, win)
    wk = w.reshape((c,) + win.kernel) if flat else _weights(w, c, nd)
    dx_rows = dx.reshape((n * c,) + win.in_shape)
    axes = [_phases(s, d, k, p, i) for s, d, k, p, i in
            zip(win.strides, win.dilations, win.kernel, win.pads_begin, win.in_shape)]
    for combo in itertools.product(*axes):
        at = tuple(slice(f, f + (cnt - 1) * s + 1, s)
                   for (_, _, _, f, cnt), s in zip(combo, win.strides))
        view = dx_rows[(slice(None),) + at] if flat else dx[(slice(None), slice(None)) + at]
        if any(ph[0] is None for ph in combo):
            view[...] = 0
            continue
        counts, dils, begin = (tuple(ph[i] for ph in combo) for i in (4, 1, 2))
        taps = [ph[0] for ph in combo]
        if flat:
            sub = wk[np.ix_(np.arange(c), *taps)]
            _flat_correlate(dy, sub.reshape(c, -1), _Flat(counts, sub.shape[1:], (1, 1), dils),
                            begin, budget, view)
        else:
            sub = np.ascontiguousarray(wk[np.ix_(*taps)])
            _correlate(dy, sub, counts, sub.shape[:nd], (1,) * nd, dils, begin, budget, True,
                       view)
    return dx


def grad_w(x: np.ndarray, dy: np.ndarray, win: W.Window, budget: int) -> np.ndarray:
    """x (N, C, *in), dy (N, C*M, *out) -> dw (C*M, 1, *k)."""
    n, c = x.shape[:2]
    nd = win.ndim
    m = dy.shape[1] // c
    if n == 0:
        return np.zeros((c * m, 1) + win.kernel, dtype=dy.dtype)
    if _flat(c, m, win, grad_w=True):
        return _flat_grad_w(x, dy, win, budget)
    rest = win.out[1:]
    spans = win.spans
    row_in = math.prod((o - 1) * s + sp for o, s, sp in
                       zip(rest, win.strides[1:], spans[1:])) * c
    row_out = math.prod(rest) * c * m
    blocks = _row_blocks(n, win.out[0], (row_in * win.strides[0] + row_out) * x.dtype.itemsize,
                         budget)
    nb = max(b[1] - b[0] for b in blocks)
    hb = max(b[3] - b[2] for b in blocks)
    size = ((hb - 1) * win.strides[0] + spans[0],) + tuple(
        (o - 1) * s + sp for o, s, sp in zip(rest, win.strides[1:], spans[1:]))
    buf = np.empty(nb * math.prod(size) * c, dtype=x.dtype)
    dyt = np.empty((nb, hb) + rest + (c, m), dtype=dy.dtype)
    acc = np.zeros(win.kernel + (c, m), dtype=dy.dtype)
    part = np.empty_like(acc)
    sp_, tp = _SP[:nd], _TAP[:nd]
    spec = f"n{sp_}cm,n{sp_}{tp}c->{tp}cm"
    dyr = dy.reshape((n, c, m) + win.out)
    perm = (0,) + tuple(range(3, 3 + nd)) + (1, 2)
    for n0, n1, h0, h1 in blocks:
        sz = ((h1 - h0 - 1) * win.strides[0] + spans[0],) + size[1:]
        bb = _gather(x, n0, n1, (h0 * win.strides[0],) + (0,) * (nd - 1), sz, win.pads_begin,
                     buf)
        v = _windows(bb, (h1 - h0,) + rest, win.kernel, win.strides, win.dilations)
        d = dyt[:n1 - n0, :h1 - h0]
        d[...] = dyr[n0:n1, :, :, h0:h1].transpose(perm)
        np.einsum(spec, d, v, out=part)
        acc += part
    return acc.transpose((nd, nd + 1) + tuple(range(nd))).reshape((c * m, 1) + win.kernel)
