"""Fusion decisions of kiln/codegen/scheduler.py and the loop shapes cpp.py picks for them:
the kernel count and what stays local, on aten graphs made with make_fx, each checked
against eager too (a fusion that reads a value before it is computed would show there)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

from kiln.codegen.compile_graph import compile_graph
from kiln.codegen.decompositions import decomposition_table
from kiln.codegen.lowering import lower
from kiln.codegen.scheduler import Kernel, schedule


def _schedule(fn, *args):
    gm = make_fx(fn, decomposition_table=decomposition_table())(*args)
    lowered, _ = lower(gm)
    return schedule(lowered), gm


def _kernels(fn, *args) -> list[Kernel]:
    sched, _ = _schedule(fn, *args)
    return [s for s in sched.steps if isinstance(s, Kernel)]


def _run(fn, *args):
    gm = make_fx(fn, decomposition_table=decomposition_table())(*args)
    call = compile_graph(gm, list(args))
    out = call(list(args))
    expected = fn(*args)
    expected = list(expected) if isinstance(expected, (list, tuple)) else [expected]
    assert len(out) == len(expected)
    for o, e in zip(out, expected):
        torch.testing.assert_close(o, e)
    return call._kiln_compiled


X = torch.randn(37, 65)
W = torch.randn(65)


@pytest.mark.parametrize("fn,args", [
    (lambda x: torch.softmax(x, -1), (X,)),
    (lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b), (X, W, W)),
    (lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w, (X, W)),
    (lambda x, b: F.gelu(x + b) * 2 - 1, (X, W)),
    (lambda x: torch.log_softmax(x, -1), (X,)),
], ids=["softmax", "layernorm", "rmsnorm", "pointwise-chain", "log_softmax"])
def test_row_programs_are_one_kernel_with_local_reductions(fn, args):
    kernels = _kernels(fn, *args)
    assert len(kernels) == 1
    reductions = [m for m in kernels[0].members if m.kind == "reduction"]
    assert {m.buffer.name for m in reductions} <= kernels[0].local  # never written to memory
    assert _run(fn, *args).kernel_count == 1


def test_column_reduction_uses_the_tiled_loop():
    compiled = _run(lambda x: x.sum(0), X)
    assert "tile" in compiled.cpp_source
    compiled = _run(lambda x: x.var(0), X)  # one pass (an m2 reduction), one kernel
    assert compiled.kernel_count == 1


def test_column_var_mean_is_one_kernel_with_the_sum_and_m2_in_one_loop():
    # the mean's sum and the variance's m2 reduce the same rows: one reduction stage (one
    # walk over the rows, each element loaded once), the m2 kept in registers
    (kernel,) = _kernels(lambda x: torch.var_mean(x, 0), X)
    kinds = [(m.kind, getattr(m.buffer.body, "reduction_type", None)) for m in kernel.members]
    assert ("reduction", "sum") in kinds and ("reduction", "m2") in kinds
    m2 = next(m for m in kernel.members if getattr(m.buffer.body, "reduction_type", "") == "m2")
    assert m2.buffer.name in kernel.local
    compiled = _run(lambda x: torch.var_mean(x, 0), X)
    assert compiled.cpp_source.count("for (int64_t x0 = ") == 1


def test_consumer_of_a_reduction_at_another_index_is_another_kernel():
    # the row sums are read transposed: every element needs all of them first
    def fn(x):
        s = x.sum(1)
        return x[: s.numel()] * s[:, None] + s[None, : x.shape[1]].sum()
    _run(fn, torch.randn(9, 9))


def test_independent_outputs_of_the_same_inputs_share_a_loop():
    kernels = _kernels(lambda x, y: (x + y, x * y, (x - y).exp()), X, X)
    assert len(kernels) == 1
    assert len(kernels[0].members) == 3


def test_reads_of_a_later_kernel_are_not_fused_backwards():
    # y depends on an extern call (mm) of x's kernel's output: it cannot join that kernel
    def fn(x, w):
        a = (x + 1).relu()
        m = a @ w
        return a * 2, m.sin()
    compiled = _run(fn, torch.randn(8, 8), torch.randn(8, 8))
    assert compiled.extern_count == 1


def test_pointwise_read_twice_is_computed_once_when_expensive():
    def fn(x):
        e = (x.sin().exp() + x.cos().exp()).tanh()
        return e.sum(0), e.sum(1), e.amax(0), e.amax(1)
    compiled = _run(fn, X)
    # (past the prelude: the first kernel, or the body function a column kernel calls)
    kernels = compiled.cpp_source[compiled.cpp_source.index("void kernel0"):]
    assert kernels.count("tanhf(") == 1


def test_buffers_of_the_same_layout_are_reused():
    def fn(x):
        # each sum is read transposed by the next kernel: in memory, dead after that kernel
        a = x.exp().sum(1, keepdim=True)
        b = (x / a.t()).sum(1, keepdim=True)
        c = (x / b.t()).sum(1, keepdim=True)
        return (x / c.t()).sum(1, keepdim=True)
    # (positive inputs: divisions by sums near zero would amplify rounding differences of
    # the vectorized sums past the tolerance, as an unseeded randn once did)
    x = torch.rand(16, 16, generator=torch.Generator().manual_seed(0)) + 0.5
    compiled = _run(fn, x)
    assert "# reuse" in compiled.wrapper_source
