"""Linear algebra: MatMul, Gemm, Einsum."""
from __future__ import annotations

import functools
import string

import numpy as np

from .grad_ops import sum_to_shape
from .registry import ET_DOMAIN, OpContext, TensorType, gradient, planned, register
from .rules import constant, shape_error
from .tensor import shape_of

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


def _blas_out(out: np.ndarray | None, dtype: np.dtype, shape: tuple[int, ...]
              ) -> np.ndarray | None:
    """The planned output as a C-contiguous ``shape`` view NumPy's BLAS can write into, or None
    (then the product goes to a fresh array: the same BLAS call, so the same bits)."""
    if out is None or out.dtype != dtype or not out.flags.c_contiguous or out.size != \
            int(np.prod(shape, dtype=np.int64)):
        return None
    return out.reshape(shape)


def matmul_arrays(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """a @ b in a's element type; [..., M, K] @ [K, N] runs as one [(...M), K] @ [K, N] GEMM.
    ``out``: where to write it when it fits (a's element type, C-contiguous)."""
    dtype = a.dtype
    a, b = _compute(a), _compute(b)
    if b.ndim == 2 and a.ndim > 2 and a.flags.c_contiguous and a.size:
        a2 = a.reshape(-1, a.shape[-1])
        dest = _blas_out(out, a.dtype, (a2.shape[0], b.shape[-1])) if dtype == a.dtype else None
        y = np.matmul(a2, b, out=dest)
        if dest is not None:
            return out
        return y.reshape(a.shape[:-1] + b.shape[-1:]).astype(dtype, copy=False)
    if out is not None and a.ndim >= 2 and b.ndim >= 2 and dtype == a.dtype:
        shape = np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1])
        dest = _blas_out(out, a.dtype, shape)
        if dest is not None:
            np.matmul(a, b, out=dest)
            return out
    return np.asarray(np.matmul(a, b)).astype(dtype, copy=False)


@register("MatMul", versions=(1, 9, 13), infer=_matmul_infer)
def matmul(ctx, a, b):  # a [..., M, K] @ b [..., K, N] -> [..., M, N] (1-D operands squeezed)
    return matmul_arrays(a, b, planned(ctx))


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
    a, b = a.T if ctx.attr("transA", 0) else a, b.T if ctx.attr("transB", 0) else b
    dest = _blas_out(planned(ctx), a.dtype, (a.shape[0], b.shape[1])) \
        if dtype == a.dtype and dtype.kind == "f" else None
    y = np.dot(a, b, out=dest)  # written in place below: the same bits as a fresh array's
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


# --- gradients ---------------------------------------------------------------------------------
# The gradient of each operand reads dy, the *other* operands and only the shape of its own
# (Shape(x) folds while planning): training keeps an operand only when another one needs its
# gradient (dA keeps B, dB keeps A, dC keeps nothing).

def _dims(ctx, t: TensorType) -> tuple[int, ...]:
    return tuple(int(d) for d in np.asarray(constant(ctx, t, "shape")).reshape(-1))


def _to_shape_infer(ctx, dy, other, shape):
    return [TensorType(dy.dtype, _dims(ctx, shape))]


def _pair_grads(op, g, node, dys, n_sides, **attrs):
    dxs: list[str | None] = [None] * len(node.inputs)
    for i in range(min(n_sides, len(node.inputs))):
        if node.inputs[i] and g.needs(node, i):
            other = node.inputs[1 - i] if i < 2 else ""
            dxs[i] = g.et(op, [dys[0], other, shape_of(g, node.inputs[i])], side=i, **attrs)
    return dxs


@gradient("MatMul")
def matmul_grad(g, node, dys):  # dA = dy @ B^T, dB = A^T @ dy, summed over broadcast batch dims
    return _pair_grads("MatMulGrad", g, node, dys, 2)


@register("MatMulGrad", versions=(1,), infer=_to_shape_infer, domain=ET_DOMAIN)
def matmul_grad_kernel(ctx, dy, other, shape):  # side 0: (dy, B, A's shape); 1: (dy, A, B's)
    side, shape, dtype = int(ctx.attr("side", 0)), tuple(int(d) for d in shape), dy.dtype
    dy, other = _compute(dy), _compute(other)
    a_vec = len(shape) == 1 if side == 0 else other.ndim == 1
    b_vec = other.ndim == 1 if side == 0 else len(shape) == 1
    if not (a_vec or b_vec) and dy.size and other.size and dy.flags.c_contiguous:
        # the same GEMMs whether planned or not (bit-identical results)
        out = _blas_out(planned(ctx), dy.dtype, shape) if dtype == dy.dtype else None
        g = None
        if side == 0 and other.ndim == 2 and len(shape) == dy.ndim:
            # [..., M, N] @ [K, N]^T: one [(...M), N] @ [N, K] GEMM
            g = np.matmul(dy.reshape(-1, dy.shape[-1]), other.T,
                          out=None if out is None else out.reshape(-1, shape[-1]))
        elif side == 1 and len(shape) == 2 and other.ndim >= 2 and other.flags.c_contiguous:
            # [..., M, K]^T @ [..., M, N] summed over the batch: one [K, (...M)] @ [(...M), N]
            g = np.matmul(other.reshape(-1, other.shape[-1]).T, dy.reshape(-1, dy.shape[-1]),
                          out=out)
        elif dy.ndim == len(shape) == other.ndim and other.shape[:-2] == shape[:-2] \
                == dy.shape[:-2]:  # the same batch dimensions everywhere: nothing to sum
            pair = (dy, np.swapaxes(other, -1, -2)) if side == 0 else \
                (np.swapaxes(other, -1, -2), dy)
            g = np.matmul(*pair, out=out)
        if g is not None:
            return out if out is not None else g.reshape(shape).astype(dtype, copy=False)
    if b_vec:  # 1-D operands: promoted as in the forward, the dims put back in dy
        dy = dy[..., None]
    if a_vec:
        dy = dy[..., None, :]
    if side == 0:
        full = (1,) + shape if a_vec else shape
        g = np.matmul(dy, np.swapaxes(other[:, None] if b_vec else other, -1, -2))
    else:
        full = shape + (1,) if b_vec else shape
        a = other[None, :] if a_vec else other
        if len(full) == 2 and a.ndim > 2:  # [..., M, K] @ [K, N]: one GEMM over the batch
            g = a.reshape(-1, a.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])
        else:
            g = np.matmul(np.swapaxes(a, -1, -2), dy)
    return sum_to_shape(g, full).reshape(shape).astype(dtype, copy=False)


@gradient("Gemm")
def gemm_grad(g, node, dys):  # dA = alpha dy B'^T (transposed back), dC = beta * sum_to(dy)
    return _pair_grads("GemmGrad", g, node, dys, 3, **node.attrs)


@register("GemmGrad", versions=(1,), infer=_to_shape_infer, domain=ET_DOMAIN)
def gemm_grad_kernel(ctx, dy, other, shape):  # side 0: (dy, B, A's shape); 1: (dy, A, B's);
    side, shape, dtype = int(ctx.attr("side", 0)), tuple(int(d) for d in shape), dy.dtype
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)  # 2: (dy, -, C's shape)
    d = _compute(dy)
    if side == 2:
        g, scale = sum_to_shape(d, shape), float(ctx.attr("beta", 1.0))
    else:
        o, scale = _compute(other), float(ctx.attr("alpha", 1.0))
        dest = _blas_out(planned(ctx), d.dtype, shape) if d.dtype == dtype else None
        if side == 0:  # dA' = dy B'^T, with B' = B^T under transB; dA = dA'^T under transA
            bp = o.T if tb else o
            g = np.dot(bp, d.T, out=dest) if ta else np.dot(d, bp.T, out=dest)
        else:  # dB' = A'^T dy; dB = dB'^T under transB
            ap = o.T if ta else o
            g = np.dot(d.T, ap, out=dest) if tb else np.dot(ap.T, d, out=dest)
        if scale != 1.0:
            g *= g.dtype.type(scale)  # in place: the same bits as g * scale
            scale = 1.0
    if scale != 1.0:
        g = g * g.dtype.type(scale)
    return np.asarray(g).reshape(shape).astype(dtype, copy=False)


@gradient("Einsum")
def einsum_grad(g, node, dys):  # d x_i = einsum(dy and the other operands -> x_i's term)
    n = len(node.inputs)
    want = [i for i in range(n) if g.needs(node, i)]
    shape_only = [k for k in range(n) if all(i == k for i in want)]  # read by no other gradient
    ins = [dys[0]] + [shape_of(g, x) if k in shape_only else x for k, x in enumerate(node.inputs)]
    extra = {"shape_only": shape_only} if shape_only else {}  # (an ONNX list attr is not empty)
    outs = g.et("EinsumGrad", ins, len(want), equation=node.attrs.get("equation"), wrt=want,
                **extra)
    dxs: list[str | None] = [None] * n
    for i, o in zip(want, [outs] if isinstance(outs, str) else outs):
        dxs[i] = o
    return dxs


def _einsum_grad_shapes(ctx, ins) -> list[tuple[int, ...]]:
    only = set(ctx.attr("shape_only", []))
    return [_dims(ctx, t) if k in only else tuple(t.shape) for k, t in enumerate(ins)]


def _einsum_grad_infer(ctx, dy, *ins):
    shapes = _einsum_grad_shapes(ctx, ins)
    return [TensorType(dy.dtype, shapes[i]) for i in ctx.attr("wrt")]


def _explicit_terms(ctx, terms, out, shapes):
    """Terms with '...' spelt as letters (right-aligned, as it broadcasts); each label's size."""
    free = [c for c in string.ascii_letters if c not in "".join(terms) + out]
    n_ell = [len(s) - (len(t) - (ELLIPSIS in t)) for t, s in zip(terms, shapes)]
    width = max(n_ell, default=0)
    if width > len(free):
        raise ctx.error("too many labels to differentiate this equation")
    ell = "".join(free[:width])
    ts = [t.replace(ELLIPSIS, ell[width - n:]) for t, n in zip(terms, n_ell)]
    sizes: dict[str, int] = {}
    for t, s in zip(ts, shapes):
        for c, d in zip(t, s):
            if sizes.get(c, 1) == 1:
                sizes[c] = d
    return ts, out.replace(ELLIPSIS, ell), sizes


@register("EinsumGrad", versions=(1,), infer=_einsum_grad_infer, domain=ET_DOMAIN)
def einsum_grad_kernel(ctx, dy, *xs):  # dy, the operands (their shapes where shape_only) -> dxs
    terms, out = parse_einsum(ctx.attr("equation"), len(xs))
    shapes = _einsum_grad_shapes(ctx, [TensorType.of(x) for x in xs])
    ts, out, sizes = _explicit_terms(ctx, terms, out, shapes)

    def kept(k):  # axes that are not size 1 broadcast against a larger size (those just sum)
        return [p for p, c in enumerate(ts[k]) if not (shapes[k][p] == 1 and sizes[c] != 1)]

    grads = []
    for i in ctx.attr("wrt"):
        sub, ops = [out], [_compute(dy)]
        for k, x in enumerate(xs):
            if k != i:
                keep = kept(k)
                sub.append("".join(ts[k][p] for p in keep))
                ops.append(_compute(x).reshape([shapes[k][p] for p in keep]))
        labels = [ts[i][p] for p in kept(i)]
        uniq = list(dict.fromkeys(labels))
        seen = set("".join(sub))
        r = np.einsum(",".join(sub) + "->" + "".join(c for c in uniq if c in seen), *ops,
                      optimize=True)
        # labels of x_i alone were summed in the forward: dy broadcasts along them
        r = np.broadcast_to(np.reshape(r, [sizes[c] if c in seen else 1 for c in uniq]),
                            [sizes[c] for c in uniq])
        if len(uniq) < len(labels):  # a repeated label takes a diagonal: write dy back on it
            dx = np.zeros([sizes[c] for c in labels], dtype=r.dtype)
            strides = [sum(dx.strides[p] for p, c in enumerate(labels) if c == u) for u in uniq]
            np.lib.stride_tricks.as_strided(dx, r.shape, strides, writeable=True)[...] = r
            r = dx
        grads.append(np.ascontiguousarray(r).reshape(shapes[i]).astype(dy.dtype, copy=False))
    return tuple(grads)
