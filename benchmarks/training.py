"""The ``train`` benchmark: a training step of the GPT-2-shaped block (forward, MSE loss,
backward, ``torch.optim.SGD`` update), in train mode (dropout on).

Variants, each with its own copy of the block and its own optimizer: eager,
``torch.compile(backend="aot_eager")``, ``kiln.compile(backend="aot_eager")`` (kiln's AOT
autograd with the min-cut partitioner, kiln/aot/partition_mincut.py, as torch's aot_eager),
and kiln with ``default_partition`` (``backend="aot_eager_default_partitioner"``). Before
anything is measured, one step of every variant from the same parameters and the same seed
must give eager's loss and updated parameters.

Rows (the kiln column is ``aot_eager``, i.e. min-cut; the default partitioner is in notes):

* step time (per_call, interleaved): target kiln/eager <= 1.2.
* saved for backward: bytes of the distinct storages autograd keeps for the backward during
  one forward, found with ``torch.autograd.graph.saved_tensors_hooks`` (which also sees what
  a compiled autograd.Function saves), without the parameters' and the inputs' storages
  (alive anyway). The figure is min-cut over the default partition (the note also gives
  both counted on the forward graphs).
* peak memory of a step above what is allocated when it starts. On CPU it comes from the
  profiler's allocation events (``profile_memory=True``): every allocation and free in
  order, whose running sum's maximum is the peak (CPU tensors are malloc'ed and freed as
  they are made and dropped; there is no caching allocator to hide them). On CUDA (when there
  is one) ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. Target:
  min-cut <= eager.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import kiln
from benchmarks import models
from benchmarks.timing import EAGER, KILN, TORCH, per_call, reset_compilers
from kiln.aot import aot_module_simplified, boxed_nop
from kiln.aot.partition import default_partition
from kiln.aot.partition_mincut import min_cut_rematerialization_partition

if TYPE_CHECKING:
    from benchmarks.run import Row, Settings

DEFAULT = "kiln_default"
BATCH, SEQ = 2, 64
LR = 1e-4


class BlockWithLoss(nn.Module):
    """The block and its loss in one module (what the compilers compile)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.block(x), target)


def aot_backend(partition_fn: Callable[..., Any],
                on_partition: Callable[[torch.fx.GraphModule, int], None] | None = None
                ) -> Callable[..., Any]:
    """A kiln backend: AOT autograd with ``partition_fn``, graphs run as they are;
    ``on_partition(forward_graph, num_fwd_outputs)`` sees each forward graph."""
    def partition(joint: torch.fx.GraphModule, inputs: Any, *, num_fwd_outputs: int,
                  **kw: Any) -> Any:
        fw, bw = partition_fn(joint, inputs, num_fwd_outputs=num_fwd_outputs, **kw)
        if on_partition is not None:
            on_partition(fw, num_fwd_outputs)
        return fw, bw

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any], **kw: Any) -> Any:
        return aot_module_simplified(gm, example_inputs, fw_compiler=boxed_nop,
                                     partition_fn=partition)

    return backend


class Trainer:
    """One variant: a copy of the model, compiled or not, and its SGD optimizer."""

    def __init__(self, model: nn.Module, compile_fn: Callable[[nn.Module], Any] | None) -> None:
        self.model = copy.deepcopy(model)
        self.run = compile_fn(self.model) if compile_fn else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR)

    def step(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.run(x, target)
        loss.backward()
        self.optimizer.step()
        return loss

    def load(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in self.model.state_dict().items():
                value.copy_(state[name])


def make_trainers(model: nn.Module) -> dict[str, Trainer]:
    return {
        EAGER: Trainer(model, None),
        TORCH: Trainer(model, lambda m: torch.compile(m, backend="aot_eager")),
        KILN: Trainer(model, lambda m: kiln.compile(m, backend="aot_eager")),
        DEFAULT: Trainer(model, lambda m: kiln.compile(
            m, backend="aot_eager_default_partitioner")),
    }


def forward_graph_bytes(module: nn.Module, args: tuple[torch.Tensor, ...],
                        partition_fn: Callable[..., Any]) -> int:
    """What ``partition_fn``'s forward graph of ``module`` saves (graph_saved_bytes)."""
    found: list[int] = []
    reset_compilers()
    Trainer(module, lambda m: kiln.compile(m, backend=aot_backend(
        partition_fn, lambda fw, n: found.append(graph_saved_bytes(fw, n))))).step(*args)
    return found[0]


def check_steps(trainers: dict[str, Trainer], args: tuple[torch.Tensor, ...],
                state: dict[str, torch.Tensor]) -> None:
    """Every variant's step, from ``state`` and one seed, gives eager's loss and parameters
    (the steps before compile the variants; this one runs the compiled code)."""
    results = {}
    for name, trainer in trainers.items():
        trainer.load(state)
        torch.manual_seed(0)
        loss = trainer.step(*args)
        results[name] = (loss.detach(), dict(trainer.model.named_parameters()))
    for name, result in results.items():
        torch.testing.assert_close(result, results[EAGER], msg=lambda m, n=name: f"{n}: {m}")


def _storages(tensors: Iterable[torch.Tensor]) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def saved_bytes(trainer: Trainer, args: tuple[torch.Tensor, ...]) -> tuple[int, int]:
    """(bytes, number) of distinct storages saved for the backward by one forward, besides
    the parameters' and the inputs'."""
    alive = _storages([*trainer.model.parameters(), *trainer.model.buffers(), *args])
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in alive:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = trainer.run(*args)
    del loss
    return sum(saved.values()), len(saved)


def graph_saved_bytes(forward: torch.fx.GraphModule, num_fwd_outputs: int) -> int:
    """Bytes of a forward graph's saved tensors that are not its inputs or views of them."""
    output = next(n for n in forward.graph.nodes if n.op == "output")
    total = 0
    for node in list(output.args[0])[num_fwd_outputs:]:
        base = node
        while isinstance(base.target, torch._ops.OpOverload) and base.target.is_view:
            base = base.args[0]
        value = node.meta.get("val")
        if base.op != "placeholder" and isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
    return total


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """The profiler's C++ side logs its start and stop to the process's stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_peak_bytes(fn: Callable[[], Any]) -> int:
    """Peak of the running sum of CPU allocations minus frees while ``fn()`` runs, from the
    profiler's memory events in time order."""
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), \
            profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    running = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def cuda_peak_bytes(fn: Callable[[], Any]) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _memory_row(case: str, peaks: dict[str, int], metric: str, value: float,
                target: float | None, note: str, stat: str) -> Row:
    from benchmarks.run import Row

    kib = {name: b / 1024 for name, b in peaks.items()}
    return Row("train", case, "KiB", stat, kib[EAGER], kib[TORCH], kib[KILN], metric, value,
               target, kib[EAGER], kib[TORCH], kib[KILN], rounds=1, note=note)


def bench_train(settings: Settings) -> list[Row]:
    from benchmarks.run import _row

    rows = []
    model, _ = models.make_gpt2_block(batch=BATCH, seq=SEQ)
    module = BlockWithLoss(model).train()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, SEQ, model.ln_1.normalized_shape[0], generator=generator)
    args = (x, torch.randn(x.shape, generator=generator))
    state = {k: v.clone() for k, v in module.state_dict().items()}
    graph_bytes = {name: forward_graph_bytes(module, args, fn) for name, fn in
                   [("mincut", min_cut_rematerialization_partition),
                    ("default", default_partition)]}

    reset_compilers()
    trainers = make_trainers(module)
    for trainer in trainers.values():
        trainer.step(*args)  # compile
    check_steps(trainers, args, state)
    shape = "x".join(map(str, x.shape))

    # (a) step time
    steps = {name: trainer.step for name, trainer in trainers.items()}
    stats = per_call(steps, args, rounds=settings.rounds, batch_seconds=settings.batch_seconds,
                     warmup=5)
    default_time = stats[DEFAULT].get(settings.stat)
    note = (f"kiln with the default partitioner: {default_time * 1e3:.2f} ms "
            f"({default_time / stats[EAGER].get(settings.stat):.2f}x eager)")
    ratio = stats[KILN].get(settings.stat) / stats[EAGER].get(settings.stat)
    rows.append(_row("train", f"GPT2Block step ({shape}), fwd+mse+bwd+SGD, aot_eager", "ms",
                     {k: v for k, v in stats.items() if k != DEFAULT}, settings, "kiln/eager",
                     ratio, target=1.2, note=note))

    # (b) saved for backward
    saved = {name: saved_bytes(trainer, args) for name, trainer in trainers.items()}
    note = (f"kiln default_partition {saved[DEFAULT][0] / 1024:.1f} KiB in "
            f"{saved[DEFAULT][1]} storages, min-cut {saved[KILN][0] / 1024:.1f} KiB in "
            f"{saved[KILN][1]}; on the forward graphs (saved tensors besides inputs and their "
            f"views): default {graph_bytes['default'] / 1024:.1f} KiB, min-cut "
            f"{graph_bytes['mincut'] / 1024:.1f} KiB")
    rows.append(_memory_row("saved for backward (kiln column: min-cut)",
                            {k: b for k, (b, _) in saved.items()}, "min-cut/default",
                            saved[KILN][0] / saved[DEFAULT][0], 1.0, note, settings.stat))

    # (c) peak memory of a step
    peaks = {name: cpu_peak_bytes(lambda t=trainer: t.step(*args))
             for name, trainer in trainers.items()}
    note = f"kiln default_partition {peaks[DEFAULT] / 1024:.1f} KiB"
    rows.append(_memory_row("peak memory of a step, CPU (kiln column: min-cut)", peaks,
                            "min-cut/eager", peaks[KILN] / peaks[EAGER], 1.0, note,
                            settings.stat))
    if torch.cuda.is_available():
        rows.append(_cuda_peak_row(module, args, settings))
    return rows


def _cuda_peak_row(module: nn.Module, args: tuple[torch.Tensor, ...], settings: Settings
                   ) -> Row:
    reset_compilers()
    device_module = copy.deepcopy(module).cuda()
    device_args = tuple(a.cuda() for a in args)
    trainers = make_trainers(device_module)
    for trainer in trainers.values():
        for _ in range(2):
            trainer.step(*device_args)
    peaks = {name: cuda_peak_bytes(lambda t=trainer: t.step(*device_args))
             for name, trainer in trainers.items()}
    note = (f"{torch.cuda.get_device_name()}; kiln default_partition "
            f"{peaks[DEFAULT] / 1024:.1f} KiB")
    return _memory_row("peak memory of a step, CUDA (kiln column: min-cut)", peaks,
                       "min-cut/eager", peaks[KILN] / peaks[EAGER], 1.0, note, settings.stat)


__all__ = ["BlockWithLoss", "Trainer", "aot_backend", "bench_train", "cpu_peak_bytes",
           "cuda_peak_bytes", "saved_bytes", "graph_saved_bytes"]
