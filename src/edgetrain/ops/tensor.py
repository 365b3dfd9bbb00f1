"""Tensor layout ops: Flatten, Reshape, Transpose, Squeeze, Unsqueeze, Concat, Split, Slice.

Each op computes its output layout with one helper shared by the shape rule (from types, reading
shape-like inputs with ``rules.constant``) and the kernel (from the arrays), so the two agree.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .registry import OpContext, TensorType, gradient, lookup, register
from .rules import constant, normalize_axes, normalize_axis, shape_error

def _ints(v) -> list[int]:
    return [int(x) for x in np.asarray(v).reshape(-1)]


# --- Flatten -----------------------------------------------------------------------------------

def _flatten_shape(ctx: OpContext, shape: Sequence[int]) -> tuple[int, int]:
    axis, rank = int(ctx.attr("axis", 1)), len(shape)
    if not -rank <= axis <= rank:  # [-r, r]: a negative axis counts from the end (not r + 1)
        raise ctx.error(f"axis {axis} is out of range for a tensor of rank {rank}")
    axis = axis + rank if axis < 0 else axis
    return (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))


def _flatten_infer(ctx, x):
    return [TensorType(x.dtype, _flatten_shape(ctx, x.shape))]


@register("Flatten", versions=(1, 9, 11, 13, 21, 23, 24, 25), infer=_flatten_infer)
def flatten(ctx, x):  # x: (d0..dn) -> (d0*..*d(axis-1), d(axis)*..*dn)
    return x.reshape(_flatten_shape(ctx, x.shape))


# --- Reshape -----------------------------------------------------------------------------------

def _reshape_shape(ctx: OpContext, in_shape: Sequence[int], target) -> tuple[int, ...]:
    """The output shape: 0 copies the input dim (unless allowzero), -1 is inferred."""
    target = _ints(target)
    allowzero = ctx.version >= 14 and bool(ctx.attr("allowzero", 0))
    out, infer_at = [], None
    for i, d in enumerate(target):
        if d == -1:
            if infer_at is not None:
                raise ctx.error(f"shape {target} has more than one -1")
            infer_at = i
            out.append(1)
        elif d == 0 and not allowzero:
            if i >= len(in_shape):
                raise ctx.error(f"shape {target} copies dim {i} (0) but the input has rank "
                                f"{len(in_shape)}")
            out.append(int(in_shape[i]))
        elif d < 0:
            raise ctx.error(f"shape {target} has a negative dim {d}")
        else:
            out.append(d)
    total = int(np.prod(in_shape, dtype=np.int64))
    known = int(np.prod(out, dtype=np.int64))
    if infer_at is not None:
        if known == 0 or total % known:
            raise ctx.error(f"cannot reshape a tensor of shape {list(in_shape)} ({total} elements) "
                            f"to {target}")
        out[infer_at] = total // known
    elif known != total:
        raise ctx.error(f"cannot reshape a tensor of shape {list(in_shape)} ({total} elements) "
                        f"to {target} ({known} elements)")
    return tuple(out)


def _reshape_target(ctx, shape_in):
    return ctx.attr("shape", []) if ctx.version < 5 else shape_in


def _reshape_infer(ctx, x, shape=None):
    target = _reshape_target(ctx, constant(ctx, shape, "shape") if shape is not None else None)
    if target is None:
        raise ctx.error("the 'shape' input is missing")
    return [TensorType(x.dtype, _reshape_shape(ctx, x.shape, target))]


@register("Reshape", versions=(1, 5, 13, 14, 19, 21, 23, 24, 25), infer=_reshape_infer)
def reshape(ctx, x, shape=None):  # x: any -> shape (0 copies, -1 inferred)
    return x.reshape(_reshape_shape(ctx, x.shape, _reshape_target(ctx, shape)))


# --- Transpose ---------------------------------------------------------------------------------

def _perm(ctx: OpContext, rank: int) -> tuple[int, ...]:
    perm = ctx.attr("perm")
    if perm is None:
        return tuple(range(rank - 1, -1, -1))
    perm = [int(p) for p in perm]
    if len(perm) != rank:
        raise ctx.error(f"perm {perm} has {len(perm)} entries for a tensor of rank {rank}")
    return normalize_axes(ctx, perm, rank)


def _transpose_infer(ctx, x):
    return [TensorType(x.dtype, tuple(x.shape[p] for p in _perm(ctx, x.rank)))]


@register("Transpose", versions=(1, 13, 21, 23, 24, 25), infer=_transpose_infer)
def transpose(ctx, x):  # x: (d0..dn) -> (d[perm[0]]..d[perm[n]])
    return np.transpose(x, _perm(ctx, x.ndim))


# --- Squeeze / Unsqueeze (axes attribute before 13, input from 13) -----------------------------

def _axes(ctx: OpContext, axes_in) -> list[int] | None:
    if ctx.version >= 13:
        return None if axes_in is None else _ints(axes_in)
    a = ctx.attr("axes")
    return None if a is None else [int(v) for v in a]


def _squeeze_shape(ctx: OpContext, shape: Sequence[int], axes) -> tuple[int, ...]:
    if not axes:  # absent (or empty, as onnxruntime reads it): every size-1 axis
        return tuple(d for d in shape if d != 1)
    axes = normalize_axes(ctx, axes, len(shape))
    for a in axes:
        if shape[a] != 1:
            raise ctx.error(f"cannot squeeze axis {a} of shape {list(shape)}: its size is not 1")
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _unsqueeze_shape(ctx: OpContext, shape: Sequence[int], axes) -> tuple[int, ...]:
    if axes is None:
        raise ctx.error("Unsqueeze needs axes")
    rank = len(shape) + len(axes)
    axes = set(normalize_axes(ctx, axes, rank))
    it = iter(shape)
    return tuple(1 if i in axes else next(it) for i in range(rank))


def _axes_rule(fn):
    def rule(ctx, x, axes=None):
        a = _axes(ctx, None if axes is None else constant(ctx, axes, "axes"))
        return [TensorType(x.dtype, fn(ctx, x.shape, a))]

    return rule


@register("Squeeze", versions=(1, 11, 13, 21, 23, 24, 25), infer=_axes_rule(_squeeze_shape))
def squeeze(ctx, x, axes=None):  # x: any -> x without the listed size-1 axes
    return x.reshape(_squeeze_shape(ctx, x.shape, _axes(ctx, axes)))


@register("Unsqueeze", versions=(1, 11, 13, 21, 23, 24, 25), infer=_axes_rule(_unsqueeze_shape))
def unsqueeze(ctx, x, axes=None):  # x: any -> x with size-1 axes inserted at axes (of the output)
    return x.reshape(_unsqueeze_shape(ctx, x.shape, _axes(ctx, axes)))


# --- Concat ------------------------------------------------------------------------------------

def _concat_axis(ctx: OpContext, types: Sequence[TensorType]) -> int:
    if not types:
        raise ctx.error("Concat needs at least one input")
    rank = types[0].rank
    axis = normalize_axis(ctx, int(ctx.attr("axis", 1 if ctx.version < 4 else 0)), rank)
    for t in types[1:]:
        if t.rank != rank or any(a != b for i, (a, b) in enumerate(zip(t.shape, types[0].shape))
                                 if i != axis):
            raise shape_error(ctx, f"inputs must have the same shape except along axis {axis}",
                              *types)
    return axis


def _concat_infer(ctx, *xs):
    xs = [t for t in xs if t is not None]
    axis = _concat_axis(ctx, xs)
    shape = list(xs[0].shape)
    shape[axis] = sum(t.shape[axis] for t in xs)
    return [TensorType(xs[0].dtype, tuple(shape))]


@register("Concat", versions=(1, 4, 11, 13), infer=_concat_infer)
def concat(ctx, *xs):  # xs: shapes equal but for axis -> sum along axis
    xs = [x for x in xs if x is not None]
    axis = _concat_axis(ctx, [TensorType(x.dtype, x.shape) for x in xs])
    return np.concatenate(xs, axis=axis).astype(xs[0].dtype, copy=False)


# --- Split -------------------------------------------------------------------------------------

def _split_sizes(ctx: OpContext, shape: Sequence[int], split) -> tuple[int, list[int]]:
    axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), len(shape))
    dim = shape[axis]
    if ctx.version < 13 and split is None:
        split = ctx.attr("split")
    num = ctx.attr("num_outputs") if ctx.version >= 18 else None
    if split is not None and num is not None:
        raise ctx.error("give either the 'split' input or the 'num_outputs' attribute, not both")
    if split is not None:
        sizes = _ints(split)
        if len(sizes) != ctx.n_outputs or sum(sizes) != dim or min(sizes, default=0) < 0:
            raise ctx.error(f"split {sizes} does not divide axis {axis} of size {dim} into "
                            f"{ctx.n_outputs} outputs")
        return axis, sizes
    n = int(num) if num is not None else ctx.n_outputs
    if n != ctx.n_outputs or n < 1:
        raise ctx.error(f"num_outputs is {n} but the node has {ctx.n_outputs} outputs")
    chunk = -(-dim // n)  # num_outputs: every chunk ceil(dim/n), the last one smaller
    last = dim - chunk * (n - 1)
    if num is None and dim % n:
        raise ctx.error(f"axis {axis} of size {dim} does not split evenly into {n} outputs")
    if last < 0:
        raise ctx.error(f"cannot split axis {axis} of size {dim} into {n} chunks of {chunk}")
    return axis, [chunk] * (n - 1) + [last]


def _split_input(ctx, split):
    return split if ctx.version >= 13 or ctx.version == 1 else None


def _split_infer(ctx, x, split=None):
    sp = None if split is None else constant(ctx, split, "split")
    axis, sizes = _split_sizes(ctx, x.shape, _split_input(ctx, sp))
    return [TensorType(x.dtype, x.shape[:axis] + (s,) + x.shape[axis + 1:]) for s in sizes]


@register("Split", versions=(1, 2, 11, 13, 18), infer=_split_infer)
def split(ctx, x, split=None):  # x -> n_outputs pieces along axis (sizes from split/num_outputs)
    axis, sizes = _split_sizes(ctx, x.shape, _split_input(ctx, split))
    bounds = np.cumsum(sizes)[:-1]
    return tuple(np.split(x, bounds, axis=axis))


# --- Slice -------------------------------------------------------------------------------------

def _slices(ctx: OpContext, shape: Sequence[int], starts, ends, axes, steps
            ) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """Index tuple and output shape, with ONNX clamping (negative steps included)."""
    starts, ends = _ints(starts), _ints(ends)
    rank = len(shape)
    if len(starts) != len(ends):
        raise ctx.error(f"starts {starts} and ends {ends} differ in length")
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    if len(axes) != len(starts) or len(steps) != len(starts):
        raise ctx.error(f"starts, ends, axes {axes} and steps {steps} differ in length")
    axes = normalize_axes(ctx, axes, rank)
    index = [slice(None)] * rank
    out = list(shape)
    for a, s, e, st in zip(axes, starts, ends, steps):
        dim = shape[a]
        if st == 0:
            raise ctx.error("slice steps must not be 0")
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
        out[a] = len(range(s, e, st))
        index[a] = slice(s, e if e >= 0 else None, st)
    return tuple(index), tuple(out)


def _slice_args(ctx, starts, ends, axes, steps):
    if ctx.version < 10:
        return ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes"), None
    return starts, ends, axes, steps


def _slice_infer(ctx, x, starts=None, ends=None, axes=None, steps=None):
    vals = [None if t is None else constant(ctx, t, n)
            for t, n in ((starts, "starts"), (ends, "ends"), (axes, "axes"), (steps, "steps"))]
    args = _slice_args(ctx, *vals)
    if args[0] is None or args[1] is None:
        raise ctx.error("Slice needs starts and ends")
    return [TensorType(x.dtype, _slices(ctx, x.shape, *args)[1])]


@register("Slice", versions=(1, 10, 11, 13), infer=_slice_infer)
def slice_(ctx, x, starts=None, ends=None, axes=None, steps=None):  # x -> x[starts:ends:steps]
    index, _ = _slices(ctx, x.shape, *_slice_args(ctx, starts, ends, axes, steps))
    return x[index]


# --- gradients ---------------------------------------------------------------------------------
# Layout ops move dy back into x's layout. None reads x itself: its shape comes from a Shape node,
# which folds while planning, so training keeps nothing of the forward for these ops. Their
# backward kernels (ReshapeTo, ConcatGrad, SplitGrad, SliceGrad) are in tensor_grad.py.

def forward_version(g, node) -> int:
    """Schema version of ``node``'s op in the graph being differentiated: given (fwd_version) to
    backward ops that reuse the forward's helpers, which read attrs and inputs by version."""
    return lookup(node.op_type, node.domain, g.graph.opset(node.domain), node.name)[1]


def forward_ctx(ctx: OpContext, op_type: str) -> OpContext:
    """A context for the forward op's helpers, made from a backward op's (same attrs)."""
    f = ctx.extra.get("forward")
    if f is None:
        attrs = {k: v for k, v in ctx.attrs.items() if k not in ("fwd_version", "wrt")}
        f = ctx.extra["forward"] = OpContext(op_type, "", ctx.name, ctx.opset,
                                             int(ctx.attr("fwd_version")), attrs, ctx.n_inputs,
                                             ctx.n_outputs)
    return f


def shape_of(g, x: str) -> str:
    """Shape(x): a constant while planning, so the backward does not keep x alive."""
    return g.op("Shape", [x])


def _reshape_grad(g, node, dys):  # Flatten, Reshape, Squeeze, Unsqueeze: dx = dy in x's shape
    dx = g.et("ReshapeTo", [dys[0], shape_of(g, node.inputs[0])]) if g.needs(node, 0) else None
    return [dx] + [None] * (len(node.inputs) - 1)


for _op in ("Flatten", "Reshape", "Squeeze", "Unsqueeze"):
    gradient(_op)(_reshape_grad)


@gradient("Transpose")
def transpose_grad(g, node, dys):  # dx = dy transposed by the inverse permutation
    perm = node.attrs.get("perm")
    if perm is None:  # reversed axes: their own inverse
        return [g.op("Transpose", [dys[0]])]
    inv = np.argsort([int(p) % len(perm) for p in perm])
    return [g.op("Transpose", [dys[0]], perm=[int(i) for i in inv])]


def _outs(names) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


@gradient("Concat")
def concat_grad(g, node, dys):  # dx_i = dy's slab along axis; reads dy (and the inputs' shapes)
    want = [i for i, x in enumerate(node.inputs) if x and g.needs(node, i)]
    shapes = [shape_of(g, x) if x else "" for x in node.inputs]
    outs = _outs(g.et("ConcatGrad", [dys[0]] + shapes, len(want), wrt=want,
                      fwd_version=forward_version(g, node), **node.attrs))
    dxs: list[str | None] = [None] * len(node.inputs)
    for i, o in zip(want, outs):
        dxs[i] = o
    return dxs


@gradient("Split")
def split_grad(g, node, dys):  # dx = the dys joined along axis, zeros for pieces without one
    if not g.needs(node, 0):
        return [None] * len(node.inputs)
    shapes = []
    for d, y in zip(dys, node.outputs):
        if d is None and not y:
            from ..autodiff import GradientError
            raise GradientError(f"Split node {node.name!r}: an unnamed output's size is unknown")
        shapes.append("" if d is not None else shape_of(g, y))
    dx = g.et("SplitGrad", [d or "" for d in dys] + shapes, axis=int(node.attrs.get("axis", 0)))
    return [dx] + [None] * (len(node.inputs) - 1)


@gradient("Slice")
def slice_grad(g, node, dys):  # dx = zeros of x's shape, dy written where the slice read
    if not g.needs(node, 0):
        return [None] * len(node.inputs)
    ins = [dys[0], shape_of(g, node.inputs[0])] + list(node.inputs[1:])
    dx = g.et("SliceGrad", ins, fwd_version=forward_version(g, node), **node.attrs)
    return [dx] + [None] * (len(node.inputs) - 1)
