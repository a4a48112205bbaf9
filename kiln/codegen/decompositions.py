"""The decomposition table: aten graphs rewritten to a small core set before lowering.

    gm = make_fx(fn, decomposition_table=decomposition_table())(*args)
    assert not non_core_ops(gm)

kiln's loop IR lowers a few dozen ops (pointwise math, a handful of reductions, views as index
arithmetic, indirect loads and stores); everything composite is first rewritten in terms of
those, so that each backend (C++, Triton) implements the small set once and the scheduler sees
the pointwise and reduction pieces it can fuse. Which ops decompose is chosen here, in one
place, from torch's own tables (``torch._decomp``), plus a few decompositions of kiln's own
where torch's produce ops outside the core set (``prims.sum``; ``prims.var`` everywhere,
where kiln's keeps it for column reductions only).

The ops kiln names fall in four disjoint groups:

- :data:`DECOMPOSED_OPS`: rewritten by :func:`decomposition_table`; never reach the loop IR.
- :data:`LOWERED_OPS`: what the loop IR lowers (pointwise, reductions, views, indexing,
  tensor creation).
- :data:`EXTERN_OPS`: matmul, convolution and attention, run as aten calls (an extern kernel)
  because a library kernel beats anything kiln would generate; never decomposed.
- :data:`FALLBACK_OPS`: kept on aten on purpose (random numbers, sorts and scans), see below.

:data:`CORE_OPS` is the union of the last three; :func:`non_core_ops` names what a graph holds
outside it, i.e. what a missing decomposition left behind and would fall back to aten.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch._decomp
from torch.fx.experimental.symbolic_shapes import statically_known_true

aten = torch.ops.aten
prims = torch.ops.prims

OpPacket = torch._ops.OpOverloadPacket

# --- what is decomposed -----------------------------------------------------------------------
# Each packet here has an entry in torch._decomp.decomposition_table (checked on 2.13), or one
# in KILN_DECOMPOSITIONS below; tests/codegen/test_decompositions.py checks both.
# CompositeImplicitAutograd ops (softmax, log_softmax, layer_norm, batch_norm, l1_loss,
# cross_entropy, dropout, linear, matmul, reshape, narrow...) need no entry: make_fx already
# traces them as the aten ops they call, which land here or in the core set.

DECOMPOSED_OPS: tuple[OpPacket, ...] = (
    # Softmax and normalization: a reduction (amax, sum), then pointwise math that the
    # scheduler fuses into it. Keeping them whole would need a hand-written kernel per backend.
    aten._softmax,
    aten._log_softmax,
    aten._softmax_backward_data,
    aten._log_softmax_backward_data,
    aten.logsumexp,
    aten.native_layer_norm,
    aten.native_layer_norm_backward,
    aten.native_group_norm,
    aten.native_group_norm_backward,
    # batch norm reaches the graph under any of these names, depending on how it was called
    # (F.batch_norm, nn.BatchNorm in train or eval, kiln.aot's rerouting of the running-stats
    # update). native_batch_norm and _batch_norm_with_update are absent on purpose:
    # functionalization turns them into _native_batch_norm_legit(_functional) and
    # _batch_norm_with_update_functional, and only functionalized graphs reach the backend
    # (in an unfunctionalized one their running-stats update would leave a copy_ behind).
    aten.native_batch_norm_backward,
    aten._native_batch_norm_legit,
    aten._native_batch_norm_legit_functional,
    aten._native_batch_norm_legit_no_training,
    aten._batch_norm_with_update_functional,
    aten._batch_norm_no_update,
    aten.batch_norm_backward,
    # Statistics: mean = sum / n, var = two-pass sum of squared deviations (kiln's own, below:
    # torch's emit prims.sum / prims.var), or prims.var over the leading dim of a 2-d
    # tensor, which the columns shape computes in one pass (see _var_mean_parts).
    aten.mean,
    aten.var,
    aten.var_mean,
    aten.std,
    aten.std_mean,
    # Boolean reductions: a sum of a predicate, one reduction kind fewer to lower.
    aten.any,
    aten.all,
    # Activations and their backwards: composite pointwise -> core pointwise. gelu stays
    # pointwise after decomposition (erf or tanh), so fusion is unchanged and neither backend
    # needs its own gelu.
    aten.gelu,
    aten.gelu_backward,
    aten.silu,
    aten.silu_backward,
    aten.sigmoid_backward,
    aten.tanh_backward,
    aten.threshold,
    aten.threshold_backward,
    aten.hardtanh,
    aten.hardtanh_backward,
    aten.leaky_relu,
    aten.leaky_relu_backward,
    aten.elu,
    aten.elu_backward,
    aten.softplus,
    aten.softplus_backward,
    aten.hardsigmoid,
    aten.hardsigmoid_backward,
    aten.hardswish,
    aten.hardswish_backward,
    aten.mish,
    aten.mish_backward,
    aten.log_sigmoid_forward,
    aten.log_sigmoid_backward,
    aten.glu,
    aten.glu_backward,
    # Losses: pointwise math and a sum/mean; nll_loss is a gather (forward) and a scatter
    # (backward) over the target indices.
    aten.mse_loss,
    aten.mse_loss_backward,
    aten.smooth_l1_loss,
    aten.smooth_l1_loss_backward,
    aten.huber_loss,
    aten.huber_loss_backward,
    aten.binary_cross_entropy,
    aten.binary_cross_entropy_backward,
    aten.binary_cross_entropy_with_logits,
    aten.nll_loss_forward,
    aten.nll_loss_backward,
    aten.nll_loss2d_forward,
    aten.nll_loss2d_backward,
    # Composite pointwise: one fused expression of core ops each.
    aten.addcmul,
    aten.addcdiv,
    aten.lerp,
    aten.rsub,
    aten.clamp_min,  # -> clamp
    aten.clamp_max,  # -> clamp
    aten.masked_fill,  # -> where
    aten.frac,  # -> sub, trunc
    aten.xlogy,
    aten.native_dropout_backward,  # mask * grad * scale: only the forward draws random numbers
    # Views under other names -> the canonical view ops the IR turns into index arithmetic.
    aten.t,  # -> permute
    aten.transpose,  # -> permute
    aten.split,  # -> slice
    aten.split_with_sizes,  # -> slice
    aten.unbind,  # -> select
    # (detach and _unsafe_view stay: they are views to the IR as alias and view are, and
    # AOT autograd's view analysis must see that a detach is not differentiable and an
    # _unsafe_view of a fresh tensor is no view of it)
    # Tensor creation: every constant-filled tensor becomes full / full_like / empty.
    aten.zeros,
    aten.ones,
    aten.zeros_like,
    aten.ones_like,
    aten.new_zeros,
    aten.new_ones,
    aten.new_full,
    aten.new_empty,
    aten.fill,
    # Indexing: every gather-like op becomes aten.index, every scatter-like index_put, the two
    # indirect accesses the IR has. The underscored ones are emitted by other decompositions.
    aten.embedding,  # -> index_select -> index
    aten.embedding_dense_backward,  # -> index_put(accumulate=True)
    aten.index_select,
    aten._unsafe_index,
    aten._unsafe_index_put,
    aten._unsafe_masked_index,
    aten._unsafe_masked_index_put_accumulate,
    # Functionalization's view scatters and the backwards of slicing: pointwise selects over
    # an iota mask (where), so they fuse with their producers instead of copying.
    aten.select_backward,
    aten.slice_backward,
    aten.select_scatter,
    aten.slice_scatter,
    aten.stack,  # -> unsqueeze + cat
)

# --- what is not ------------------------------------------------------------------------------
# Pointwise ops the loop IR lowers. Several of them (sigmoid, relu, clamp, where, abs...) have
# torch._decomp entries too; those are deliberately not used: each is one line of C++ or
# Triton and decomposing it would only lengthen the IR.
POINTWISE_OPS: frozenset[OpPacket] = frozenset({
    # arithmetic
    aten.add, aten.sub, aten.mul, aten.div, aten.neg, aten.reciprocal, aten.pow,
    aten.remainder, aten.fmod, aten.floor_divide, aten.maximum, aten.minimum, aten.clamp,
    aten.abs, aten.sign, aten.sgn, aten.floor, aten.ceil, aten.trunc, aten.round,
    # transcendental
    aten.exp, aten.exp2, aten.expm1, aten.log, aten.log2, aten.log10, aten.log1p,
    aten.sqrt, aten.rsqrt, aten.sin, aten.cos, aten.tan, aten.asin, aten.acos, aten.atan,
    aten.atan2, aten.sinh, aten.cosh, aten.tanh, aten.sigmoid, aten.erf, aten.erfc,
    aten.relu,
    # comparison, logic, selection
    aten.eq, aten.ne, aten.lt, aten.le, aten.gt, aten.ge, aten.isnan, aten.isinf,
    aten.logical_not, aten.logical_and, aten.logical_or, aten.logical_xor,
    aten.bitwise_not, aten.bitwise_and, aten.bitwise_or, aten.bitwise_xor, aten.where,
    # casts and copies
    aten._to_copy, aten.clone, aten.copy, aten.lift_fresh_copy, prims.convert_element_type,
})

# Reductions the loop IR lowers. max / min have three forms: .dim (values and indices: an
# amax and an argmax in one loop), .default (a full amax) and .other (pointwise maximum).
# prims.var is the variance of column reductions (kiln's var decomposition emits it).
REDUCTION_OPS: frozenset[OpPacket] = frozenset({
    aten.sum, aten.prod, aten.amax, aten.amin, aten.argmax, aten.argmin, aten.max, aten.min,
    prims.var,
})

# Views: index arithmetic on the producer's buffer, no kernel of their own. cat is here
# because it is one too: each output element reads one of the inputs at a shifted index.
VIEW_OPS: frozenset[OpPacket] = frozenset({
    aten.view, aten.expand, aten.permute, aten.squeeze, aten.unsqueeze, aten.slice,
    aten.select, aten.as_strided, aten.alias, aten.diagonal, aten.unfold, aten.cat,
    aten.detach, aten._unsafe_view,
})

# Indirect access: index is a load at computed indices, index_put a store (an atomic add
# with accumulate=True), gather/scatter their dim-wise forms.
INDEXING_OPS: frozenset[OpPacket] = frozenset({
    aten.index, aten.index_put, aten.gather, aten.scatter, aten.scatter_add,
})

# Creation: constants and index ranges, lowered to pointwise loops with no input.
CREATION_OPS: frozenset[OpPacket] = frozenset({
    aten.full, aten.full_like, aten.scalar_tensor, aten.empty, aten.empty_like,
    aten.empty_strided, aten.arange, prims.iota,
})

# Shape queries of symbolic graphs: the wrapper reads them off its inputs.
SIZE_OPS: frozenset[OpPacket] = frozenset({
    aten.sym_size, aten.sym_stride, aten.sym_numel, aten.sym_storage_offset,
})

LOWERED_OPS: frozenset[OpPacket] = (POINTWISE_OPS | REDUCTION_OPS | VIEW_OPS | INDEXING_OPS
                                    | CREATION_OPS | SIZE_OPS)

# Extern kernels: called through aten, never decomposed. A BLAS / oneDNN / cuDNN / flash
# kernel beats generated loops, and keeping addmm whole keeps the bias inside the BLAS call
# (torch's addmm decomposition loses precision in bfloat16, its own comment says).
EXTERN_OPS: frozenset[OpPacket] = frozenset({
    aten.mm, aten.bmm, aten.addmm, aten.baddbmm, aten.mv, aten.dot, aten.addmv,
    aten.convolution, aten.convolution_backward,
    aten._scaled_dot_product_flash_attention_for_cpu,
    aten._scaled_dot_product_flash_attention_for_cpu_backward,
    aten._scaled_dot_product_flash_attention, aten._scaled_dot_product_flash_attention_backward,
    aten._scaled_dot_product_efficient_attention,
    aten._scaled_dot_product_efficient_attention_backward,
    aten._scaled_dot_product_cudnn_attention, aten._scaled_dot_product_cudnn_attention_backward,
})

# Deliberate fallbacks. Random ops stay aten calls so a compiled program draws exactly the
# numbers eager draws from the same seed (native_dropout has a torch decomposition; it is not
# used for that reason). Sorts, scans and ops with data-dependent output shapes have no loop
# form in kiln's IR.
FALLBACK_OPS: frozenset[OpPacket] = frozenset({
    aten.native_dropout, aten.bernoulli, aten.rand, aten.rand_like, aten.randn,
    aten.randn_like, aten.randint, aten.randint_like, aten.randperm, aten.normal,
    aten.uniform, aten.exponential, aten.multinomial,
    aten.sort, aten.topk, aten.cumsum, aten.cumprod, aten.nonzero,
})

CORE_OPS: frozenset[OpPacket] = LOWERED_OPS | EXTERN_OPS | FALLBACK_OPS


# --- kiln's own decompositions ----------------------------------------------------------------
# torch's mean / var / std go through torch._refs and leave prims.sum and prims.var in the
# graph; these write the same math with aten.sum (and prims.var for column reductions). They
# return NotImplemented where eager would raise or where the two-pass form does not apply
# (integer or complex inputs), which leaves the op in the graph for aten to handle.

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _reduced_dims(x: torch.Tensor, dim: Any) -> list[int]:
    """The dims a reduction over ``dim`` reduces, non-negative; none for a 0-d tensor (whose
    dim 0 / -1 aten accepts), all for ``None`` or ``[]``."""
    if x.ndim == 0 or dim is None or (isinstance(dim, Sequence) and len(dim) == 0):
        return list(range(x.ndim))
    dims = [dim] if isinstance(dim, int) else list(dim)
    return [d % x.ndim for d in dims]


def _count(x: torch.Tensor, dims: list[int]) -> Any:
    """How many elements each reduced slot sums (an int, or a SymInt for dynamic sizes)."""
    return functools.reduce(operator.mul, (x.shape[d] for d in dims), 1)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    """float16 / bfloat16 accumulate in float32, as eager's CPU and CUDA kernels do."""
    return torch.float32 if dtype in _LOW_PRECISION else dtype


def _mean(x: torch.Tensor, dim: Any = None, keepdim: bool = False, *,
          dtype: torch.dtype | None = None) -> Any:
    out_dtype = dtype or x.dtype
    if not out_dtype.is_floating_point:
        return NotImplemented  # eager raises for integer means, and complex are left alone
    dims = _reduced_dims(x, dim)
    total = aten.sum.dim_IntList(x, dims, keepdim, dtype=_opmath(out_dtype))
    return aten.div.Tensor(total, _count(x, dims)).to(out_dtype)


def _is_column_reduction(x: torch.Tensor, dims: list[int]) -> bool:
    """Whether reducing ``dims`` of ``x`` is what kiln's C++ runs in the columns shape
    (cpp_columns.py): the leading dim of a 2-d tensor laid out along its rows, neither size
    1. There prims.var is one pass over the input (a blocked Welford update per column
    tile), where the two-pass form walks every tile twice; a row stays in cache between its
    two passes, so other reductions keep them (as accurate, and the mean is shared with
    var_mean's)."""
    return x.ndim == 2 and dims == [0] and statically_known_true(x.stride(1) == 1) and \
        statically_known_true(x.shape[0] != 1) and statically_known_true(x.shape[1] != 1)


def _var_mean_parts(x: torch.Tensor, dim: Any, unbiased: bool | None, keepdim: bool,
                    correction: float | None, with_mean: bool = True) -> Any:
    """(var, mean) in x's dtype (mean None unless ``with_mean``), or NotImplemented. Two
    passes: the mean, then the sum of squared deviations from it, divided by
    max(n - correction, 0) as eager does; prims.var for column reductions."""
    if isinstance(dim, bool):  # var(x, unbiased): the overload without dims
        dim, unbiased = None, dim
    if not x.dtype.is_floating_point:
        return NotImplemented
    if correction is None:
        correction = 1 if unbiased is None or unbiased else 0
    dims = _reduced_dims(x, dim)
    n = _count(x, dims)
    acc = x.to(_opmath(x.dtype))
    if _is_column_reduction(acc, dims):
        var = prims.var.default(acc, dims, float(correction))
        if keepdim:
            var = aten.unsqueeze.default(var, 0)
        mean = aten.div.Tensor(aten.sum.dim_IntList(acc, dims, keepdim), n).to(x.dtype) \
            if with_mean else None
        return var.to(x.dtype), mean
    mean = aten.div.Tensor(aten.sum.dim_IntList(acc, dims, True), n)
    deviation = aten.sub.Tensor(acc, mean)
    squares = aten.sum.dim_IntList(aten.mul.Tensor(deviation, deviation), dims, keepdim)
    denominator = n - correction
    denominator = (torch.sym_max(denominator, 0)
                   if isinstance(denominator, (torch.SymInt, torch.SymFloat))
                   else max(denominator, 0))
    var = aten.div.Tensor(squares, denominator)
    if not keepdim:
        mean = aten.squeeze.dims(mean, dims)
    return var.to(x.dtype), mean.to(x.dtype)


def _var(x: torch.Tensor, dim: Any = None, unbiased: bool | None = None,
         keepdim: bool = False, *, correction: float | None = None) -> Any:
    parts = _var_mean_parts(x, dim, unbiased, keepdim, correction, with_mean=False)
    return parts if parts is NotImplemented else parts[0]


def _var_mean(x: torch.Tensor, dim: Any = None, unbiased: bool | None = None,
              keepdim: bool = False, *, correction: float | None = None) -> Any:
    return _var_mean_parts(x, dim, unbiased, keepdim, correction)


def _std(x: torch.Tensor, dim: Any = None, unbiased: bool | None = None,
         keepdim: bool = False, *, correction: float | None = None) -> Any:
    parts = _var_mean_parts(x, dim, unbiased, keepdim, correction, with_mean=False)
    return parts if parts is NotImplemented else aten.sqrt.default(parts[0])


def _std_mean(x: torch.Tensor, dim: Any = None, unbiased: bool | None = None,
              keepdim: bool = False, *, correction: float | None = None) -> Any:
    parts = _var_mean_parts(x, dim, unbiased, keepdim, correction)
    return parts if parts is NotImplemented else (aten.sqrt.default(parts[0]), parts[1])


def _sym_clamp(value: Any, lower: Any, upper: Any) -> Any:
    if any(isinstance(v, torch.SymInt) for v in (value, lower, upper)):
        return torch.sym_min(torch.sym_max(value, lower), upper)
    return min(max(value, lower), upper)


def _slice_scatter(x: torch.Tensor, src: torch.Tensor, dim: int = 0, start: Any = None,
                   end: Any = None, step: int = 1) -> torch.Tensor:
    """``x`` with ``src`` written into ``x[start:end:step]`` along ``dim``, as a ``where``
    over an iota mask (which fuses with producers). torch's decomposition branches on
    ``start == 0``, ``end == size``: with symbolic sizes each branch is a guard, and
    ``out[:a.size(0)] += a`` on ``out`` of size ``max(a.size(0), b.size(0))`` then
    recompiled whenever the larger input changed sides. Here the mask has every condition
    unless it is statically known to hold, and start/end are clamped symbolically."""
    dim = dim % x.ndim if x.ndim else 0
    size = x.shape[dim]

    def normalize(value: Any, lower: Any, default: Any) -> Any:
        if value is None:
            return default
        if isinstance(value, int) or not statically_known_true(value >= 0):
            if value < 0:  # (a guard only for a symbolic value of unknown sign)
                value = value + size
        return _sym_clamp(value, lower, size)

    start = normalize(start, 0, 0)
    end = normalize(end, start, size)
    src_size = list(x.shape)
    src_size[dim] = (end - start + (step - 1)) // step
    src = aten.expand.default(src, src_size)
    if statically_known_true(start == 0) and statically_known_true(end == size) and step == 1:
        return aten.clone.default(src)
    idx = aten.arange.start_step(0, size, 1, device=x.device)
    offset = aten.sub.Tensor(idx, start)
    mask = aten.logical_and.default(aten.ge.Scalar(offset, 0), aten.lt.Scalar(idx, end))
    if step != 1:
        on_step = aten.eq.Scalar(aten.remainder.Scalar(offset, step), 0)
        mask = aten.logical_and.default(mask, on_step)
    shape = [1] * x.ndim
    shape[dim] = -1
    mask = aten.view.default(mask, shape)
    indices: list[Any] = [None] * x.ndim
    indices[dim] = aten.div.Tensor_mode(offset, step, rounding_mode="floor")
    return aten.where.self(mask, aten._unsafe_masked_index.default(src, mask, indices, 0), x)


def _overloads(packet: OpPacket, *names: str) -> list[torch._ops.OpOverload]:
    return [getattr(packet, name) for name in names]


KILN_DECOMPOSITIONS: dict[torch._ops.OpOverload, Callable[..., Any]] = {
    **{op: _mean for op in _overloads(aten.mean, "default", "dim")},
    aten.slice_scatter.default: _slice_scatter,
    **{op: _var for op in _overloads(aten.var, "default", "dim", "correction")},
    **{op: _var_mean for op in _overloads(aten.var_mean, "default", "dim", "correction")},
    **{op: _std for op in _overloads(aten.std, "default", "dim", "correction")},
    **{op: _std_mean for op in _overloads(aten.std_mean, "default", "dim", "correction")},
}


@functools.cache
def decomposition_table() -> dict[torch._ops.OpOverload, Callable[..., Any]]:
    """The table to trace with (``make_fx(..., decomposition_table=...)``): torch's
    decompositions of :data:`DECOMPOSED_OPS`, with kiln's own in place of torch's for the
    packets kiln decomposes itself. Built once; callers share it and must not change it."""
    own = {op.overloadpacket for op in KILN_DECOMPOSITIONS}
    table = torch._decomp.get_decompositions([p for p in DECOMPOSED_OPS if p not in own])
    table.update(KILN_DECOMPOSITIONS)
    return table


def _packet(target: Any) -> Any:
    return target.overloadpacket if isinstance(target, torch._ops.OpOverload) else target


def non_core_ops(gm: torch.fx.GraphModule) -> set[str]:
    """The ops ``gm`` calls outside :data:`CORE_OPS` (as ``"aten.gelu.default"``): what
    lowering would hand to aten as a fallback. Only operators count (aten, prims, higher-order
    ops); Python functions on sizes (``operator.mul`` on SymInts, ``getitem`` of a result
    tuple) are the wrapper's bookkeeping, not tensor ops."""
    return {str(node.target) for node in gm.graph.nodes
            if node.op == "call_function" and isinstance(node.target, torch._ops.OperatorBase)
            and _packet(node.target) not in CORE_OPS}


__all__ = [
    "CORE_OPS", "CREATION_OPS", "DECOMPOSED_OPS", "EXTERN_OPS", "FALLBACK_OPS",
    "INDEXING_OPS", "KILN_DECOMPOSITIONS", "LOWERED_OPS", "POINTWISE_OPS", "REDUCTION_OPS",
    "SIZE_OPS", "VIEW_OPS", "decomposition_table", "non_core_ops",
]
