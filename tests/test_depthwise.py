"""The depthwise kernels (ops/_depthwise.py) against a float64 tap-loop reference: both layouts
(channels-last and flat rows), strides (phases of dX), dilations, big pads, channel multipliers,
1-D to 3-D, and block budgets small enough to split images into row slabs."""
import itertools

import numpy as np
import pytest

from edgetrain.ops import _depthwise as D
from edgetrain.ops import _window as W


def _win(in_shape, kernel, strides, dilations, pads):
    nd = len(kernel)
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    out = tuple((i + pads[a] + pads[a + nd] - sp) // s + 1
                for a, (i, sp, s) in enumerate(zip(in_shape, spans, strides)))
    return W.Window(tuple(in_shape), tuple(kernel), tuple(strides), tuple(dilations),
                    tuple(pads[:nd]), tuple(pads[nd:]), out)


def _reference(x, w, dy, win):
    """float64 y, dx, dw by one strided slice per tap of the padded input."""
    n, c = x.shape[:2]
    m = w.shape[0] // c
    nd = win.ndim
    size = tuple(max(r, b + i) for r, b, i in zip(win.reach, win.pads_begin, win.in_shape))
    xp = np.zeros((n, c) + size)
    inner = tuple(slice(b, b + i) for b, i in zip(win.pads_begin, win.in_shape))
    xp[(slice(None), slice(None)) + inner] = x
    wr = w.reshape((c, m) + win.kernel).astype(np.float64)
    dyr = dy.reshape((n, c, m) + win.out).astype(np.float64)
    y = np.zeros((n, c, m) + win.out)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(wr)
    for t in itertools.product(*(range(k) for k in win.kernel)):
        sl = W.tap_slices(win, t)
        wt = wr[(slice(None), slice(None)) + t].reshape((1, c, m) + (1,) * nd)
        xs = xp[sl][:, :, None]
        y += wt * xs
        dxp[sl] += (wt * dyr).sum(axis=2)
        dw[(slice(None), slice(None)) + t] = (dyr * xs).sum(axis=(0,) + tuple(range(3, 3 + nd)))
    return (y.reshape((n, c * m) + win.out), dxp[(slice(None), slice(None)) + inner],
            dw.reshape(w.shape))


CASES = [  # (N, C, M, in, kernel, strides, dilations, pads)
    (2, 5, 1, (64, 66), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),     # flat rows
    (2, 5, 1, (9, 12), (3, 3), (1, 1), (2, 1), (2, 0, 1, 3)),      # flat, dilated, uneven pads
    (1, 3, 1, (7, 10), (2, 3), (1, 1), (1, 2), (4, 4, 0, 0)),      # flat, pad > span
    (2, 4, 1, (9, 8), (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),       # strided: phases
    (2, 3, 2, (10, 9), (3, 3), (2, 3), (1, 1), (1, 0, 2, 1)),      # multiplier, strides 2 x 3
    (1, 4, 1, (11, 9), (3, 2), (3, 2), (2, 3), (2, 1, 0, 2)),      # strides and dilations mixed
    (2, 3, 1, (5, 5), (3, 3), (4, 4), (1, 1), (0, 0, 0, 0)),       # some inputs reached by no tap
    (2, 100, 1, (9, 10), (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),    # channels-last (many channels)
    (2, 4, 1, (20, 18), (3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),     # flat rows, stride phases
    (1, 3, 1, (30, 20), (3, 2), (3, 2), (2, 3), (2, 1, 0, 2)),     # flat, strides and dilations
    (2, 3, 1, (40, 40), (3, 3), (4, 4), (1, 1), (0, 0, 0, 0)),     # flat, inputs no tap reaches
    (2, 3, 2, (13,), (3,), (2,), (2,), (1, 2)),                    # 1-D
    (2, 3, 1, (13,), (3,), (1,), (1,), (1, 1)),                    # 1-D, stride 1
    (2, 100, 1, (9, 10), (3, 3), (2, 1), (1, 1), (1, 1, 1, 1)),    # stride 1 on the last axis
    (1, 2, 1, (5, 4, 6), (3, 2, 3), (1, 2, 1), (1, 1, 2), (1, 0, 2, 1, 1, 0)),  # 3-D
]


@pytest.mark.parametrize("budget", [1 << 20, 200])
@pytest.mark.parametrize("case", CASES)
def test_depthwise_kernels_match_float64_loops(case, budget):
    n, c, m, ins, k, s, d, pads = case
    win = _win(ins, k, s, d, pads)
    rng = np.random.default_rng(len(ins) * 100 + c)
    x = rng.standard_normal((n, c) + ins).astype(np.float32)
    w = rng.standard_normal((c * m, 1) + k).astype(np.float32)
    dy = rng.standard_normal((n, c * m) + win.out).astype(np.float32)
    y_ref, dx_ref, dw_ref = _reference(x, w, dy, win)
    y = D.forward(x, w, win, budget)
    dx = D.grad_x(dy, w, win, c, budget)
    dw = D.grad_w(x, dy, win, budget)
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref)):
        assert got.shape == want.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    out = np.full(y.shape, np.nan, np.float32)   # written in place: the same bits
    assert D.forward(x, w, win, budget, out) is not None
    np.testing.assert_array_equal(out, y)
    out = np.full(dx.shape, np.nan, np.float32)
    D.grad_x(dy, w, win, c, budget, out)
    np.testing.assert_array_equal(out, dx)


def test_depthwise_forward_bits_do_not_depend_on_the_batch():
    """The frozen prefix runs the forward on chunks of the batch: each image's output must be
    the same bits whatever the chunk and the block budget."""
    rng = np.random.default_rng(3)
    for c, ins in ((8, (12, 16)), (120, (6, 6))):
        win = _win(ins, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1))
        x = rng.standard_normal((5, c) + ins).astype(np.float32)
        w = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
        full = D.forward(x, w, win, 1 << 20)
        for i in range(5):
            np.testing.assert_array_equal(D.forward(x[i:i + 1], w, win, 1 << 20), full[i:i + 1])
            np.testing.assert_array_equal(D.forward(x[i:i + 1], w, win, 300), full[i:i + 1])
