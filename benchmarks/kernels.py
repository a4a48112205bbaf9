"""The ``kernels`` benchmark: the microbenchmarks of issue 6, measured for eager,
``torch.compile(backend="inductor")`` and ``kiln.compile`` (kiln's default backend) in one
run, with the machine's copy bandwidth as the yardstick.

Cases (each a memory-bound op a code generator should turn into one kernel): bias + GELU,
LayerNorm, RMSNorm, softmax, SiLU x mul, a residual add chain, sum / mean / var over the last
dimension and over the first. Each runs forward, and forward + backward (``autograd.grad``
of the output against a fixed tangent) where it has a backward.

Rows: per case, kiln's time over inductor's (target <= 1.25, i.e. no case below 0.8x
inductor's speed); then the geometric mean of those (target <= 1.0) and the smallest share of
the copy bandwidth kiln reaches on a forward case, as ``0.7 / share`` (target <= 1: at least
70%). The bytes a case must move are its inputs read once and its outputs written once; the
memory bandwidth is ``out.copy_(x)`` of a 256 MiB tensor (8x this CPU's L3), read plus
written bytes over time. The notes also give each share of an 8 MiB copy (as large as the
largest input), which runs from the cache at two to three times the memory's speed: the
cases' operands (16-32 MiB in all) sit partly in that cache.

Until kiln generates code (issue 6) its column runs the aten graphs op by op: these rows are
the baseline that work measures itself against.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

import kiln
from benchmarks.timing import EAGER, KILN, TORCH, per_call, reset_compilers

if TYPE_CHECKING:
    from benchmarks.run import Row, Settings

ROWS, COLS = 2048, 1024  # 8 MiB per float32 operand: beyond this CPU's caches


def bias_gelu(x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.gelu(x + b)


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], w, b)


def rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=-1)


def silu_mul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.silu(x) * y


def residual_chain(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((x + a) * 0.5 + b).relu() + x


def sum_last(x: torch.Tensor) -> torch.Tensor:
    return x.sum(-1)


def mean_last(x: torch.Tensor) -> torch.Tensor:
    return x.mean(-1)


def var_last(x: torch.Tensor) -> torch.Tensor:
    return x.var(-1)


def sum_first(x: torch.Tensor) -> torch.Tensor:
    return x.sum(0)


def mean_first(x: torch.Tensor) -> torch.Tensor:
    return x.mean(0)


def var_first(x: torch.Tensor) -> torch.Tensor:
    return x.var(0)


@dataclass(frozen=True)
class KernelCase:
    name: str
    fn: Callable[..., torch.Tensor]
    shapes: tuple[tuple[int, ...], ...]  # of the inputs
    backward: bool = True

    def inputs(self, scale: int = 1, requires_grad: bool = False) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(0)
        return tuple(torch.randn(tuple(max(1, s // scale) for s in shape),
                                 generator=generator).requires_grad_(requires_grad)
                     for shape in self.shapes)


def _cases() -> list[KernelCase]:
    big, row = (ROWS, COLS), (COLS,)
    return [
        KernelCase("bias+gelu", bias_gelu, (big, row)),
        KernelCase("layernorm", layer_norm, (big, row, row)),
        KernelCase("rmsnorm", rms_norm, (big, row)),
        KernelCase("softmax", softmax, (big,)),
        KernelCase("silu*mul", silu_mul, (big, big)),
        KernelCase("residual chain", residual_chain, (big, big, big)),
        KernelCase("sum(-1)", sum_last, (big,), backward=False),
        KernelCase("mean(-1)", mean_last, (big,), backward=False),
        KernelCase("var(-1)", var_last, (big,), backward=False),
        KernelCase("sum(0)", sum_first, (big,), backward=False),
        KernelCase("mean(0)", mean_first, (big,), backward=False),
        KernelCase("var(0)", var_first, (big,), backward=False),
    ]


CASES = _cases()


def _bytes(tensors: Sequence[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def forward_variants(fn: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
    return {EAGER: fn, TORCH: torch.compile(fn, backend="inductor"), KILN: kiln.compile(fn)}


def backward_variants(fn: Callable[..., Any], inputs: Sequence[torch.Tensor],
                      tangent: torch.Tensor) -> dict[str, Callable[..., Any]]:
    """Forward + ``autograd.grad`` against ``tangent`` for each variant."""
    def with_backward(compiled: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any) -> Any:
            return torch.autograd.grad(compiled(*args), inputs, tangent)
        return step

    return {name: with_backward(f) for name, f in forward_variants(fn).items()}


def _check(variants: dict[str, Callable[..., Any]], args: Sequence[Any]) -> None:
    expected = variants[EAGER](*args)
    for name, fn in variants.items():
        torch.testing.assert_close(fn(*args), expected, rtol=1e-4, atol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")


MEMORY_COPY_ELEMENTS = 64 * 2**20  # 256 MiB of floats: beyond any cache


def copy_bandwidth(settings: Settings, elements: int = ROWS * COLS) -> float:
    """Bytes per second of ``out.copy_(x)`` (read plus written) on ``elements`` floats."""
    x = torch.randn(elements)
    out = torch.empty_like(x)
    stats = per_call({EAGER: out.copy_}, (x,), rounds=settings.rounds,
                     batch_seconds=settings.batch_seconds, warmup=5)
    return 2 * _bytes([x]) / stats[EAGER].get("min")


def bench_kernels(settings: Settings) -> list[Row]:
    from benchmarks.run import Row, _row

    rows: list[Row] = []
    bandwidth = copy_bandwidth(settings, MEMORY_COPY_ELEMENTS)
    cache_bandwidth = copy_bandwidth(settings)
    ratios, shares = [], []
    for case in CASES:
        for backward in ([False, True] if case.backward else [False]):
            reset_compilers()
            args = case.inputs(requires_grad=backward)
            if backward:
                tangent = torch.randn(case.fn(*args).shape)
                variants = backward_variants(case.fn, args, tangent)
            else:
                variants = forward_variants(case.fn)
            _check(variants, args)
            stats = per_call(variants, args, rounds=settings.rounds,
                             batch_seconds=settings.batch_seconds, warmup=3)
            ratio = stats[KILN].get(settings.stat) / stats[TORCH].get(settings.stat)
            ratios.append(ratio)
            note = ""
            if not backward:
                with torch.no_grad():
                    moved = _bytes([*args, case.fn(*args)])
                share = moved / stats[KILN].get("min") / bandwidth
                shares.append((share, case.name))
                # (eager's and inductor's shares say whether the case is bound by memory
                # at all on this machine, or by its arithmetic: exp, erf)
                others = ", ".join(f"{name} {moved / stats[name].get('min') / bandwidth:.0%}"
                                   for name in (EAGER, TORCH))
                note = (f"kiln {moved / stats[KILN].get('min') / 1e9:.1f} GB/s = "
                        f"{share:.0%} of memory copy ({bandwidth / 1e9:.1f} GB/s; "
                        f"{others}), {moved / stats[KILN].get('min') / cache_bandwidth:.0%} "
                        f"of the 8 MiB copy ({cache_bandwidth / 1e9:.1f} GB/s)")
            shape = "x".join(map(str, case.shapes[0]))
            label = f"{case.name} {'fwd+bwd' if backward else 'fwd'} {shape}"
            rows.append(_row("kernels", label, "us", stats, settings, "kiln/inductor", ratio,
                             target=1.25, note=note))
    geomean = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    rows.append(Row("kernels", f"geomean over {len(ratios)} cases", "", settings.stat, None,
                    None, None, "kiln/inductor", geomean, 1.0))
    worst_share, worst = min(shares)
    rows.append(Row("kernels", "lowest memory-bandwidth share (forward)", "", settings.stat, None,
                    None, None, "0.7/share", 0.7 / worst_share, 1.0,
                    note=f"{worst}: {worst_share:.0%} of {bandwidth / 1e9:.1f} GB/s"))
    return rows


__all__ = ["CASES", "KernelCase", "bench_kernels", "copy_bandwidth"]
