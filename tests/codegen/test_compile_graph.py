"""The "kiln" backend end to end (capture → AOT → codegen): results and gradients equal
eager, kernels counted in kiln.metrics, KILN_LOGS=output_code, one compiled graph serving
every size of a dynamic dimension, extern and fallback calls, low-precision dtypes."""

from __future__ import annotations

import ctypes
import logging
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kiln
from kiln.cache import fresh_cache
from kiln.testing import CompileCounterWithBackend


def _check(fn, *args, dtype_tol=None, backward=True):
    """``fn`` through kiln.compile (default backend) equals eager, forward and backward."""
    compiled = kiln.compile(fn)
    tol = dtype_tol or {}
    ref_args = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    out, ref = compiled(*args), fn(*ref_args)
    torch.testing.assert_close(out, ref, **tol)
    if backward:
        grad = torch.randn_like(ref)
        got = torch.autograd.grad(out, [a for a in args if a.requires_grad], grad)
        want = torch.autograd.grad(ref, [a for a in ref_args if a.requires_grad], grad)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **tol)


def test_kernels_are_counted_and_logged(caplog):
    kiln.metrics.reset()
    with kiln.logs.set_logs(output_code=True), caplog.at_level(logging.INFO, "kiln"):
        kiln.compile(lambda x: torch.softmax(x * 2, -1))(torch.randn(8, 8))
    assert kiln.metrics.generated_kernel_count == 1
    text = caplog.text
    assert "def call(args):" in text and 'extern "C" void kernel0' in text


def test_training_graphs_compile_forward_and_backward():
    kiln.metrics.reset()
    x = torch.randn(16, 32, requires_grad=True)
    w, b = torch.randn(32, requires_grad=True), torch.randn(32, requires_grad=True)
    _check(lambda x, w, b: F.gelu(F.layer_norm(x, (32,), w, b)), x, w, b)
    assert kiln.metrics.generated_kernel_count >= 2  # a forward and a backward kernel at least


def test_one_kernel_serves_every_size_of_a_dynamic_dim():
    cnt = CompileCounterWithBackend("kiln")
    fn = kiln.compile(lambda x, w: (torch.softmax(x, -1) * w).sum(0), backend=cnt,
                      dynamic=True)
    w = torch.randn(12)
    for n in (3, 7, 20, 64):
        x = torch.randn(n, 5, 12)
        torch.testing.assert_close(fn(x, w), (torch.softmax(x, -1) * w).sum(0))
    assert cnt.frame_count == 1


def test_automatic_dynamic_recompiles_once_then_serves_all_sizes():
    cnt = CompileCounterWithBackend("kiln")
    fn = kiln.compile(lambda x: (x.relu() + 1).sum(-1), backend=cnt)
    for n in (4, 5, 6, 9):
        x = torch.randn(n, 33)
        torch.testing.assert_close(fn(x), (x.relu() + 1).sum(-1))
    assert cnt.frame_count == 2


def test_matmul_is_an_extern_call_between_fused_kernels():
    x = torch.randn(8, 16, requires_grad=True)
    w = torch.randn(32, 16, requires_grad=True)
    b = torch.randn(32, requires_grad=True)
    _check(lambda x, w, b: F.silu(F.linear(x.tanh(), w, b)).softmax(-1), x, w, b)


def test_ops_without_a_lowering_run_as_aten_calls():
    idx = torch.tensor([3, 0, 2])
    x = torch.randn(5, 6, requires_grad=True)
    _check(lambda x: torch.cat([x[idx].exp(), x.cumsum(0)], 0).sin(), x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_forward_and_backward(dtype):
    x = torch.randn(6, 40, dtype=dtype, requires_grad=True)
    w = torch.randn(40, dtype=dtype, requires_grad=True)
    tol = {"atol": 2e-2, "rtol": 2e-2} if dtype in (torch.float16, torch.bfloat16) else None
    _check(lambda x, w: (F.layer_norm(x, (40,)) * w).softmax(-1), x, w, dtype_tol=tol)


def test_integer_and_bool_programs():
    a = torch.randint(-5, 5, (7, 9), dtype=torch.int32)
    b = torch.randint(-5, 5, (9,), dtype=torch.int64)
    fn = kiln.compile(lambda a, b: ((a * b + 1) > 0, (a - b).abs().sum(1), (a & 3) | 4))
    for got, want in zip(fn(a, b), ((a * b + 1) > 0, (a - b).abs().sum(1), (a & 3) | 4)):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want)


def test_outputs_have_eager_strides():
    fn = kiln.compile(lambda x: ((x + 1).t(), x.permute(1, 0).contiguous() * 2, x.sum(0)))
    x = torch.randn(5, 7)
    for got, want in zip(fn(x), ((x + 1).t(), x.permute(1, 0).contiguous() * 2, x.sum(0))):
        assert got.stride() == want.stride()
        torch.testing.assert_close(got, want)


def test_empty_and_scalar_tensors():
    fn = kiln.compile(lambda x, y: (x.exp() + 1, x.sum(), y * 3, y.sum()))
    x, y = torch.randn(0, 4), torch.tensor(2.5)
    for got, want in zip(fn(x, y), (x.exp() + 1, x.sum(), y * 3, y.sum())):
        torch.testing.assert_close(got, want)


def test_parallel_loop_body_is_outlined_with_restrict_pointers(caplog):
    # OpenMP's outlined parallel region loses __restrict, and gcc then keeps a load of a
    # per-row value inside the inner loop, which stays scalar (softmax's backward ran 3.5x
    # slower): the body is an inlined function with restrict parameters again
    with kiln.logs.set_logs(output_code=True), caplog.at_level(logging.INFO, "kiln"):
        x = torch.randn(256, 256)
        s = x.sum(-1, keepdim=True)
        _check(lambda x, s: (x / s).exp().sum(-1), x, s, backward=False)
    text = caplog.text
    assert "static inline __attribute__((always_inline)) void kernel0_body(int64_t x0, " \
           "const float* __restrict p_arg" in text
    assert "#pragma omp parallel for" in text and "kernel0_body(x0, " in text


def test_long_pointwise_chain_compiles():
    # 500 chained adds: stored to memory every MAX_INLINE_DEPTH nodes (inlined whole, the
    # nested loaders exceeded Python's recursion limit and the graph ran op by op)
    from kiln.counters import counters

    def fn(x):
        out = x
        for _ in range(500):
            out = out + x * 0.5
        return out

    counters.clear()
    _check(fn, torch.randn(8, 8, requires_grad=True))
    assert counters["codegen"]["graphs_compiled"] == 2
    assert counters["codegen"]["graphs_run_by_aten"] == 0


def test_slice_scatter_of_symbolic_sizes_adds_no_guards():
    # out[:a.size(0)] += a on out of size max(a, b): torch's slice_scatter decomposition
    # guarded on end == size, and kiln recompiled when the longer input changed sides
    def pad_to_longest(a, b):
        out = torch.zeros(max(a.size(0), b.size(0)), a.size(1))
        out[: a.size(0)] += a
        out[: b.size(0)] -= b
        return out

    cnt = CompileCounterWithBackend("kiln")
    compiled = kiln.compile(pad_to_longest, backend=cnt)
    for n, m in ((2, 3), (3, 5), (6, 4), (7, 2)):
        a, b = torch.randn(n, 3), torch.randn(m, 3)
        torch.testing.assert_close(compiled(a, b), pad_to_longest(a, b))
    assert cnt.frame_count == 2  # the static first call, then one dynamic graph


def test_detached_output_beside_its_source_needs_no_grad():
    # detach stays detach for AOT autograd's view analysis (decomposed to alias it made the
    # detached output differentiable)
    x = torch.randn(4, 3, requires_grad=True)

    def fn(x):
        y = x * 2
        return y + 1, y.detach()

    out, detached = kiln.compile(fn)(x)
    assert out.requires_grad and not detached.requires_grad
    torch.testing.assert_close(detached, x.detach() * 2)


def test_softmax_computes_each_exponential_once(caplog):
    # the sum loop stores exp(x - max) where the output goes; the division loop reads it
    # back (as eager's softmax), instead of a second libm call per element
    with kiln.logs.set_logs(output_code=True), caplog.at_level(logging.INFO, "kiln"):
        _check(lambda x: torch.softmax(x, -1), torch.randn(64, 300), backward=False)
    # (the log holds the wrapper and the kernels, not the prelude's declarations)
    assert caplog.text.count("expf(") == 1


def test_division_by_a_row_value_multiplies_by_its_reciprocal(caplog):
    # softmax's division by the row's sum: one reciprocal per row, a multiplication per
    # element (as eager's softmax); a divisor that changes along the row stays a division
    def fn(x, y):
        return torch.softmax(x, -1), x / y, x / 3.0
    x, y = torch.randn(16, 300), torch.rand(16, 300) + 0.5
    with kiln.logs.set_logs(output_code=True), caplog.at_level(logging.INFO, "kiln"):
        _check(fn, x, y, backward=False)
    assert caplog.text.count("* ((float)1 / ") == 1
    assert " / 3.0f)" in caplog.text


def test_float_exp_is_within_a_few_ulp_of_the_exact_exp():
    # the prelude's kiln_expf (kiln's own with AVX-512: within 1 ulp; else libmvec's, whose
    # 8-lane AVX2 expf is up to 2.4 ulp off), over every 997th float in [-104, 89] of both
    # signs with odd sizes for the loop tails, against float64's exp; denormal results,
    # overflow, NaN, infinities and -0 as eager
    bits = torch.arange(0x00000001, 0x42D00000, 997, dtype=torch.int32)
    x = bits.view(torch.float32)
    x = torch.cat([x[x <= 89], -x, torch.tensor([0.0, -0.0, 88.72, 88.73, -87.5, -103.9,
                                                 float("nan"), float("inf"), -float("inf")])])
    for n in (x.numel(), 1001, 17, 3):
        got = kiln.compile(lambda t: torch.exp(t))(x[:n])
        want = torch.exp(x[:n].double())
        representable = want < torch.finfo(torch.float32).max
        ulp = torch.ldexp(torch.ones_like(want), (torch.frexp(want.float())[1].double() - 24)
                          .clamp(min=-149))
        err = ((got.double() - want).abs() / ulp)[representable & want.isfinite()]
        assert err.max() <= 3, n
        torch.testing.assert_close(got, torch.exp(x[:n]), atol=1e-44, rtol=1.3e-6,
                                   equal_nan=True)
    special = kiln.compile(lambda t: torch.exp(t))(x[-9:])
    assert special[:2].tolist() == [1.0, 1.0] and special[3] == float("inf")
    assert special[-3].isnan() and special[-2] == float("inf") and special[-1] == 0


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split()}
    except OSError:
        return set()


@pytest.mark.parametrize("lanes", [16, 8])
def test_each_vector_width_of_kiln_exp(lanes):
    # gcc picks the width (16 lanes here, 8 on Intel's server chips, which prefer 256-bit
    # vectors): each of kiln's variants called directly, within 1 ulp of the exact exp
    need = {16: "avx512f", 8: "avx512vl"}[lanes]
    if need not in _cpu_flags():
        pytest.skip(f"needs {need}")
    from kiln.codegen.cpp_compiler import compile_cpp
    from kiln.codegen.cpp_prelude import prelude

    isa, vec = {16: ("e", "kiln_v16sf"), 8: ("d", "kiln_v8sf")}[lanes]
    lib = compile_cpp(prelude() + f"""
extern "C" void apply(const float* a, float* b, int64_t n) {{
    for (int64_t i = 0; i < n; i += {lanes}) {{
        {vec} v;
        std::memcpy(&v, a + i, sizeof(v));
        v = _ZGV{isa}N{lanes}v_kiln_expf(v);
        std::memcpy(b + i, &v, sizeof(v));
    }}
}}
""")
    bits = torch.arange(0x00000001, 0x42D00000, 331, dtype=torch.int32)
    x = bits.view(torch.float32)
    x = torch.cat([x[x <= 89], -x, torch.tensor([0.0, -0.0, float("nan"), float("inf"),
                                                 -float("inf"), 88.73, -103.9, -150.0])])
    x = torch.cat([x, torch.zeros((-x.numel()) % 16)])
    out = torch.empty_like(x)
    lib.function("apply", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64])(
        x.data_ptr(), out.data_ptr(), x.numel())
    want = torch.exp(x.double())
    ulp = torch.ldexp(torch.ones_like(want), (torch.frexp(want.float())[1].double() - 24)
                      .clamp(min=-149))
    representable = (want < torch.finfo(torch.float32).max) & want.isfinite()
    assert ((out.double() - want).abs() / ulp)[representable].max() <= 1
    torch.testing.assert_close(out, torch.exp(x), atol=1e-44, rtol=1.3e-6, equal_nan=True)


@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump")
def test_exp_in_a_loop_with_selects_calls_the_vector_exp():
    # gelu's backward: exp next to erf's selects. kiln_expf must be declared const, or gcc
    # cannot if-convert the loop and calls only the scalar exp, per element (4x slower)
    def fn(x, b):
        return F.gelu(x + b)

    x = torch.randn(64, 1024, requires_grad=True)
    b = torch.randn(1024, requires_grad=True)
    with fresh_cache() as root:
        torch.autograd.grad(kiln.compile(fn)(x, b), (x, b), torch.ones(64, 1024))
        calls = set()
        for lib in Path(root).rglob("*.so"):
            dump = subprocess.run(["objdump", "-d", str(lib)], capture_output=True,
                                  text=True).stdout
            calls |= {line.split()[-1] for line in dump.splitlines() if "call" in line}
    # vector-ABI names (_ZGVeN16v_kiln_expf, or libmvec's _ZGVdN8v_expf without AVX-512);
    # a loop tail may still call the scalar one
    assert any(c.startswith("<_ZGV") and "expf" in c for c in calls), calls


def test_float_erf_is_within_a_few_ulp_of_the_exact_erf():
    # the prelude's rational kiln_erff, over every 97th float from 1e-30 to 10 and both
    # signs, against float64's erf; NaN, infinities and -0 as eager
    bits = torch.arange(0x0DA24260, 0x41200000, 97, dtype=torch.int32)
    x = bits.view(torch.float32)
    x = torch.cat([x, -x, torch.tensor([0.0, -0.0, float("nan"), float("inf"), -float("inf")])])
    got = kiln.compile(lambda t: torch.erf(t))(x)
    want = torch.erf(x.double())
    finite = want.isfinite()
    ulp = torch.ldexp(torch.ones_like(want), torch.frexp(want.float())[1].double() - 24)
    err = ((got.double() - want).abs() / ulp)[finite & (want != 0)]
    assert err.max() <= 7
    assert got[-3].isnan() and got[-2] == 1 and got[-1] == -1
    assert torch.equal(got[-5:-3].signbit(), torch.tensor([False, True]))
