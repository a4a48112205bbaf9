"""The ``warm_start`` benchmark (issue 7): a new process compiling the GPT-2-shaped block
forward+backward to its first result, with an empty disk cache (cold) and with the disk
cache a previous process filled (warm), for kiln and for ``torch.compile`` (inductor, its
FX graph cache on, as by default). Each figure is one child process, timed inside it from
before ``compile`` to the end of ``backward`` (imports excluded, the same for both).

Rows: kiln warm / kiln cold (target <= 0.1) and kiln warm / torch.compile warm (target <=
0.5); the cold times are in the notes. A third row times kiln's warm start in a process
that imported ``torch._dynamo`` before the timer: torch's ``FakeTensorMode`` and
``ShapeEnv`` import it on first use, so a process that captures pays it (as torch.compile
does); kiln's persistent frame cache (kiln/capture/persist.py) loads the frame without
capturing, so the two warm rows should be equal.
Opt-in (``--only warm_start``): torch's cold compile takes tens of seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from typing import TYPE_CHECKING

from benchmarks.timing import KILN, TORCH, Stats

if TYPE_CHECKING:
    from benchmarks.run import Row, Settings

CHILD = textwrap.dedent("""
    import sys, time
    import torch
    torch.set_num_threads({threads})
    import kiln
    from benchmarks.codegen import _block
    module, args = _block()
    if sys.argv[1] == "kiln-preimported":
        import torch._dynamo  # what torch's FakeTensorMode and ShapeEnv import on first use
    start = time.perf_counter()
    if sys.argv[1].startswith("kiln"):
        compiled = kiln.compile(module)
    else:
        compiled = torch.compile(module, backend="inductor")
    compiled(*args).backward()
    print(time.perf_counter() - start)
""")


def _child(compiler: str, cache_root: str, threads: int) -> float:
    env = {**os.environ, "KILN_CACHE_DIR": os.path.join(cache_root, "kiln"),
           "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache_root, "inductor"),
           "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", CHILD.format(threads=threads), compiler],
                         env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"warm_start child ({compiler}) failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def bench_warm_start(settings: Settings) -> list[Row]:
    import torch

    from benchmarks.run import _row

    threads = torch.get_num_threads()
    rounds = 1 if settings.rounds < 5 else 2
    cold: dict[str, list[float]] = {KILN: [], TORCH: []}
    warm: dict[str, list[float]] = {KILN: [], TORCH: []}
    preimported: list[float] = []
    for _ in range(rounds):
        for name, compiler in ((KILN, "kiln"), (TORCH, "torch")):
            with tempfile.TemporaryDirectory(prefix="kiln-warm-") as root:
                cold[name].append(_child(compiler, root, threads))
                warm[name].append(_child(compiler, root, threads))
                warm[name].append(_child(compiler, root, threads))
                if name == KILN:
                    preimported.append(_child("kiln-preimported", root, threads))
                    preimported.append(_child("kiln-preimported", root, threads))
    warm_stats = {name: Stats(tuple(s)) for name, s in warm.items()}
    cold_stats = {name: Stats(tuple(s)) for name, s in cold.items()}
    stat = settings.stat
    note = (f"cold: kiln {cold_stats[KILN].get(stat) * 1e3:.0f} ms, torch.compile "
            f"{cold_stats[TORCH].get(stat) * 1e3:.0f} ms")
    own = warm_stats[KILN].get(stat) / cold_stats[KILN].get(stat)
    vs_torch = warm_stats[KILN].get(stat) / warm_stats[TORCH].get(stat)
    case = "GPT2Block fwd+bwd, new process, disk cache filled, first result"
    return [_row("warm_start", case, "ms", warm_stats, settings, "kiln warm/kiln cold", own,
                 target=0.1, note=note),
            _row("warm_start", case, "ms", warm_stats, settings, "kiln warm/torch warm",
                 vs_torch, target=0.5, note=note),
            _row("warm_start", case + ", torch._dynamo imported before", "ms",
                 {KILN: Stats(tuple(preimported)), TORCH: warm_stats[TORCH]}, settings,
                 "kiln warm/kiln cold", Stats(tuple(preimported)).get(stat)
                 / cold_stats[KILN].get(stat), target=0.1, note=note)]


__all__ = ["bench_warm_start"]
