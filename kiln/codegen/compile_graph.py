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
from kiln.aot.python_runner import python_function
from kiln.cache.dirs import register_in_memory_cache
from kiln.codegen import cpp, cpp_compiler
from kiln.codegen.async_compile import AsyncCompile
from kiln.codegen.cpp_prelude import prelude
from kiln.codegen.ir import Buffer, ExternCall, InputBuffer
from kiln.codegen.lowering import lower
from kiln.codegen.scheduler import Kernel, schedule
from kiln.codegen.wrapper import WrapperWriter, _fresh_tensor
from kiln.counters import counters, metrics

log = logging.getLogger("kiln.codegen")

# kiln.cache.clear_caches() forgets the loaded kernel libraries too (cpp_compiler.py itself
# imports nothing of kiln: compile workers load it without torch)
register_in_memory_cache(cpp_compiler.clear_memory_cache)


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


@dataclasses.dataclass
class GraphArtifact:
    """A compiled graph as plain, picklable data: what :func:`load_artifact` needs to make
    the callable without compiling (the FX graph cache stores it). ``globals`` names each
    value the wrapper reads: ``("kernel", name)``, ``("op", namespace, op, overload)``,
    ``("builtin", name)`` or ``("value", python value)``; ``libraries`` are the kernel
    sources with the built shared objects' bytes (None until read), ``kernels`` where each
    kernel is: (library index, pointer count, size count)."""

    wrapper_source: str
    globals: dict[str, tuple[Any, ...]]
    libraries: list[tuple[str, bytes | None]]
    kernels: dict[str, tuple[int, int, int]]
    compiled: CompiledGraph


_BUILTINS = {"empty_strided": torch.empty_strided, "fresh": _fresh_tensor,
             "threads": torch.get_num_threads}


def _encode(value: Any) -> tuple[Any, ...]:
    if isinstance(value, cpp.KernelSource):
        return ("kernel", value.name)
    if isinstance(value, torch._ops.OpOverload):
        namespace, op = value._schema.name.split("::")
        return ("op", namespace, op, value._overloadname)
    for name, builtin in _BUILTINS.items():
        if value is builtin:
            return ("builtin", name)
    return ("value", value)


def _decode(spec: tuple[Any, ...], functions: dict[str, Any]) -> Any:
    kind = spec[0]
    if kind == "kernel":
        return functions[spec[1]]
    if kind == "op":
        _, namespace, op, overload = spec
        return getattr(getattr(getattr(torch.ops, namespace), op), overload)._op
    if kind == "builtin":
        return _BUILTINS[spec[1]]
    return spec[1]


def compile_graph(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
    """``gm`` compiled to C++ kernels and a wrapper; a boxed callable (``call(args)``).
    Through the FX graph cache (kiln/cache): a graph compiled before, in this process or
    another, is loaded instead of compiled."""
    from kiln.cache.fx_graph import FxGraphCache

    started = time.perf_counter()
    _fake_metas_for_real_inputs(gm, example_inputs)
    try:
        return FxGraphCache.load(gm, example_inputs, lambda: _generate(gm, started),
                                 load_artifact, _replay)
    except (NotImplementedError, RecursionError) as e:
        # a form code generation does not handle yet (a symbolic size function it cannot
        # print, a pointwise chain too deep to inline): the graph runs op by op, correctly
        log.warning("kiln: this graph runs op by op (no code generated): %s: %s",
                    type(e).__name__, str(e)[:200])
        counters["codegen"]["graphs_run_by_aten"] += 1
        return python_function(gm)
    except _RunByAten:
        return python_function(gm)


def _fake_metas_for_real_inputs(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> None:
    """Lowering reads each node's layout (sizes, strides, storage offset) from its
    ``meta["val"]``. A graph traced by make_fx in real mode (its default) has metas made
    by ``empty_strided``, without the views' storage offsets; given real example inputs,
    the metas are computed again by fake-tensor propagation from those inputs (AOT
    autograd's graphs come with fake inputs and metas of their own trace: left as they
    are)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    tensors = [x for x in example_inputs if isinstance(x, torch.Tensor)]
    if not tensors or any(isinstance(x, FakeTensor) for x in tensors):
        return
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    fakes = [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in example_inputs]
    FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fakes)


def load_cached_graph(key: str, name: str) -> Callable[..., Any] | None:
    """The callable of the FX graph cache's entry ``name`` of ``key`` (what
    :func:`compile_graph` made and stored), counted as a cache hit; None when the entry is
    gone. The AOT autograd cache loads a forward and backward graph so, without their
    graphs or example inputs."""
    from kiln.cache.fx_graph import FxGraphCache

    artifact = FxGraphCache.load_entry(key, name)
    if not isinstance(artifact, GraphArtifact):
        return None
    counters["codegen"]["fxgraph_cache_hit"] += 1
    log.info("kiln cache: FX graph cache hit for %s", key)
    _replay(artifact, key)
    compiled = load_artifact(artifact, key)
    compiled._kiln_fx_entry = (key, name)
    return compiled


# a compiler that can say how to load what it stored (kiln/aot/autograd_cache.py)
compile_graph.load_cached_graph = load_cached_graph  # type: ignore[attr-defined]


class _RunByAten(Exception):
    """The graph runs op by op (on another device, or with aliased outputs)."""


def _replay(artifact: Any, key: str) -> None:
    """What a compile would have counted, on a cache hit (torch replays its metrics)."""
    from kiln.cache.pycode import PyCodeCache

    if isinstance(artifact, GraphArtifact):
        metrics.generated_kernel_count += artifact.compiled.kernel_count
        if not PyCodeCache.path_of(PyCodeCache.key_of(artifact.wrapper_source, key)).exists():
            counters["codegen"]["fxgraph_lookup_write_file"] += 1


def _generate(gm: torch.fx.GraphModule, started: float) -> GraphArtifact | str:
    """Lower, schedule and generate ``gm``; its kernels built. The string "aten" for a
    graph that runs op by op."""
    lowered, lowering = lower(gm)
    if lowered.device.type != "cpu":
        log.info("kiln: a graph on %s runs op by op (no code generation for it yet)",
                 lowered.device)
        return "aten"
    if _outputs_alias(lowered):
        # an output that is an input, or a view of one or of another output: eager's view
        # ops give each such output its own tensor object and view metadata, which the AOT
        # runtime relies on; the aten ops of the graph give exactly that
        log.debug("kiln: a graph whose outputs alias its inputs or each other runs op by op")
        counters["codegen"]["graphs_run_by_aten"] += 1
        return "aten"
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
    wrapper = WrapperWriter(sched, sources).generate()
    chunks = _split(list(sources.values()))
    texts = [prelude() + "\n" + "\n".join(k.source for k in chunk) for chunk in chunks]
    libraries = AsyncCompile().compile_many(texts)
    kernel_places = {k.name: (i, len(k.pointers), len(k.sizes))
                     for i, chunk in enumerate(chunks) for k in chunk}
    cpp_source = prelude() + "\n" + "\n".join(s.source for s in sources.values())
    compiled = CompiledGraph(wrapper.source, cpp_source if sources else "", len(sources),
                             lowering.extern_count, lowering.fallback_ops)
    metrics.generated_kernel_count += len(sources)
    counters["codegen"]["graphs_compiled"] += 1
    if lowering.fallback_ops:
        log.debug("kiln: ops run as aten calls: %s", sorted(set(lowering.fallback_ops)))
    logs.log_artifact("output_code", "kiln output code (%.0f ms):\n%s\n%s",
                      (time.perf_counter() - started) * 1e3, wrapper.source,
                      "\n".join(s.source for s in sources.values()))
    return GraphArtifact(
        wrapper.source, {name: _encode(v) for name, v in wrapper.globals.items()},
        [(text, lib.path.read_bytes()) for text, lib in zip(texts, libraries)],
        kernel_places, compiled)


def load_artifact(artifact: GraphArtifact | str, key: str) -> Callable[..., Any]:
    """The callable of a compiled graph: its kernel libraries loaded (built from their
    bytes, or compiled again, where the C++ cache lacks them) and its wrapper executed as a
    module of the PyCodeCache."""
    from kiln.cache.pycode import PyCodeCache

    if isinstance(artifact, str):
        raise _RunByAten()
    texts = [text for text, _ in artifact.libraries]
    for text, data in artifact.libraries:
        job = cpp_compiler.plan(text)
        if data is not None and not cpp_compiler.is_built(job):
            cpp_compiler.install(job, data)
    libraries = AsyncCompile().compile_many(texts)
    functions = {}
    for name, (index, n_pointers, n_sizes) in artifact.kernels.items():
        argtypes = [ctypes.c_void_p] * n_pointers + [ctypes.c_int64] * n_sizes + [ctypes.c_int]
        functions[name] = libraries[index].function(name, argtypes)
    namespace = {name: _decode(spec, functions) for name, spec in artifact.globals.items()}
    namespace.update(_BUILTINS)
    module = PyCodeCache.load(artifact.wrapper_source, namespace, key or f"{id(artifact):x}")
    call = module.call
    call._boxed_call = True
    call._kiln_compiled = artifact.compiled
    return call


__all__ = ["CompiledGraph", "GraphArtifact", "compile_graph", "load_artifact",
           "load_cached_graph"]
