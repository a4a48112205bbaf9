"""The benchmark runner's plumbing (benchmarks/run.py, benchmarks/timing.py), on its cheapest
benchmark: interleaved timing, the table and the CSV with the machine's description."""

from __future__ import annotations

import csv
import math

import pytest
import torch

import kiln
from benchmarks import kernels, run, timing


def test_per_call_interleaves_and_counts_rounds() -> None:
    calls: list[str] = []
    variants = {name: (lambda n=name: calls.append(n)) for name in ("a", "b", "c")}
    stats = timing.per_call(variants, (), rounds=4, batch_seconds=1e-4, warmup=2)
    assert set(stats) == {"a", "b", "c"}
    assert all(len(s.samples) == 4 and s.min <= s.median for s in stats.values())
    # after warmup, rounds alternate between variants rather than running each in a block
    timed = calls[3 * 3:]  # warmup: 2 calls + 1 calibration call per variant
    switches = sum(1 for x, y in zip(timed, timed[1:]) if x != y)
    assert switches >= 4 * 3 - 1


def test_first_call_resets_both_compilers() -> None:
    import kiln

    counter = kiln.testing.CompileCounter()

    def f(x):
        return x * 2

    x = torch.ones(3)
    makers = {"kiln": lambda: kiln.compile(f, backend=counter)}
    stats = timing.first_call(makers, (x,), rounds=2, warmup=1)
    assert len(stats["kiln"].samples) == 2
    assert counter.frame_count == 3  # every round compiled afresh


def test_run_overhead_writes_csv(tmp_path, capsys) -> None:
    threads = torch.get_num_threads()
    assert run.main(["--quick", "--only", "overhead", "--threads", "0", "--rounds", "2",
                     "--out-dir", str(tmp_path), "--name", "t"]) == 0
    assert torch.get_num_threads() == threads
    out = capsys.readouterr().out
    assert "overhead kiln/torch" in out and "torch_threads" in out
    (path,) = tmp_path.glob("t-quick-*.csv")
    with open(path) as f:
        (row,) = list(csv.DictReader(f))
    assert row["benchmark"] == "overhead" and row["stat"] == "min"
    assert float(row["eager_min"]) <= float(row["eager_median"])
    assert row["torch_version"] == torch.__version__ and row["cpu_count"]
    assert row["python_version"] and row["platform"] and row["date"]
    times = ("eager", "torch", "kiln", "eager_min", "torch_min", "kiln_min", "eager_median",
             "torch_median", "kiln_median")
    assert all(float(row[k]) > 0 for k in times)
    assert math.isfinite(float(row["value"])) and row["target"] == "0.5"
    assert row["met"] in ("yes", "NO")


@pytest.mark.parametrize("case", kernels.CASES, ids=lambda c: c.name)
def test_kernel_cases_equal_eager_through_kiln(case) -> None:
    """The kernels benchmark's cases, small, through kiln's default backend: outputs and
    gradients as eager's (issue 6's code generator is measured on these)."""
    args = case.inputs(scale=64, requires_grad=case.backward)
    compiled = kiln.compile(case.fn)
    expected, actual = case.fn(*args), compiled(*args)
    torch.testing.assert_close(actual, expected)
    if case.backward:
        tangent = torch.randn(expected.shape)
        torch.testing.assert_close(torch.autograd.grad(actual, args, tangent),
                                   torch.autograd.grad(expected, args, tangent))
