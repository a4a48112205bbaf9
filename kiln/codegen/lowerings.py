"""The lowerings: one function per core aten op family, building IR (ir.py) from IR.

Pointwise ops follow eager's type promotion (``torch._prims_common.elementwise_dtypes``,
with the promotion kind each op has in torch's refs): operands are converted to the compute
dtype (float32 for float16/bfloat16, as eager's kernels do), the op applied, and the result
converted to the node's dtype. Broadcasting is index arithmetic: a size-1 dim of an operand
is read at index 0.

Views of buffers take the fake tensor's layout (lowering.py); views of lazy values remap the
index where that is plain arithmetic (permute, expand, squeeze/unsqueeze, select, slice) and
realize the producer first otherwise. Reductions are in lowerings_reductions.py.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import sympy
import torch
from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND as Promotion
from torch._prims_common import elementwise_dtypes

from kiln.codegen import ir
from kiln.codegen.ir import Buffer, Index, Loader, Pointwise, TensorIR, Value, ops
from kiln.codegen.lowering import EXTERN_TARGETS, GraphLowering, NoLowering, meta_of, register

aten = torch.ops.aten
prims = torch.ops.prims


# --- helpers -------------------------------------------------------------------------------------

def out_size(node: Any) -> list[ir.Expr]:
    return [ir.sym(s) for s in meta_of(node).shape]


def broadcast(x: TensorIR, size: Sequence[ir.Expr]) -> Loader:
    """``x``'s loader read at indices of the broadcast ``size``."""
    load = x.loader()
    lead = len(size) - x.ndim
    xs = x.size

    def inner(index: Index) -> Value:
        return load([sympy.Integer(0) if xs[d] == 1 and size[lead + d] != 1 else index[lead + d]
                     for d in range(x.ndim)])
    return inner


def memoized(fn: Loader) -> Loader:
    """``fn`` returning the same Value for the same index (so a value read by several
    consumers in one kernel is one expression, and deep DAGs do not unfold into trees)."""
    cache: dict[tuple[ir.Expr, ...], Value] = {}

    def inner(index: Index) -> Value:
        key = tuple(index)
        if key not in cache:
            cache[key] = fn(index)
        return cache[key]
    return inner


def scalar_operand(a: Any, dtype: torch.dtype) -> Value:
    """A Python number or a symbolic size as a value of ``dtype``."""
    if isinstance(a, sympy.Basic):
        if a.is_Integer or a.is_Float or a.is_Rational:
            return ops.constant(float(a) if dtype.is_floating_point else int(a), dtype)
        src = torch.float64 if a.is_real and not a.is_integer else torch.int64
        return ops.to_dtype(ops.index_expr(a, src), ir.compute_dtype(dtype))
    if isinstance(a, bool):
        return ops.constant(a, dtype)
    if isinstance(a, (int, float)):
        return ops.constant(a, dtype)
    raise NoLowering(f"operand {a!r}")


def _promotion_arg(node_arg: Any, lowered: Any) -> Any:
    meta = meta_of(node_arg)
    if isinstance(meta, torch.Tensor):
        return meta
    if isinstance(lowered, sympy.Basic):
        return 1.0 if (lowered.is_real and not lowered.is_integer) else 1
    return lowered


def _is_scalar(a: Any) -> bool:
    """Whether eager's TensorIterator sees ``a`` as a scalar operand (one element)."""
    return not isinstance(a, TensorIR) or all(s == 1 for s in a.size)


def _rounded_scalar(a: Any, dtype: torch.dtype) -> Any:
    """Python number ``a`` converted to ``dtype`` the way eager converts a wrapped scalar
    (through a float64 tensor)."""
    if isinstance(a, (bool, int, float)):
        return torch.tensor(a, dtype=torch.float64).to(dtype).item()
    return a


def pointwise(node: Any, fn: Any, operands: Sequence[Any], kind: Promotion,
              node_operands: Sequence[Any] | None = None,
              exact_scalar: bool = False) -> Pointwise:
    """``fn(*values)`` elementwise over ``operands`` (TensorIRs and scalars), with eager's
    type promotion of ``kind``; the result in the node's dtype.

    Where the promoted dtype is float16/bfloat16, eager's TensorIterator casts every operand
    of another dtype (an integer tensor, a 0-d float64 tensor, a Python scalar) to it before
    its kernel computes in float32, so such operands are rounded to it here too; except for a
    scalar second operand of the ops whose kernels read the scalar's original value
    (``exact_scalar``: mul, div, floor_divide)."""
    node_operands = node.args[:len(operands)] if node_operands is None else node_operands
    promo = [_promotion_arg(n, a) for n, a in zip(node_operands, operands)]
    tensors = [p for p in promo if isinstance(p, torch.Tensor)]
    if not tensors:
        raise NoLowering("no tensor operand")
    compute, common = elementwise_dtypes(*promo, type_promotion_kind=kind)
    result_dtype = meta_of(node).dtype
    size = out_size(node)
    loaders = [broadcast(a, size) if isinstance(a, TensorIR) else a for a in operands]
    cdt = ir.compute_dtype(compute)
    rounds = [common in ir.LOW_PRECISION and
              (not isinstance(a, TensorIR) or a.dtype != common) and
              not (exact_scalar and i == 1 and _is_scalar(a)) for i, a in enumerate(operands)]
    loaders = [_rounded_scalar(ld, common) if r and not callable(ld) else ld
               for ld, r in zip(loaders, rounds)]

    def operand(ld: Any, rounded: bool, index: Index) -> Value:
        if not callable(ld):
            v = scalar_operand(ld, cdt)
            return ops.round_to(v, common) if rounded and v.op != "constant" else v
        v = ops.to_dtype(ld(index), cdt)
        return ops.round_to(v, common) if rounded else v

    def inner(index: Index) -> Value:
        values = [operand(ld, r, index) for ld, r in zip(loaders, rounds)]
        return ops.to_dtype(fn(*values), ir.compute_dtype(result_dtype)) \
            if result_dtype not in ir.LOW_PRECISION else ops.to_dtype(fn(*values), torch.float32)
    return Pointwise(result_dtype, size, memoized(inner))


def simple(name: str, kind: Promotion, result_bool: bool = False) -> Any:
    def fn(*values: Value) -> Value:
        return ops.op(name, *values, dtype=torch.bool if result_bool else None)
    return fn


# --- pointwise -----------------------------------------------------------------------------------

UNARY_FLOAT = ("exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt", "sin",
               "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "sigmoid", "erf",
               "erfc", "reciprocal")
UNARY_SAME = ("neg", "abs", "sign", "floor", "ceil", "trunc", "relu", "bitwise_not")
BINARY_SAME = ("maximum", "minimum", "bitwise_and", "bitwise_or", "bitwise_xor")
COMPARE = ("eq", "ne", "lt", "le", "gt", "ge")


def _register_unary(name: str, kind: Promotion) -> None:
    @register(getattr(aten, name))
    def lower(ctx: GraphLowering, node: Any, x: Any, *rest: Any, **kwargs: Any) -> Pointwise:
        if rest or kwargs:
            raise NoLowering(f"{name} with extra arguments")
        if name == "bitwise_not" and meta_of(node).dtype == torch.bool:
            return pointwise(node, simple("logical_not", kind, True), [x], kind)
        if name in ("floor", "ceil", "trunc") and not meta_of(node).dtype.is_floating_point:
            return pointwise(node, lambda v: v, [x], kind)
        return pointwise(node, simple(name, kind), [x], kind)


for _n in UNARY_FLOAT:
    _register_unary(_n, Promotion.INT_TO_FLOAT)
for _n in UNARY_SAME:
    _register_unary(_n, Promotion.DEFAULT)


@register(aten.round)
def lower_round(ctx: GraphLowering, node: Any, x: Any, **kwargs: Any) -> Pointwise:
    if kwargs.get("decimals", 0):
        raise NoLowering("round with decimals")
    if not meta_of(node).dtype.is_floating_point:
        # the identity, as eager's (through nearbyint, an int64 above 2**53 would change)
        return pointwise(node, lambda v: v, [x], Promotion.DEFAULT)
    return pointwise(node, simple("round", Promotion.DEFAULT), [x], Promotion.DEFAULT)


@register(aten.sgn)
def lower_sgn(ctx: GraphLowering, node: Any, x: Any) -> Pointwise:
    return pointwise(node, simple("sign", Promotion.DEFAULT), [x], Promotion.DEFAULT)


for _n in BINARY_SAME:
    def _make(name: str) -> None:
        @register(getattr(aten, name))
        def lower(ctx: GraphLowering, node: Any, a: Any, b: Any) -> Pointwise:
            if name.startswith("bitwise") and meta_of(node).dtype == torch.bool:
                return pointwise(node, simple("logical_" + name[8:], Promotion.DEFAULT, True),
                                 [a, b], Promotion.DEFAULT)
            return pointwise(node, simple(name, Promotion.DEFAULT), [a, b], Promotion.DEFAULT)
    _make(_n)

for _n in COMPARE:
    def _make_cmp(name: str) -> None:
        @register(getattr(aten, name))
        def lower(ctx: GraphLowering, node: Any, a: Any, b: Any) -> Pointwise:
            return pointwise(node, simple(name, Promotion.ALWAYS_BOOL, True), [a, b],
                             Promotion.DEFAULT)
    _make_cmp(_n)

for _n in ("logical_and", "logical_or", "logical_xor"):
    def _make_logical(name: str) -> None:
        @register(getattr(aten, name))
        def lower(ctx: GraphLowering, node: Any, a: Any, b: Any) -> Pointwise:
            def fn(x: Value, y: Value) -> Value:
                return ops.op(name, ops.to_dtype(x, torch.bool), ops.to_dtype(y, torch.bool),
                              dtype=torch.bool)
            return pointwise(node, fn, [a, b], Promotion.DEFAULT)
    _make_logical(_n)


@register(aten.logical_not)
def lower_logical_not(ctx: GraphLowering, node: Any, x: Any) -> Pointwise:
    return pointwise(node, lambda v: ops.op("logical_not", ops.to_dtype(v, torch.bool),
                                            dtype=torch.bool), [x], Promotion.DEFAULT)


@register(aten.isnan, aten.isinf)
def lower_isnan(ctx: GraphLowering, node: Any, x: Any) -> Pointwise:
    name = node.target.overloadpacket.__name__
    if not meta_of(node.args[0]).dtype.is_floating_point:
        return pointwise(node, lambda v: ops.constant(False, torch.bool), [x],
                         Promotion.DEFAULT)
    return pointwise(node, simple(name, Promotion.DEFAULT, True), [x], Promotion.DEFAULT)


def _add_like(name: str) -> None:
    @register(getattr(aten, name))
    def lower(ctx: GraphLowering, node: Any, a: Any, b: Any, alpha: Any = 1) -> Pointwise:
        if meta_of(node).dtype == torch.bool:
            # eager adds bools as bools: a + alpha * b is a or (bool(alpha) and b)
            if name == "add" and isinstance(alpha, (bool, int)):
                return pointwise(node, simple("logical_or", Promotion.DEFAULT, True) if alpha
                                 else lambda x, y: x, [a, b], Promotion.DEFAULT)
            raise NoLowering(f"boolean {name}")

        def fn(x: Value, y: Value) -> Value:
            if alpha != 1:
                y = ops.op("mul", y, scalar_operand(alpha, y.dtype))
            return ops.op(name, x, y)
        return pointwise(node, fn, [a, b], Promotion.DEFAULT)


_add_like("add")
_add_like("sub")


@register(aten.mul)
def lower_mul(ctx: GraphLowering, node: Any, a: Any, b: Any) -> Pointwise:
    if meta_of(node).dtype == torch.bool:
        return pointwise(node, lambda x, y: ops.op("logical_and", x, y, dtype=torch.bool),
                         [a, b], Promotion.DEFAULT)
    return pointwise(node, simple("mul", Promotion.DEFAULT), [a, b], Promotion.DEFAULT,
                     exact_scalar=True)


@register(aten.div)
def lower_div(ctx: GraphLowering, node: Any, a: Any, b: Any, *,
              rounding_mode: str | None = None) -> Pointwise:
    if rounding_mode is None:
        return pointwise(node, simple("truediv", Promotion.INT_TO_FLOAT), [a, b],
                         Promotion.INT_TO_FLOAT, exact_scalar=True)
    if not meta_of(node).dtype.is_floating_point:
        _check_integer_divisor(b)
    op = "floordiv" if rounding_mode == "floor" else "truncdiv"
    return pointwise(node, simple(op, Promotion.DEFAULT), [a, b], Promotion.DEFAULT,
                     exact_scalar=True)


def _check_integer_divisor(b: Any) -> None:
    """Integer division is lowered only by a constant other than 0 (eager raises
    ZeroDivisionError, which generated code cannot) and -1 (INT_MIN / -1 traps in C)."""
    if isinstance(b, sympy.Basic) and b.is_Integer or isinstance(b, bool):
        b = int(b)
    if not isinstance(b, int) or b in (0, -1):
        raise NoLowering("integer division by a tensor, 0 or -1")


@register(aten.remainder, aten.fmod, aten.floor_divide)
def lower_remainder(ctx: GraphLowering, node: Any, a: Any, b: Any) -> Pointwise:
    if not meta_of(node).dtype.is_floating_point:
        if meta_of(node).dtype == torch.bool:
            raise NoLowering("boolean division")
        _check_integer_divisor(b)
    name = {"remainder": "remainder", "fmod": "fmod",
            "floor_divide": "floordiv"}[node.target.overloadpacket.__name__]
    return pointwise(node, simple(name, Promotion.DEFAULT), [a, b], Promotion.DEFAULT,
                     exact_scalar=name == "floordiv")


@register(aten.pow)
def lower_pow(ctx: GraphLowering, node: Any, a: Any, b: Any) -> Pointwise:
    """Floating pow is C's; integer pow is c10's ``powi`` (squaring, wrapping on overflow,
    0 for negative exponents of bases other than 1 and -1)."""
    dtype = meta_of(node).dtype
    if isinstance(b, (int, float)) and not isinstance(b, bool) and isinstance(a, TensorIR):
        if b == 2:
            return pointwise(node, lambda x: ops.op("mul", x, x), [a], Promotion.BOOL_TO_LONG,
                             node_operands=[node.args[0]])
        if b == 3:
            return pointwise(node, lambda x: ops.op("mul", ops.op("mul", x, x), x), [a],
                             Promotion.BOOL_TO_LONG, node_operands=[node.args[0]])
        if b == -0.5:
            return pointwise(node, simple("rsqrt", Promotion.DEFAULT), [a],
                             Promotion.BOOL_TO_LONG, node_operands=[node.args[0]])
        if b == 0.5:
            return pointwise(node, simple("sqrt", Promotion.DEFAULT), [a],
                             Promotion.BOOL_TO_LONG, node_operands=[node.args[0]])
        if b == 1:
            return pointwise(node, lambda x: x, [a], Promotion.BOOL_TO_LONG,
                             node_operands=[node.args[0]])
    if not dtype.is_floating_point:
        if dtype == torch.bool:
            raise NoLowering("boolean pow")
        return pointwise(node, simple("powi", Promotion.BOOL_TO_LONG), [a, b],
                         Promotion.BOOL_TO_LONG)
    return pointwise(node, simple("pow", Promotion.BOOL_TO_LONG), [a, b], Promotion.BOOL_TO_LONG)


@register(aten.atan2)
def lower_atan2(ctx: GraphLowering, node: Any, a: Any, b: Any) -> Pointwise:
    return pointwise(node, simple("atan2", Promotion.INT_TO_FLOAT), [a, b],
                     Promotion.INT_TO_FLOAT)


@register(aten.clamp)
def lower_clamp(ctx: GraphLowering, node: Any, x: Any, min: Any = None,
                max: Any = None) -> Pointwise:
    node_min = node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None)
    node_max = node.kwargs.get("max", node.args[2] if len(node.args) > 2 else None)
    operands = [x] + [b for b in (min, max) if b is not None]
    node_operands = [node.args[0]] + [b for b in (node_min, node_max) if b is not None]

    def fn(v: Value, *bounds: Value) -> Value:
        it = iter(bounds)
        if min is not None:
            v = ops.op("clamp_min", v, next(it))
        if max is not None:
            v = ops.op("clamp_max", v, next(it))
        return v
    return pointwise(node, fn, operands, Promotion.DEFAULT, node_operands=node_operands)


@register(aten.where)
def lower_where(ctx: GraphLowering, node: Any, cond: Any, a: Any, b: Any) -> Pointwise:
    size = out_size(node)
    dtype = meta_of(node).dtype
    cdt = ir.compute_dtype(dtype)
    lc = broadcast(cond, size)
    la = broadcast(a, size) if isinstance(a, TensorIR) else None
    lb = broadcast(b, size) if isinstance(b, TensorIR) else None

    def inner(index: Index) -> Value:
        va = ops.to_dtype(la(index), cdt) if la else scalar_operand(a, cdt)
        vb = ops.to_dtype(lb(index), cdt) if lb else scalar_operand(b, cdt)
        return ops.where(ops.to_dtype(lc(index), torch.bool), va, vb)
    return Pointwise(dtype, size, memoized(inner))


def _convert(ctx: GraphLowering, node: Any, x: Any, dtype: torch.dtype,
             src_node: Any = None) -> Pointwise:
    size = out_size(node)
    load = broadcast(x, size)
    src = meta_of(node.args[0] if src_node is None else src_node).dtype

    def inner(index: Index) -> Value:
        v = load(index)
        if dtype in ir.LOW_PRECISION and dtype != src:
            return ops.round_to(ops.to_dtype(v, torch.float32), dtype)
        return ops.to_dtype(v, ir.compute_dtype(dtype))
    return Pointwise(dtype, size, memoized(inner))


@register(aten._to_copy)
def lower_to_copy(ctx: GraphLowering, node: Any, x: Any, **kwargs: Any) -> Pointwise:
    meta = meta_of(node)
    if meta.device != meta_of(node.args[0]).device or kwargs.get("layout") not in \
            (None, torch.strided):
        raise NoLowering("a device or layout change")
    return _convert(ctx, node, x, meta.dtype)


@register(prims.convert_element_type)
def lower_convert(ctx: GraphLowering, node: Any, x: Any, dtype: torch.dtype) -> Pointwise:
    return _convert(ctx, node, x, dtype)


@register(aten.clone, aten.lift_fresh_copy)
def lower_clone(ctx: GraphLowering, node: Any, x: Any, **kwargs: Any) -> Pointwise:
    return _convert(ctx, node, x, meta_of(node).dtype)


@register(aten.copy)
def lower_copy(ctx: GraphLowering, node: Any, dst: Any, src: Any,
               non_blocking: bool = False) -> Pointwise:
    return _convert(ctx, node, src, meta_of(node).dtype, src_node=node.args[1])


# --- creation ------------------------------------------------------------------------------------

@register(aten.full, aten.full_like, aten.scalar_tensor)
def lower_full(ctx: GraphLowering, node: Any, *args: Any, **kwargs: Any) -> Pointwise:
    meta = meta_of(node)
    packet = node.target.overloadpacket
    value = args[0] if packet is aten.scalar_tensor else args[1]
    dtype = meta.dtype
    if isinstance(value, TensorIR):
        raise NoLowering("fill value is a tensor")

    def inner(index: Index) -> Value:
        return scalar_operand(value, ir.compute_dtype(dtype))
    return Pointwise(dtype, out_size(node), inner)


@register(aten.arange)
def lower_arange(ctx: GraphLowering, node: Any, *args: Any, **kwargs: Any) -> Pointwise:
    meta = meta_of(node)
    if node.target is not aten.arange.start_step and node.target is not aten.arange.default \
            and node.target is not aten.arange.start:
        raise NoLowering(str(node.target))
    nums = list(args)
    if node.target is aten.arange.default:
        start, step = 0, 1
    else:
        start, step = nums[0], (nums[2] if len(nums) > 2 else 1)
    dtype = meta.dtype
    cdt = ir.compute_dtype(dtype)

    def inner(index: Index) -> Value:
        i = ops.to_dtype(ops.index_expr(index[0], torch.int64), cdt)
        return ops.op("add", ops.op("mul", i, scalar_operand(step, cdt)),
                      scalar_operand(start, cdt))
    return Pointwise(dtype, out_size(node), inner)


@register(prims.iota)
def lower_iota(ctx: GraphLowering, node: Any, length: Any, *, start: Any, step: Any,
               **kwargs: Any) -> Pointwise:
    dtype = meta_of(node).dtype

    def inner(index: Index) -> Value:
        return ops.index_expr(ir.sym(start) + index[0] * ir.sym(step), dtype)
    return Pointwise(dtype, out_size(node), inner)


# --- views ---------------------------------------------------------------------------------------

def _remap(x: Pointwise, node: Any, fn: Any) -> Pointwise:
    load = x.loader()
    return Pointwise(x.dtype, out_size(node), memoized(lambda index: load(fn(index))))


def _view_of_buffer(ctx: GraphLowering, node: Any, x: Any) -> Buffer | None:
    if isinstance(x, Buffer):
        return ctx.view_of(x, meta_of(node))
    return None


def _norm_dim(d: int, ndim: int) -> int:
    return d % ndim if ndim else 0


@register(aten.permute)
def lower_permute(ctx: GraphLowering, node: Any, x: Any, dims: Sequence[int]) -> TensorIR:
    if (b := _view_of_buffer(ctx, node, x)) is not None:
        return b
    dims = [_norm_dim(d, x.ndim) for d in dims]
    inverse = [dims.index(d) for d in range(len(dims))]
    return _remap(x, node, lambda index: [index[inverse[d]] for d in range(len(dims))])


@register(aten.expand)
def lower_expand(ctx: GraphLowering, node: Any, x: Any, size: Any, **kwargs: Any) -> TensorIR:
    if (b := _view_of_buffer(ctx, node, x)) is not None:
        return b
    target = out_size(node)
    load = broadcast(x, target)
    return Pointwise(x.dtype, target, memoized(load))


@register(aten.unsqueeze)
def lower_unsqueeze(ctx: GraphLowering, node: Any, x: Any, dim: int) -> TensorIR:
    if (b := _view_of_buffer(ctx, node, x)) is not None:
        return b
    d = dim % (x.ndim + 1)
    return _remap(x, node, lambda index: index[:d] + index[d + 1:])


@register(aten.squeeze)
def lower_squeeze(ctx: GraphLowering, node: Any, x: Any, dims: Any = None) -> TensorIR:
    if (b := _view_of_buffer(ctx, node, x)) is not None:
        return b
    if dims is None:
        dims = [d for d, s in enumerate(x.size) if s == 1]
    elif isinstance(dims, int):
        dims = [dims]
    squeezed = {_norm_dim(d, x.ndim) for d in dims if x.size[_norm_dim(d, x.ndim)] == 1}

    def fn(index: Index) -> Index:
        it = iter(index)
        return [sympy.Integer(0) if d in squeezed else next(it) for d in range(x.ndim)]
    return _remap(x, node, fn)


@register(aten.select)
def lower_select(ctx: GraphLowering, node: Any, x: Any, dim: int, i: Any) -> TensorIR:
    if (b := _view_of_buffer(ctx, node, x)) is not None:
        return b
    d = _norm_dim(dim, x.ndim)
    i = ir.sym(i)
    if i.is_Integer and int(i) < 0:
        i = i + x.size[d]
    return _remap(x, node, lambda index: index[:d] + [i] + index[d:])


@register(aten.slice)
def lower_slice(ctx: GraphLowering, node: Any, x: Any, dim: int = 0, start: Any = None,
                end: Any = None, step: int = 1) -> TensorIR:
    if (b := _view_of_buffer(ctx, node, x)) is not None:
        return b
    d = _norm_dim(dim, x.ndim)
    # the start eager uses: the fake view's offset along dim d in units of a contiguous stride
    size = x.size[d]
    s = sympy.Integer(0) if start is None else ir.sym(start)
    if s.is_Integer:
        s = sympy.Integer(min(max(int(s) + (int(size) if int(s) < 0 and size.is_Integer else 0),
                                  0), int(size))) if size.is_Integer else s
        if not size.is_Integer and int(s) < 0:
            raise NoLowering("negative slice start of a symbolic size")
    elif not s.is_nonnegative:
        raise NoLowering("symbolic slice start")
    st = ir.sym(step)
    return _remap(x, node, lambda index: index[:d] + [s + index[d] * st] + index[d + 1:])


@register(aten.view, aten.alias, aten.as_strided, aten.diagonal, aten.unfold,
          aten._reshape_alias, aten.detach, aten._unsafe_view)
def lower_view(ctx: GraphLowering, node: Any, x: Any, *args: Any, **kwargs: Any) -> TensorIR:
    meta = meta_of(node)
    if meta.dtype != x.dtype:
        raise NoLowering("a view as another dtype")  # the same bytes read as another type
    if isinstance(x, Pointwise):
        if node.target.overloadpacket in (aten.view, aten.alias, aten.detach,
                                          aten._unsafe_view) and \
                [s for s in x.size if s != 1] == [e for e in out_size(node) if e != 1]:
            # only size-1 dims come or go: an index remap
            sizes = [ir.sym(s) for s in meta.shape]
            nonone = [d for d, s in enumerate(x.size) if s != 1]
            out_nonone = [d for d, s in enumerate(sizes) if s != 1]

            def fn(index: Index) -> Index:
                full = [sympy.Integer(0)] * x.ndim
                for src, dst in zip(nonone, out_nonone):
                    full[src] = index[dst]
                return full
            return _remap(x, node, fn)
        x = ctx.realize(x)
    return ctx.view_of(x, meta)


# --- extern kernels ------------------------------------------------------------------------------

def _externs() -> None:
    from kiln.codegen.decompositions import EXTERN_OPS
    EXTERN_TARGETS.update(EXTERN_OPS)


_externs()


@functools.cache
def lowered_targets() -> frozenset[Any]:
    """The packets with a lowering (for the op-coverage test)."""
    from kiln.codegen import lowerings_reductions  # noqa: F401  (registers the reductions)
    from kiln.codegen.lowering import LOWERINGS
    return frozenset(LOWERINGS)
