"""``python -m benchmarks.run``: eager vs torch.compile vs kiln.compile, side by side.

Every benchmark runs the three variants in this one process, interleaved round by round
(benchmarks/timing.py), all with ``backend="eager"`` so that what differs is the frontend:
capture, guards and the per-call path, not generated code.

Benchmarks (``--only NAME``, repeatable):

* ``overhead``  -- per-call cost of ``x + y`` on 10-element tensors; the figure is kiln's
  overhead over eager divided by torch.compile's (target <= 0.5).
* ``linear50``  -- an nn.Sequential of 50 Linear(16, 16) on a (4, 16) input, under
  ``torch.no_grad()`` and with grad (target: kiln <= torch.compile).
* ``capture``   -- compile to first result of the GPT-2-shaped block after resetting both
  compilers (target: kiln <= torch.compile).
* ``block``     -- steady-state calls of the GPT-2-shaped block with one input.
* ``suite``     -- steady-state calls of the other models in benchmarks/models.py.
* ``dynamic``   -- the GPT-2-shaped block called with 20 sequence lengths, from a fresh
  compile: total time (compiles included) and the graphs each compiler built (targets: kiln
  <= torch.compile in time, at most 2 compiles).
* ``graph_break`` -- two GPT-2-shaped blocks with a ``print`` between them, against the same
  model without it, both compiled by kiln (target: >= 0.95x the speed).
* ``train``     -- a training step (forward, loss, backward, SGD) of the GPT-2-shaped block
  with ``backend="aot_eager"`` (target: kiln <= 1.2x eager), and the memory saved for the
  backward and the peak memory of a step with kiln's min-cut partitioner
  (benchmarks/training.py; target: peak <= eager's).
* ``kernels``   -- issue 6's microbenchmarks (bias+GELU, LayerNorm, RMSNorm, softmax, SiLU x
  mul, a residual chain, sum/mean/var over either dimension), forward and backward, kiln
  (default backend) against ``torch.compile(backend="inductor")``, and the share of the
  machine's copy bandwidth kiln reaches (benchmarks/kernels.py). Not in the default set.
* ``codegen_train`` -- a GPT-2-block training step, eager vs inductor vs kiln's default backend
  (target: kiln faster than eager); ``cold_compile`` -- compile to the first forward+backward
  result of that block with empty caches (target: kiln <= 0.2x torch.compile's time)
  (benchmarks/codegen.py). Not in the default set.
* ``warm_start`` -- a new process compiling that block to its first result with the disk
  cache a previous process filled, kiln against its own cold time (target <= 0.1x) and
  against torch.compile's warm start (target <= 0.5x) (benchmarks/warm_start.py). Not in
  the default set.

Prints a table and writes every figure, with the min and the median over rounds and the
machine's description, to ``benchmarks/results/<name>-<date>.csv`` (``--name`` defaults to
the device; ``--quick`` runs fewer rounds and adds ``-quick`` to the name). The table shows
the min over rounds (``--stat median`` for the median): on a shared machine the samples are
bimodal (rounds that coincide with another process's work take up to 3x longer) and the min is
the steadier estimate of an uncontended call. torch runs with one
intra-op thread unless ``--threads`` says otherwise: on a small shared CPU, intra-op threads
waiting on each other make per-call times of small ops swing by 10x.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import kiln
from benchmarks import codegen, kernels, models, training, warm_start
from benchmarks.timing import (
    EAGER,
    KILN,
    TORCH,
    Stats,
    check_same,
    compile_variants,
    describe_machine,
    device_slug,
    first_call,
    from_fresh,
    graph_counts,
    machine_info,
    per_call,
    reset_compilers,
    set_threads,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Settings:
    rounds: int = 15            # interleaved rounds of per-call timing
    batch_seconds: float = 0.03  # length of one timed batch of calls (slowest variant)
    capture_rounds: int = 5     # interleaved rounds of first-call timing
    stat: str = "min"           # what the table shows per variant: "min" or "median"

    @staticmethod
    def quick() -> Settings:
        return Settings(rounds=7, batch_seconds=0.01, capture_rounds=3)


@dataclass
class Row:
    """One line of the table: a case measured for the three variants and its figure."""

    benchmark: str
    case: str
    unit: str                        # "us" or "ms"
    stat: str                        # which statistic eager/torch/kiln and value use
    eager: float | None              # in unit
    torch: float | None
    kiln: float | None
    metric: str                      # what ``value`` is
    value: float
    target: float | None = None      # value must be <= target
    eager_min: float | None = None
    torch_min: float | None = None
    kiln_min: float | None = None
    eager_median: float | None = None
    torch_median: float | None = None
    kiln_median: float | None = None
    rounds: int = 0
    note: str = ""

    @property
    def met(self) -> str:
        if self.target is None:
            return ""
        return "yes" if self.value <= self.target else "NO"


_SCALE = {"us": 1e6, "ms": 1e3}


def _row(benchmark: str, case: str, unit: str, stats: dict[str, Stats], settings: Settings,
         metric: str, value: float, target: float | None = None, note: str = "") -> Row:
    scale = _SCALE[unit]

    def get(name: str, stat: str) -> float | None:
        return stats[name].get(stat) * scale if name in stats else None

    rounds = max(len(s.samples) for s in stats.values())
    return Row(benchmark, case, unit, settings.stat,
               *(get(name, settings.stat) for name in (EAGER, TORCH, KILN)),
               metric, value, target,
               *(get(name, "min") for name in (EAGER, TORCH, KILN)),
               *(get(name, "median") for name in (EAGER, TORCH, KILN)),
               rounds, note)


def _ratio(stats: dict[str, Stats], a: str, b: str, settings: Settings) -> float:
    return stats[a].get(settings.stat) / stats[b].get(settings.stat)


def _steady(variants: dict[str, Callable[..., Any]], args: tuple[Any, ...], settings: Settings,
            grad: bool) -> tuple[dict[str, Stats], str]:
    """Check the compiled variants against eager, time all three; note any recompile."""
    with torch.set_grad_enabled(grad):
        check_same(variants, args)
        before = graph_counts()
        stats = per_call(variants, args, rounds=settings.rounds,
                         batch_seconds=settings.batch_seconds)
        after = graph_counts()
    changed = [name for name in before if after[name] != before[name]]
    note = f"recompiled while timing: {', '.join(changed)}" if changed else ""
    return stats, note


# ----------------------------------------------------------------------------------------------
# The benchmarks


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x + y


def bench_overhead(settings: Settings) -> list[Row]:
    reset_compilers()
    args = (torch.randn(10), torch.randn(10))
    stats, note = _steady(compile_variants(add), args, settings, grad=True)
    eager = stats[EAGER].get(settings.stat)
    torch_over = stats[TORCH].get(settings.stat) - eager
    kiln_over = stats[KILN].get(settings.stat) - eager
    ratio = kiln_over / torch_over if torch_over > 0 else float("inf")
    note = note or (f"overhead over eager: torch {torch_over * 1e6:.2f} us, "
                    f"kiln {kiln_over * 1e6:.2f} us")
    return [_row("overhead", "x + y (10 elements)", "us", stats, settings,
                 "overhead kiln/torch", ratio,
                 target=0.5, note=note)]


def bench_linear50(settings: Settings) -> list[Row]:
    rows = []
    model, make_inputs = models.make_linear_stack(depth=50, width=16, batch=4)
    args = make_inputs(0)
    for grad in (False, True):
        reset_compilers()
        stats, note = _steady(compile_variants(model), args, settings, grad=grad)
        case = "Sequential(50 x Linear(16,16)), " + ("grad" if grad else "no_grad")
        rows.append(_row("linear50", case, "us", stats, settings, "kiln/torch",
                         _ratio(stats, KILN, TORCH, settings), target=1.0, note=note))
    return rows


def bench_capture(settings: Settings) -> list[Row]:
    model, make_inputs = models.make_gpt2_block()
    model.eval()
    args = make_inputs(0)
    makers = {
        TORCH: lambda: torch.compile(model, backend="eager"),
        KILN: lambda: kiln.compile(model, backend="eager"),
    }
    stats = first_call(makers, args, rounds=settings.capture_rounds)
    return [_row("capture", "GPT2Block first call (eval, grad)", "ms", stats, settings,
                 "kiln/torch", _ratio(stats, KILN, TORCH, settings), target=1.0)]


def bench_block(settings: Settings) -> list[Row]:
    rows = []
    model, make_inputs = models.make_gpt2_block()
    model.eval()
    args = make_inputs(0)
    for grad in (False, True):
        reset_compilers()
        stats, note = _steady(compile_variants(model), args, settings, grad=grad)
        case = "GPT2Block (2x16x64), eval, " + ("grad" if grad else "no_grad")
        rows.append(_row("block", case, "us", stats, settings, "kiln/torch",
                         _ratio(stats, KILN, TORCH, settings), note=note))
    return rows


def bench_suite(settings: Settings) -> list[Row]:
    rows = []
    for name in ("resnet18", "gpt2", "lstm_tagger"):
        model, make_inputs = models.MODELS[name]()
        model.eval()
        reset_compilers()
        stats, note = _steady(compile_variants(model), make_inputs(0), settings, grad=False)
        rows.append(_row("suite", f"{name}, eval, no_grad", "us", stats, settings, "kiln/torch",
                         _ratio(stats, KILN, TORCH, settings), note=note))
    return rows


SEQUENCE_LENGTHS = (16, 12, 8, 5, 20, 7, 31, 9, 24, 13, 6, 17, 28, 10, 19, 11, 26, 15, 22, 30)


def bench_dynamic(settings: Settings) -> list[Row]:
    """Serving-style calls of one block with a new sequence length each time: automatic
    dynamic compiles a static graph, then one symbolic graph for every later length."""
    model, _ = models.make_gpt2_block()
    model.eval()
    calls = [(torch.randn(2, seq, 64, generator=torch.Generator().manual_seed(seq)),)
             for seq in SEQUENCE_LENGTHS]
    makers = {
        TORCH: lambda: torch.compile(model, backend="eager"),
        KILN: lambda: kiln.compile(model, backend="eager"),
    }
    graphs = {}
    with torch.no_grad():
        for name, make in makers.items():  # correctness, and the number of compiles
            reset_compilers()
            compiled = make()
            for args in calls:
                torch.testing.assert_close(compiled(*args), model(*args))
            graphs[name] = graph_counts()[name]
        stats = from_fresh(makers, calls, rounds=settings.capture_rounds)
    note = (f"graphs compiled: kiln {graphs[KILN]}, torch {graphs[TORCH]} (kiln target <= 2)"
            + ("" if graphs[KILN] <= 2 else " -- TARGET MISSED"))
    return [_row("dynamic", f"GPT2Block, {len(calls)} sequence lengths from fresh (eval, "
                 "no_grad)", "ms", stats, settings, "kiln/torch",
                 _ratio(stats, KILN, TORCH, settings), target=1.0, note=note)]


class TwoBlocks(torch.nn.Module):
    """Two GPT-2-shaped blocks; with ``talk=True`` forward prints between them (a graph
    break in the middle of forward)."""

    def __init__(self, talk: bool) -> None:
        super().__init__()
        self.first = models.GPT2Block(models.GPT2Config())
        self.second = models.GPT2Block(models.GPT2Config())
        self.talk = talk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.first(x)
        if self.talk:
            print("between the blocks", h.shape)
        return self.second(h)


def bench_graph_break(settings: Settings) -> list[Row]:
    """A print in the middle of forward costs a graph split, not an eager fallback: kiln on
    the printing model vs kiln on the same model without the print (target: >= 0.95x the
    speed, i.e. <= 1.053x the time). The eager and torch.compile columns print too."""
    quiet = TwoBlocks(talk=False).eval()
    talking = TwoBlocks(talk=True).eval()
    talking.load_state_dict(quiet.state_dict())
    _, make_inputs = models.make_gpt2_block()
    args = make_inputs(0)
    reset_compilers()
    variants = compile_variants(talking)
    quiet_kiln = kiln.compile(quiet, backend="eager")
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        check_same(variants, args)
        torch.testing.assert_close(quiet_kiln(*args), variants[EAGER](*args))
        stats = per_call({**variants, "kiln_quiet": quiet_kiln}, args, rounds=settings.rounds,
                         batch_seconds=settings.batch_seconds)
    ratio = _ratio(stats, KILN, "kiln_quiet", settings)
    note = (f"kiln without the print: {stats['kiln_quiet'].get(settings.stat) * 1e6:.0f} us; "
            f"graphs: {kiln.counters['stats']['unique_graphs']} (kiln, both models)")
    return [_row("graph_break", "2x GPT2Block, print between (eval, no_grad)", "us",
                 {k: v for k, v in stats.items() if k != "kiln_quiet"}, settings,
                 "kiln print/no-print time", ratio, target=round(1 / 0.95, 3), note=note)]


BENCHMARKS: dict[str, Callable[[Settings], list[Row]]] = {
    "overhead": bench_overhead,
    "linear50": bench_linear50,
    "capture": bench_capture,
    "block": bench_block,
    "suite": bench_suite,
    "graph_break": bench_graph_break,
    "dynamic": bench_dynamic,
    "train": training.bench_train,
    "kernels": kernels.bench_kernels,
    "codegen_train": codegen.bench_codegen_train,
    "cold_compile": codegen.bench_cold_compile,
    "warm_start": warm_start.bench_warm_start,
}
# run only when named with --only (minutes of inductor compiles)
OPT_IN = {"kernels", "codegen_train", "cold_compile", "warm_start"}


# ----------------------------------------------------------------------------------------------
# Output


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(rows: list[Row]) -> str:
    header = ["benchmark", "case", "unit", "eager", "torch", "kiln", "kiln/eager", "metric",
              "value", "target", "met"]
    lines = [header]
    for row in rows:
        kiln_vs_eager = (f"{row.kiln / row.eager:.2f}x" if row.kiln is not None and row.eager
                         else "-")
        lines.append([row.benchmark, row.case, row.unit, _fmt(row.eager), _fmt(row.torch),
                      _fmt(row.kiln), kiln_vs_eager, row.metric, f"{row.value:.2f}",
                      f"<= {row.target:g}" if row.target is not None else "", row.met])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {3, 4, 5, 6, 8}

    def render(line: list[str]) -> str:
        cells = [c.rjust(w) if i in numeric else c.ljust(w)
                 for i, (c, w) in enumerate(zip(line, widths))]
        return "  ".join(cells).rstrip()

    out = [render(lines[0]), render(["-" * w for w in widths])]
    out.extend(render(line) for line in lines[1:])
    notes = [f"  {row.benchmark}/{row.case}: {row.note}" for row in rows if row.note]
    if notes:
        out.append("")
        out.append("notes:")
        out.extend(notes)
    return "\n".join(out)


def write_csv(rows: list[Row], path: Path, info: dict[str, str], date: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    row_fields = [f for f in asdict(rows[0])] + ["met"] if rows else []
    fieldnames = ["date", *row_fields, *info]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        for row in rows:
            writer.writerow({"date": date, **asdict(row), "met": row.met, **info})


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    info: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def run(names: list[str], settings: Settings, *, echo: bool = True) -> Report:
    report = Report(info=machine_info())
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        rows = BENCHMARKS[name](settings)
        report.rows.extend(rows)
        if echo:
            print(f"  {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    report.seconds = time.perf_counter() - start
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a fast check)")
    parser.add_argument("--only", action="append", choices=list(BENCHMARKS), metavar="NAME",
                        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of per-call timing")
    parser.add_argument("--stat", choices=("min", "median"), default="min",
                        help="statistic over rounds shown per variant (default: min)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: steadier timings on a small, "
                             "shared CPU; 0 keeps torch's default)")
    parser.add_argument("--name", help="results file name (default: the device)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-csv", action="store_true", help="print only, write no CSV")
    args = parser.parse_args(argv)

    set_threads(args.threads)
    settings = Settings.quick() if args.quick else Settings()
    if args.rounds:
        settings.rounds = args.rounds
    settings.stat = args.stat
    names = args.only or [name for name in BENCHMARKS if name not in OPT_IN]
    date = datetime.date.today().isoformat()

    print("kiln benchmarks: eager vs torch.compile vs kiln.compile (backend 'eager' for "
          "both unless the case says: train uses aot_eager, kernels inductor/kiln)")
    print(describe_machine())
    print(f"  {'date':<15} {date}")
    print(f"  {'rounds':<15} {settings.rounds} per-call, {settings.capture_rounds} capture"
          f"{' (--quick)' if args.quick else ''}; {settings.stat} per variant, variants "
          "interleaved")
    print(flush=True)
    report = run(names, settings)
    print(format_table(report.rows))
    print(f"\n({report.seconds:.0f} s)")
    if not args.no_csv and report.rows:
        name = args.name or device_slug()
        if args.quick:
            name += "-quick"
        path = args.out_dir / f"{name}-{date}.csv"
        write_csv(report.rows, path, report.info, date)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
