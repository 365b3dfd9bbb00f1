"""Linear algebra: MatMul, Gemm, Einsum."""
from __future__ import annotations

import functools

import numpy as np

from .registry import OpContext, TensorType, register
from .rules import shape_error

F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)


def _same_dtype(ctx: OpContext, *types: TensorType | None) -> np.dtype:
    dtypes = {np.dtype(t.dtype) for t in types if t is not None}
    if len(dtypes) != 1:
        raise shape_error(ctx, "inputs must share one element type", *types)
    return dtypes.pop()


def _compute(x: np.ndarray) -> np.ndarray:
    """float16 is multiplied in float32 (BLAS, and a wider accumulator); others as they are."""
    return x.astype(F32) if x.dtype == F16 else x


# --- MatMul: numpy matmul semantics (1-D operands promoted then squeezed, batch broadcast) ------

def _matmul_infer(ctx: OpContext, a: TensorType, b: TensorType) -> list[TensorType]:
    dtype = _same_dtype(ctx, a, b)
    if a.rank == 0 or b.rank == 0:
        raise shape_error(ctx, "MatMul operands must have rank >= 1", a, b)
    sa = a.shape if a.rank >= 2 else (1,) + a.shape
    sb = b.shape if b.rank >= 2 else b.shape + (1,)
    if sa[-1] != sb[-2]:
        raise shape_error(ctx, f"inner dimensions differ ({sa[-1]} vs {sb[-2]})", a, b)
    try:
        batch = tuple(int(d) for d in np.broadcast_shapes(sa[:-2], sb[:-2]))
    except ValueError:
        raise shape_error(ctx, "batch dimensions do not broadcast together", a, b) from None
    out = batch + ((sa[-2],) if a.rank >= 2 else ()) + ((sb[-1],) if b.rank >= 2 else ())
    return [TensorType(dtype, out)]


def matmul_arrays(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b in a's element type; [..., M, K] @ [K, N] runs as one [(...M), K] @ [K, N] GEMM."""
    dtype = a.dtype
    a, b = _compute(a), _compute(b)
    if b.ndim == 2 and a.ndim > 2 and a.flags.c_contiguous:
        y = np.matmul(a.reshape(-1, a.shape[-1]), b).reshape(a.shape[:-1] + b.shape[-1:])
    else:
        y = np.matmul(a, b)
    return np.asarray(y).astype(dtype, copy=False)


@register("MatMul", versions=(1, 9, 13), infer=_matmul_infer)
def matmul(ctx, a, b):  # a [..., M, K] @ b [..., K, N] -> [..., M, N] (1-D operands squeezed)
    return matmul_arrays(a, b)


# --- Gemm: Y = alpha * A' @ B' + beta * C, C broadcast unidirectionally to [M, N] --------------

def _gemm_infer(ctx: OpContext, a: TensorType, b: TensorType, c: TensorType | None = None
                ) -> list[TensorType]:
    dtype = _same_dtype(ctx, a, b, c)
    if a.rank != 2 or b.rank != 2:
        raise shape_error(ctx, "A and B must be 2-D", a, b, c)
    m, ka = a.shape[::-1] if ctx.attr("transA", 0) else a.shape
    kb, n = b.shape[::-1] if ctx.attr("transB", 0) else b.shape
    if ka != kb:
        raise shape_error(ctx, f"inner dimensions differ ({ka} vs {kb}) after transA/transB",
                          a, b, c)
    if c is not None:
        exact = ctx.version < 7 and not ctx.attr("broadcast", 0)
        fits = c.shape == (m, n) if exact else (
            c.rank <= 2 and all(d in (1, want) for d, want in zip(c.shape[::-1], (n, m))))
        if not fits:
            raise shape_error(ctx, f"C does not broadcast to the output shape [{m}, {n}]",
                              a, b, c)
    return [TensorType(dtype, (m, n))]


@register("Gemm", versions=(1, 6, 7, 9, 11, 13), infer=_gemm_infer)
def gemm(ctx, a, b, c=None):  # A [M, K] (or [K, M]), B [K, N] (or [N, K]), C -> [M, N]
    dtype = a.dtype
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    a, b = _compute(a), _compute(b)
    y = np.dot(a.T if ctx.attr("transA", 0) else a, b.T if ctx.attr("transB", 0) else b)
    if y.dtype.kind != "f" and (alpha != int(alpha) or (c is not None and beta != int(beta))):
        y = y.astype(np.float64)  # integer Gemm with fractional scales: scale exactly, then cast
    if alpha != 1.0:
        y *= y.dtype.type(alpha)
    if c is not None and beta != 0.0:
        c = c.astype(y.dtype, copy=False)
        y += c if beta == 1.0 else c * y.dtype.type(beta)
    return y.astype(dtype, copy=False)


# --- Einsum ------------------------------------------------------------------------------------

ELLIPSIS = "."  # one token standing for '...' in a parsed term


@functools.lru_cache(maxsize=256)
def parse_einsum(equation: str, n_inputs: int) -> tuple[tuple[str, ...], str]:
    """Input terms and the explicit output term; '...' becomes the single token '.'.

    The implicit form (no '->') outputs '...' (if any) then the letters appearing exactly once,
    in ASCII order. Raises ValueError for a malformed equation.
    """
    eq = equation.replace(" ", "")
    if eq.count("->") > 1:
        raise ValueError("more than one '->'")
    lhs, arrow, rhs = eq.partition("->")
    raw = lhs.split(",")
    if len(raw) != n_inputs:
        raise ValueError(f"{len(raw)} input terms for {n_inputs} inputs")

    def term(t: str, what: str) -> str:
        if t.count("...") > 1:
            raise ValueError(f"{what} {t!r} has more than one '...'")
        s = t.replace("...", ELLIPSIS)
        bad = [ch for ch in s if ch != ELLIPSIS and not (ch.isascii() and ch.isalpha())]
        if bad:
            raise ValueError(f"{what} {t!r} has invalid character {bad[0]!r}")
        return s

    terms = tuple(term(t, "input term") for t in raw)
    letters = "".join(terms).replace(ELLIPSIS, "")
    has_ell = any(ELLIPSIS in t for t in terms)
    if arrow:
        out = term(rhs, "output term")
        for ch in out.replace(ELLIPSIS, ""):
            if ch not in letters:
                raise ValueError(f"output label {ch!r} appears in no input term")
            if out.count(ch) > 1:
                raise ValueError(f"output label {ch!r} repeats")
    else:
        once = sorted(ch for ch in set(letters) if letters.count(ch) == 1)
        out = (ELLIPSIS if has_ell else "") + "".join(once)
    return terms, out


def _einsum_parse(ctx: OpContext) -> tuple[tuple[str, ...], str]:
    equation = ctx.attr("equation")
    if not isinstance(equation, str):
        raise ctx.error("attribute 'equation' is required")
    try:
        return parse_einsum(equation, ctx.n_inputs)
    except ValueError as e:
        raise ctx.error(f"bad equation {equation!r}: {e}") from None


def _einsum_infer(ctx: OpContext, *ins: TensorType) -> list[TensorType]:
    dtype = _same_dtype(ctx, *ins)
    terms, out = _einsum_parse(ctx)
    dims: dict[str, int] = {}
    ell_shapes = []
    for i, (t, x) in enumerate(zip(terms, ins)):
        n_letters = len(t) - (ELLIPSIS in t)
        n_ell = x.rank - n_letters
        if n_ell < 0 or (n_ell and ELLIPSIS not in t):
            raise shape_error(ctx, f"input {i} has rank {x.rank} but its term {t!r} labels "
                                   f"{n_letters} dimensions", *ins)
        pos = t.find(ELLIPSIS)
        shape = list(x.shape)
        if pos >= 0:
            ell_shapes.append(tuple(shape[pos:pos + n_ell]))
            del shape[pos:pos + n_ell]
        for ch, d in zip(t.replace(ELLIPSIS, ""), shape):
            if dims.setdefault(ch, d) != d:
                raise shape_error(ctx, f"label {ch!r} has sizes {dims[ch]} and {d}", *ins)
    try:
        ell = tuple(int(d) for d in np.broadcast_shapes(*ell_shapes)) if ell_shapes else ()
    except ValueError:
        raise shape_error(ctx, "the '...' dimensions do not broadcast together", *ins) from None
    shape: list[int] = []
    for ch in out:
        shape.extend(ell if ch == ELLIPSIS else (dims[ch],))
    return [TensorType(dtype, tuple(shape))]


@register("Einsum", versions=(12, 28), infer=_einsum_infer)
def einsum(ctx, *xs):  # terms of the equation -> output term (shape from _einsum_infer)
    terms, out = _einsum_parse(ctx)
    summed = any(ELLIPSIS in t for t in terms) and ELLIPSIS not in out
    np_out = (ELLIPSIS if summed else "") + out
    eq = ",".join(terms) + "->" + np_out
    y = np.einsum(eq.replace(ELLIPSIS, "..."), *(_compute(x) for x in xs), optimize=True)
    y = np.asarray(y)
    if summed:  # '...' on the inputs but not the output: those dimensions are summed
        y = np.add.reduce(y, axis=tuple(range(y.ndim - len(out))), dtype=y.dtype)
    return np.asarray(y).astype(xs[0].dtype, copy=False)
