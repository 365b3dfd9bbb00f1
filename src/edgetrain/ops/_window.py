"""Sliding-window geometry shared by Conv, ConvTranspose and the pooling ops.

A :class:`Window` fixes, for the spatial axes of an ``(N, C, *spatial)`` input: kernel size,
strides, dilations, the padding actually applied at the start of each axis, the number of
padded positions that count as "inside" (input + declared pads), and the output size.
Kernels then work on the input padded to exactly the extent the windows reach
(:func:`pad_input`), either one kernel tap at a time (:func:`tap_slices`, a strided slice per tap)
or through the im2col view (:func:`im2col_view`).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .registry import OpContext

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


@dataclass(frozen=True)
class Window:
    in_shape: tuple[int, ...]   # spatial input size
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]   # declared end padding (windows may reach past it in ceil mode)
    out: tuple[int, ...]        # spatial output size

    @property
    def ndim(self) -> int:
        return len(self.kernel)

    @property
    def spans(self) -> tuple[int, ...]:
        """Extent of one dilated window per axis."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations))

    @property
    def reach(self) -> tuple[int, ...]:
        """Padded length the windows touch per axis: (out - 1) * stride + span."""
        return tuple((o - 1) * s + sp for o, s, sp in zip(self.out, self.strides, self.spans))

    @property
    def n_taps(self) -> int:
        return math.prod(self.kernel)

    @property
    def trivial_padding(self) -> bool:
        return not any(self.pads_begin) and self.reach == self.in_shape


def int_list(ctx: OpContext, name: str, n: int, default: int) -> tuple[int, ...]:
    """An n-long integer attribute (strides, dilations...), checked."""
    v = ctx.attr(name)
    if v is None or len(v) == 0:
        return (default,) * n
    v = tuple(int(a) for a in v)
    if len(v) != n:
        raise ctx.error(f"attribute {name}={list(v)} needs {n} values, one per spatial axis")
    return v


def auto_pad(ctx: OpContext) -> str:
    mode = ctx.attr("auto_pad", "NOTSET") or "NOTSET"
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode not in AUTO_PADS:
        raise ctx.error(f"auto_pad={mode!r} is not one of {', '.join(AUTO_PADS)}")
    return mode


def explicit_pads(ctx: OpContext, n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    pads = int_list(ctx, "pads", 2 * n, 0)
    if any(p < 0 for p in pads):
        raise ctx.error(f"pads={list(pads)} must not be negative")
    return pads[:n], pads[n:]


def same_split(mode: str, total: int) -> tuple[int, int]:
    """SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the start."""
    small = total // 2
    return (small, total - small) if mode == "SAME_UPPER" else (total - small, small)


def window(ctx: OpContext, in_shape: Sequence[int], kernel: Sequence[int], *,
           ceil_mode: bool = False, dilations: bool = True) -> Window:
    """Geometry of a Conv/pool node from its attributes (strides, dilations, pads, auto_pad)."""
    n = len(kernel)
    in_shape, kernel = tuple(int(d) for d in in_shape), tuple(int(k) for k in kernel)
    strides = int_list(ctx, "strides", n, 1)
    dil = int_list(ctx, "dilations", n, 1) if dilations else (1,) * n
    if any(k < 1 for k in kernel):
        raise ctx.error(f"kernel shape {list(kernel)} must be positive")
    if any(s < 1 for s in strides) or any(d < 1 for d in dil):
        raise ctx.error(f"strides {list(strides)} and dilations {list(dil)} must be positive")
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    mode = auto_pad(ctx)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-i // s) for i, s in zip(in_shape, strides)]
        begin, end = zip(*(same_split(mode, max(0, (o - 1) * s + sp - i))
                           for o, s, sp, i in zip(out, strides, spans, in_shape)))
    else:
        if mode == "VALID":
            begin, end = (0,) * n, (0,) * n
        else:
            begin, end = explicit_pads(ctx, n)
        out = []
        for i, b, e, s, sp in zip(in_shape, begin, end, strides, spans):
            room = i + b + e - sp
            if mode == "NOTSET" and ceil_mode:
                o = -(-room // s) + 1
                if (o - 1) * s >= i + b:  # the last window would start in the end padding
                    o -= 1
            else:
                o = room // s + 1
            out.append(o)
    return Window(in_shape, kernel, strides, dil, tuple(begin), tuple(end), tuple(out))


def pad_input(x: np.ndarray, win: Window, value=0) -> np.ndarray:
    """x (N, C, *in) -> (N, C, *reach): padded with ``value`` where the windows reach, cut after."""
    if win.trivial_padding:
        return x
    out = np.full(x.shape[:2] + win.reach, value, dtype=x.dtype)
    dst, src = [slice(None)] * 2, [slice(None)] * 2
    for i, b, r in zip(win.in_shape, win.pads_begin, win.reach):
        n = max(0, min(i, r - b))
        dst.append(slice(b, b + n))
        src.append(slice(0, n))
    out[tuple(dst)] = x[tuple(src)]
    return out


def taps(win: Window) -> Iterator[tuple[int, ...]]:
    return itertools.product(*(range(k) for k in win.kernel))


def tap_slices(win: Window, tap: Sequence[int]) -> tuple[slice, ...]:
    """Index of the padded input (all of N, C) that kernel tap ``tap`` sees for every output."""
    return (slice(None), slice(None)) + tuple(
        slice(t * d, t * d + (o - 1) * s + 1, s)
        for t, d, o, s in zip(tap, win.dilations, win.out, win.strides))


def im2col_view(xp: np.ndarray, win: Window) -> np.ndarray:
    """xp (N, C, *reach) -> read-only view (N, C, *kernel, *out) of every window's taps."""
    st = xp.strides
    sp = st[2:]
    shape = xp.shape[:2] + win.kernel + win.out
    strides = st[:2] + tuple(d * s for d, s in zip(win.dilations, sp)) \
        + tuple(k * s for k, s in zip(win.strides, sp))
    return as_strided(xp, shape, strides, writeable=False)


def inside_counts(win: Window, include_pad: bool) -> np.ndarray:
    """(*out) float64: per output, how many taps fall on the input (or on input+declared pads)."""
    total = np.ones((), dtype=np.float64)
    for ax, (i, b, e, k, s, d, o) in enumerate(zip(
            win.in_shape, win.pads_begin, win.pads_end, win.kernel, win.strides,
            win.dilations, win.out)):
        pos = np.arange(o)[:, None] * s + np.arange(k)[None, :] * d  # padded coordinates
        ok = pos < i + b + e if include_pad else (pos >= b) & (pos < b + i)
        cnt = ok.sum(axis=1).astype(np.float64)
        total = total[..., None] * cnt.reshape((1,) * ax + (o,))
    return total


def tap_flat_index(win: Window, tap: Sequence[int], column_major: bool = False) -> np.ndarray:
    """(*out) int64: flat spatial index into the unpadded input of tap ``tap`` for each output."""
    n = win.ndim
    sizes = win.in_shape
    if column_major:
        mult = [math.prod(sizes[:a]) for a in range(n)]
    else:
        mult = [math.prod(sizes[a + 1:]) for a in range(n)]
    idx = np.zeros((), dtype=np.int64)
    for ax in range(n):
        pos = np.arange(win.out[ax], dtype=np.int64) * win.strides[ax] \
            + tap[ax] * win.dilations[ax] - win.pads_begin[ax]
        idx = idx[..., None] + (pos * mult[ax]).reshape((1,) * ax + (-1,))
    return idx


def place(a: np.ndarray, offsets: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """a (N, C, *s) -> (N, C, *size) with out[p] = a[p - offset] where that lies in a, else 0.

    A positive offset pads at the start, a negative one crops; the end is padded or cut to size.
    Backward kernels use it to crop a padded gradient buffer back to the input.
    """
    size = tuple(int(s) for s in size)
    if not any(offsets) and size == a.shape[2:]:
        return a
    out = np.zeros(a.shape[:2] + size, dtype=a.dtype)
    dst, src = [slice(None)] * 2, [slice(None)] * 2
    for o, n_out, n_in in zip(offsets, size, a.shape[2:]):
        lo, hi = max(0, o), min(n_out, o + n_in)
        if hi <= lo:
            return out
        dst.append(slice(lo, hi))
        src.append(slice(lo - o, hi - o))
    out[tuple(dst)] = a[tuple(src)]
    return out
