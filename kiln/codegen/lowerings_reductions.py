"""The lowerings of reductions: sum, prod, amax/amin, argmax/argmin, max/min and prims.var,
each a :class:`~kiln.codegen.ir.Reduction` over the reduced dims of its input, materialized as
a :class:`~kiln.codegen.ir.ComputedBuffer` (the scheduler fuses producers into it and its
consumers after it). Sums accumulate floats in double (the C++ code refines that per loop
shape: cpp_reductions.py, cpp_columns.py); a reduction over size-1 dims only is the element
itself, a pointwise value.
"""

from __future__ import annotations

from typing import Any

import sympy
import torch
from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND as Promotion

from kiln.codegen import ir
from kiln.codegen.ir import Buffer, Index, Pointwise, Reduction, TensorIR, Value, ops
from kiln.codegen.lowering import GraphLowering, NoLowering, meta_of, register
from kiln.codegen.lowerings import _norm_dim, out_size, pointwise, scalar_operand, simple

aten = torch.ops.aten
prims = torch.ops.prims


def _acc_dtype(reduction_type: str, dtype: torch.dtype) -> torch.dtype:
    if reduction_type in ("sum", "prod", "m2"):
        if dtype.is_floating_point:
            return torch.float64  # more accurate than eager's cascade; as fast when
            #                       memory-bound (tests compare against eager's)
        return torch.int64
    return ir.compute_dtype(dtype)


def _reduce(ctx: GraphLowering, node: Any, x: TensorIR, dims: Any, keepdim: bool,
            reduction_type: str, meta: Any = None, src_dtype: torch.dtype | None = None
            ) -> Buffer:
    meta = meta if meta is not None else meta_of(node)
    ndim = x.ndim
    reduced = _reduced(x, dims)
    out_dtype = meta.dtype
    load = x.loader()
    src = src_dtype or x.dtype
    if all(x.size[d] == 1 for d in reduced):
        return _trivial_reduction(x, reduced, meta, reduction_type)
    if reduction_type in ("sum", "prod", "m2"):
        acc = _acc_dtype(reduction_type, out_dtype)
        # the values in the output's compute dtype; the kernel widens them to its accumulator
        cdt = ir.compute_dtype(out_dtype) if out_dtype.is_floating_point else acc
    else:
        acc = _acc_dtype(reduction_type, src)
        cdt = ir.compute_dtype(src)

    def inner(index: Index) -> Value:
        return ops.to_dtype(load(index), cdt)
    body = Reduction(out_dtype, list(x.size), reduced, reduction_type, inner, acc,
                     keepdim and ndim > 0 and meta.ndim == ndim)
    return ctx.reduction(body, meta)


def _reduced(x: TensorIR, dims: Any) -> tuple[int, ...]:
    """The dims a reduction over ``dims`` reduces, sorted and non-negative."""
    if x.ndim == 0 or dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        # (a 0-d tensor's dim 0 or -1 is no dim: the reduction is its one element)
        return tuple(range(x.ndim))
    dims = [dims] if isinstance(dims, int) else dims
    return tuple(sorted({_norm_dim(d, x.ndim) for d in dims}))


def _trivial_reduction(x: TensorIR, reduced: tuple[int, ...], meta: Any,
                       reduction_type: str) -> Pointwise:
    """A reduction over size-1 dims only: each output element is its one input (or index 0)."""
    load = x.loader()
    keepdim = meta.ndim == x.ndim
    dtype = meta.dtype

    def inner(index: Index) -> Value:
        if reduction_type.startswith("arg"):
            return ops.constant(0, torch.int64)
        if keepdim:
            full = list(index)
        else:
            it = iter(index)
            full = [sympy.Integer(0) if d in reduced else next(it) for d in range(x.ndim)]
        return ops.to_dtype(load(full), ir.compute_dtype(dtype))
    return Pointwise(dtype, [ir.sym(s) for s in meta.shape], inner, meta)


@register(aten.sum)
def lower_sum(ctx: GraphLowering, node: Any, x: Any, dims: Any = None, keepdim: bool = False,
              *, dtype: Any = None) -> Buffer:
    if node.target is aten.sum.default:
        dims = None
    return _reduce(ctx, node, x, dims, keepdim, "sum")


@register(aten.prod)
def lower_prod(ctx: GraphLowering, node: Any, x: Any, dim: Any = None, keepdim: bool = False,
               *, dtype: Any = None) -> Buffer:
    if node.target is aten.prod.default:
        dim = None
    return _reduce(ctx, node, x, dim, keepdim, "prod")


@register(aten.amax, aten.amin)
def lower_amax(ctx: GraphLowering, node: Any, x: Any, dims: Any = (),
               keepdim: bool = False) -> Buffer:
    kind = "max" if node.target.overloadpacket is aten.amax else "min"
    return _reduce(ctx, node, x, dims, keepdim, kind)


@register(aten.argmax, aten.argmin)
def lower_argmax(ctx: GraphLowering, node: Any, x: Any, dim: Any = None,
                 keepdim: bool = False) -> Buffer:
    kind = node.target.overloadpacket.__name__
    if x.ndim == 0:  # the index of its one element
        return Pointwise(torch.int64, out_size(node), lambda index: ops.constant(0, torch.int64))
    return _reduce(ctx, node, x, dim, keepdim, kind, src_dtype=x.dtype)


@register(aten.max, aten.min)
def lower_max(ctx: GraphLowering, node: Any, x: Any, *args: Any) -> Any:
    kind = node.target.overloadpacket.__name__
    if node.target in (aten.max.default, aten.min.default):
        return _reduce(ctx, node, x, None, False, kind)
    if node.target in (aten.max.other, aten.min.other):
        return pointwise(node, simple("maximum" if kind == "max" else "minimum",
                                      Promotion.DEFAULT), [x, args[0]], Promotion.DEFAULT)
    if node.target not in (aten.max.dim, aten.min.dim):
        raise NoLowering(str(node.target))
    dim = args[0]
    keepdim = args[1] if len(args) > 1 else False
    values_meta, indices_meta = meta_of(node)
    values = _reduce(ctx, node, x, dim, keepdim, kind, meta=values_meta)
    indices = _reduce(ctx, node, x, dim, keepdim, "arg" + kind, meta=indices_meta,
                      src_dtype=x.dtype)
    return (values, indices)


@register(prims.var)
def lower_var(ctx: GraphLowering, node: Any, x: Any, dims: Any, correction: Any = 1.0, *,
              output_dtype: Any = None) -> Pointwise:
    """``M2 / max(n - correction, 0)``, M2 an ``m2`` reduction. kiln's decompositions emit
    prims.var for reductions over the leading dim, where the columns shape computes M2 in
    one pass (cpp_columns.py); other variances stay a mean and a sum of squares."""
    meta = meta_of(node)
    reduced = _reduced(x, dims)
    if output_dtype not in (None, meta.dtype) or meta.dtype not in (torch.float32,
                                                                     torch.float64) or \
            all(x.size[d] == 1 for d in reduced):
        # (a float16 M2 would overflow where the variance does not)
        raise NoLowering("prims.var of one element, of float16/bfloat16 or to another dtype")
    c = float(correction if correction is not None else 1.0)
    n = ir.product([x.size[d] for d in reduced])
    if not n.is_Integer and not c.is_integer():
        raise NoLowering("a fractional correction of a symbolic count")
    denominator = sympy.Max(n - (int(c) if c.is_integer() else sympy.Float(c)), 0)
    m2 = _reduce(ctx, node, x, reduced, False, "m2")
    load = m2.loader()
    cdt = ir.compute_dtype(meta.dtype)

    def inner(index: Index) -> Value:
        return ops.op("truediv", ops.to_dtype(load(index), cdt),
                      scalar_operand(denominator, cdt))
    return Pointwise(meta.dtype, out_size(node), inner, meta)
