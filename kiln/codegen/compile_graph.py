"""One aten graph → one compiled callable: lower (lowering.py), schedule (scheduler.py),
generate C++ kernels (cpp.py) and the Python wrapper (wrapper.py), compile the kernels into
one shared library (cpp_compiler.py), load it, and return the wrapper's ``call``.

This is the inner compiler the ``"kiln"`` backend hands to AOT autograd for the forward and
the backward graph. Graphs on devices other than the CPU run op by op as under
``"aot_eager"`` until the Triton target exists.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.fx

from kiln import config, logs
from kiln.codegen import cpp
from kiln.codegen.async_compile import AsyncCompile
from kiln.codegen.cpp_prelude import prelude
from kiln.codegen.ir import Buffer, ExternCall, InputBuffer
from kiln.codegen.lowering import lower
from kiln.codegen.scheduler import Kernel, schedule
from kiln.codegen.wrapper import WrapperWriter
from kiln.counters import counters, metrics

log = logging.getLogger("kiln.codegen")


@dataclasses.dataclass
class CompiledGraph:
    """What code generation made of one graph (kept on the callable as ``_kiln_compiled``
    for tests and ``KILN_LOGS=output_code``)."""

    wrapper_source: str
    cpp_source: str
    kernel_count: int
    extern_count: int
    fallback_ops: list[str]


KERNELS_PER_SOURCE = 6  # fewer: the compiler's start-up dominates; more: less parallelism


def _split(kernels: list[cpp.KernelSource]) -> list[list[cpp.KernelSource]]:
    """The kernels in up to ``compile_threads`` sources compiled side by side (one source
    when there are few)."""
    if not kernels:
        return []
    n = max(1, min(config.compile_threads, -(-len(kernels) // KERNELS_PER_SOURCE)))
    size = -(-len(kernels) // n)
    return [kernels[i:i + size] for i in range(0, len(kernels), size)]


def _outputs_alias(lowered: Any) -> bool:
    """Whether an output is a view of an input or constant, or shares memory with another
    output. (An input returned as it is, as AOT's forward returns what it saves for the
    backward, is the same object the aten graph would return: fine; so is one buffer
    returned twice, as a forward output the backward also reads.)"""
    storages: dict[str, set[int]] = {}
    for out in lowered.outputs:
        if isinstance(out, Buffer):
            if out.is_view() and (isinstance(out.storage, InputBuffer)
                                  or out.storage.name.startswith("const")):
                return True
            if not isinstance(out, InputBuffer):
                storages.setdefault(out.storage.name, set()).add(id(out))
    return any(len(buffers) > 1 for buffers in storages.values())


def compile_graph(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
    """``gm`` compiled to C++ kernels and a wrapper; a boxed callable (``call(args)``)."""
    try:
        return _compile(gm)
    except (NotImplementedError, RecursionError) as e:
        # a form code generation does not handle yet (a symbolic size function it cannot
        # print, a pointwise chain too deep to inline): the graph runs op by op, correctly
        from kiln.aot.python_runner import python_function
        log.warning("kiln: this graph runs op by op (no code generated): %s: %s",
                    type(e).__name__, str(e)[:200])
        counters["codegen"]["graphs_run_by_aten"] += 1
        return python_function(gm)


def _compile(gm: torch.fx.GraphModule) -> Callable[..., Any]:
    started = time.perf_counter()
    lowered, lowering = lower(gm)
    if lowered.device.type != "cpu":
        from kiln.aot.python_runner import python_function
        log.info("kiln: a graph on %s runs op by op (no code generation for it yet)",
                 lowered.device)
        return python_function(gm)
    if _outputs_alias(lowered):
        # an output that is an input, or a view of one or of another output: eager's view
        # ops give each such output its own tensor object and view metadata, which the AOT
        # runtime relies on; the aten ops of the graph give exactly that
        from kiln.aot.python_runner import python_function
        log.debug("kiln: a graph whose outputs alias its inputs or each other runs op by op")
        counters["codegen"]["graphs_run_by_aten"] += 1
        return python_function(gm)
    sched = schedule(lowered)
    dtypes: dict[str, torch.dtype] = {inp.name: inp.dtype for inp in lowered.inputs
                                      if isinstance(inp, Buffer)}
    dtypes.update((name, t.dtype) for name, t in lowered.constants.items())
    for step in lowered.steps:
        if isinstance(step, ExternCall):
            dtypes.update((b.name, b.dtype) for b in step.output_buffers())
        else:
            dtypes[step.name] = step.dtype
    kernels = [step for step in sched.steps if isinstance(step, Kernel)]
    sources = {k.name: cpp.generate_kernel(k, dtypes) for k in kernels}
    writer = WrapperWriter(sched, sources)
    wrapper = writer.generate()
    chunks = _split(list(sources.values()))
    libraries = AsyncCompile().compile_many(
        prelude() + "\n" + "\n".join(k.source for k in chunk) for chunk in chunks)
    library_of = {k.name: lib for chunk, lib in zip(chunks, libraries) for k in chunk}
    cpp_source = prelude() + "\n" + "\n".join(s.source for s in sources.values())
    namespace: dict[str, Any] = dict(wrapper.globals)
    namespace["threads"] = torch.get_num_threads
    for name, value in list(namespace.items()):
        if isinstance(value, cpp.KernelSource):
            argtypes = [ctypes.c_void_p] * len(value.pointers) + \
                [ctypes.c_int64] * len(value.sizes) + [ctypes.c_int]
            namespace[name] = library_of[value.name].function(value.name, argtypes)
    exec(compile(wrapper.source, f"<kiln wrapper {id(gm):x}>", "exec"), namespace)
    call = namespace["call"]
    call._boxed_call = True
    metrics.generated_kernel_count += len(sources)
    counters["codegen"]["graphs_compiled"] += 1
    compiled = CompiledGraph(wrapper.source, cpp_source if sources else "", len(sources),
                             lowering.extern_count, lowering.fallback_ops)
    call._kiln_compiled = compiled
    if lowering.fallback_ops:
        log.debug("kiln: ops run as aten calls: %s", sorted(set(lowering.fallback_ops)))
    logs.log_artifact("output_code", "kiln output code (%.0f ms):\n%s\n%s",
                      (time.perf_counter() - started) * 1e3, wrapper.source,
                      "\n".join(s.source for s in sources.values()))
    return call


__all__ = ["CompiledGraph", "compile_graph"]
