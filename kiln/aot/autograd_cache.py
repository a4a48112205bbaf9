"""The AOT autograd cache (torch's ``AOTAutogradCache``): compiled AOT functions on disk, so a
new process skips the metadata pass, the joint trace and the partition, not only the code
generation the FX graph cache skips.

It sits above the FX graph cache. The key hashes the captured graph (its code, by
:class:`~kiln.cache.FxGraphCachePickler`), its example inputs' metadata, and what the AOT
pipeline's output depends on besides: grad mode, autocast, which inputs are the same
tensor, the partitioner, the compilers and decompositions, and (as for FX keys) the config
entries that change generated code and the kiln / torch / Python / compiler versions. An
entry is an :class:`AotRecipe` — which runtime to build, the :class:`AotMetadata` it needs,
the saved-value counts, and the FX graph cache entry of each compiled graph — plus the
output structure, under the guards over symbolic sizes the whole compile added. A hit loads
each graph from the FX graph cache (counted there as hits, as torch counts them) and builds
the runtime; a graph gone from the FX cache makes the entry stale: it is removed and the
function compiled again.

Graphs whose code the key cannot see bypass the cache: calls of user functions or modules
(``allow_in_graph``; their bodies are not in the graph's code), higher-order operators,
parameters held by the graph. So do compiles whose graphs are not all in the FX graph cache
(a graph run op by op) and inputs that share memory with a mutated input.

Entries live at ``cache_dir()/aotautograd``, stored like FX graph entries (self-checking,
atomic; in the remote store too under ``autograd_remote_cache``, default off as torch's).
Config ``enable_autograd_cache`` (default on; its local store is on with ``fx_graph_cache``).
Counters ``kiln.counters["aot_autograd"]``: ``autograd_cache_miss``, ``autograd_cache_hit``,
``autograd_cache_bypass``, ``autograd_cache_saved``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
import torch.utils._pytree as pytree

from kiln import config
from kiln.aot.metadata import AotMetadata
from kiln.aot.runtime import make_inference_runtime, make_training_runtime
from kiln.cache.fx_graph import FxGraphCache, _symbols
from kiln.cache.hashing import BypassFxGraphCache, FxGraphCachePickler, FxGraphHashDetails

log = logging.getLogger("kiln.cache")

FxEntry = tuple[str, str]  # (FX graph cache key, entry name)
GraphLoader = Callable[[str, str], Callable[..., Any] | None]


@dataclass(frozen=True)
class AotRecipe:
    """How to build a compiled AOT function from its compiled graphs, without tracing.
    ``graphs``: the FX graph cache entry of each compiled graph (inference: one; training:
    forward, backward), None for one the cache does not hold."""

    kind: str  # "inference" or "training"
    meta: AotMetadata
    graphs: tuple[FxEntry | None, ...]
    num_saved: int = 0
    num_saved_tensors: int = 0
    enable_grad: bool = False

    @property
    def storable(self) -> bool:
        return all(g is not None for g in self.graphs)


@dataclass(frozen=True)
class AotCacheEntry:
    recipe: AotRecipe
    out_spec: str  # pytree.treespec_dumps of the function's outputs


def build_runtime(recipe: AotRecipe, graphs: Sequence[Callable[..., Any]]
                  ) -> Callable[..., list[Any]]:
    """The runtime of ``recipe`` around its compiled ``graphs`` (kiln/aot/runtime.py),
    carrying the recipe as ``_kiln_aot_recipe``."""
    if recipe.kind == "inference":
        run = make_inference_runtime(graphs[0], recipe.meta)
    else:
        run = make_training_runtime(graphs[0], graphs[1], recipe.meta, recipe.num_saved,
                                    recipe.num_saved_tensors, recipe.enable_grad)
    run._kiln_aot_recipe = recipe  # type: ignore[attr-defined]
    return run


def recipe_for(kind: str, meta: AotMetadata, compiled: Sequence[Callable[..., Any]],
               **counts: Any) -> AotRecipe:
    """The recipe of graphs just compiled (their FX cache entries read off the callables;
    the metadata without its fake example values, which only tracing needs)."""
    entries = tuple(getattr(c, "_kiln_fx_entry", None) for c in compiled)
    return AotRecipe(kind, dataclasses.replace(meta, examples=()), entries, **counts)


def graph_loader(*compilers: Any) -> GraphLoader | None:
    """How to load the graphs of ``compilers`` from the FX graph cache: the compilers'
    common ``load_cached_graph``, or None (another compiler: no AOT cache)."""
    loaders = {getattr(c, "load_cached_graph", None) for c in compilers if c is not None}
    if len(loaders) != 1 or None in loaders:
        return None
    return loaders.pop()


# --- the key ---------------------------------------------------------------------------------

_SAFE_MODULES = {"torch", "math", "operator", "_operator", "builtins", "kiln"}


def _check_cacheable(gm: torch.fx.GraphModule) -> None:
    """Raise BypassFxGraphCache where the graph's code does not show what it computes."""
    if next(gm.parameters(), None) is not None or next(gm.buffers(), None) is not None:
        raise BypassFxGraphCache("the graph holds parameters or buffers (they would be keyed "
                                 "by value)")
    for node in gm.graph.nodes:
        if node.op == "call_module":
            raise BypassFxGraphCache(f"the graph calls a module: {node.target}")
        if node.op != "call_function" or isinstance(node.target, torch._ops.OpOverload):
            continue
        if isinstance(node.target, torch._ops.HigherOrderOperator):
            raise BypassFxGraphCache(f"Can't cache HigherOrderOperator: {node.target.name()}")
        module = getattr(node.target, "__module__", None) or ""
        if module.split(".")[0] not in _SAFE_MODULES:
            name = getattr(node.target, "__qualname__", repr(node.target))
            raise BypassFxGraphCache(f"the graph calls {module}.{name}, whose code the key "
                                     "cannot see")


def _describe(fn: Any) -> Any:
    """A compiler, partitioner or decomposition by name (and a partial's arguments)."""
    if fn is None:
        return None
    if isinstance(fn, functools.partial):
        return ("partial", _describe(fn.func), repr(fn.args),
                sorted((k, repr(v)) for k, v in fn.keywords.items()))
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def pipeline_options(*, fw_compiler: Any, bw_compiler: Any = None, partition_fn: Any = None,
                     decompositions: dict[Any, Any] | None = None,
                     inference_compiler: Any = None,
                     keep_inference_input_mutations: bool = False,
                     same_tensor: Sequence[int] = ()) -> dict[str, Any]:
    """What the AOT pipeline's output depends on besides the graph and its inputs."""
    return {
        "compilers": [_describe(c) for c in (fw_compiler, bw_compiler, inference_compiler)],
        "partition_fn": _describe(partition_fn),
        "decompositions": sorted((str(op), _describe(f))
                                 for op, f in (decompositions or {}).items()),
        "keep_inference_input_mutations": keep_inference_input_mutations,
        "same_tensor": list(same_tensor),
        "grad_enabled": torch.is_grad_enabled(),
        "inference_mode": torch.is_inference_mode_enabled(),
        "autocast": [(d, torch.is_autocast_enabled(d), str(torch.get_autocast_dtype(d)))
                     for d in ("cpu", "cuda")],
        "debug_assert": config.debug_assert,
    }


def autograd_cache_key(gm: torch.fx.GraphModule, fake_args: Sequence[Any],
                       options: dict[str, Any]) -> str:
    """``"a"`` + the hash of the graph, its inputs' metadata and ``options``."""
    _check_cacheable(gm)
    details = FxGraphHashDetails(gm, list(fake_args), {"aot": options}, [])
    return "a" + FxGraphCachePickler.get_hash(details)


# --- the cache -------------------------------------------------------------------------------

Compile = Callable[[], tuple[Callable[..., list[Any]], Any]]
Rebuild = Callable[[AotRecipe, list[Callable[..., Any]]], Callable[..., list[Any]]]


class AotAutogradCache(FxGraphCache):
    """Lookup and save of compiled AOT functions (see the module doc)."""

    SUBDIR = "aotautograd"
    COUNTER_GROUP = "aot_autograd"
    COUNTER_PREFIX = "autograd_cache"
    WHAT = "AOT autograd"

    @staticmethod
    def _local_on() -> bool:
        return bool(config.fx_graph_cache)

    @staticmethod
    def _remote_on() -> bool:
        return bool(config.autograd_remote_cache)

    @classmethod
    def load(cls, gm: torch.fx.GraphModule, fake_args: Sequence[Any],  # type: ignore[override]
             options: dict[str, Any], compile_fn: Compile, rebuild: Rebuild,
             loader: GraphLoader) -> tuple[Callable[..., list[Any]], Any]:
        """``(run, out_spec)`` of ``gm`` for ``fake_args``: rebuilt by ``rebuild(recipe,
        graphs)`` from a cache entry (its graphs loaded by ``loader(key, name)``), else
        ``compile_fn()`` and stored."""
        if not config.enable_autograd_cache or not (cls._local_on() or cls._remote_on()):
            return compile_fn()
        try:
            key = autograd_cache_key(gm, fake_args, options)
        except BypassFxGraphCache as e:
            cls._count("bypass")
            log.info("kiln cache: bypassing the AOT autograd cache: %s", e)
            return compile_fn()
        found = cls.lookup_entry(key, list(fake_args))
        if found is not None:
            entry, name = found
            graphs = [loader(*g) for g in entry.recipe.graphs]
            if all(g is not None for g in graphs):
                cls._count("hit")
                log.info("AOTAutograd cache hit for key %s", key)
                run = rebuild(entry.recipe, graphs)
                run._kiln_aot_entry = (key, name, entry.recipe)  # type: ignore[attr-defined]
                return run, pytree.treespec_loads(entry.out_spec)
            log.info("kiln cache: the AOT autograd entry %s refers to FX graphs that are "
                     "gone; compiling again", key)
            cls.remove_entry(key, name)
        cls._count("miss")
        _, envs = _symbols(list(fake_args))
        before = [len(env.guards) for env in envs]
        run, out_spec = compile_fn()
        name = cls._store(key, run, out_spec, cls.guards_added(envs, before))
        if name is not None:
            run._kiln_aot_entry = (key, name, run._kiln_aot_recipe)
        return run, out_spec

    @classmethod
    def load_by_name(cls, key: str, name: str, loader: GraphLoader
                     ) -> tuple[Callable[..., list[Any]], Any, AotRecipe] | None:
        """``(runtime, out_spec, recipe)`` of exactly the entry ``name`` of ``key``, for a
        caller that knows its guards hold (a persisted frame, kiln/capture/persist.py); the
        runtime as :func:`build_runtime` makes it (without the wrappers that need the traced
        function: kiln.aot.api.load_forward). None when it is gone."""
        if not config.enable_autograd_cache or not (cls._local_on() or cls._remote_on()):
            return None
        entry = cls.load_entry(key, name)
        if entry is None:
            return None
        graphs = [loader(*g) for g in entry.recipe.graphs]
        if not all(g is not None for g in graphs):
            return None
        cls._count("hit")
        log.info("AOTAutograd cache hit for key %s (persisted frame)", key)
        return (build_runtime(entry.recipe, graphs), pytree.treespec_loads(entry.out_spec),
                entry.recipe)

    @classmethod
    def _store(cls, key: str, run: Any, out_spec: Any, guards: list[str]) -> str | None:
        recipe = getattr(run, "_kiln_aot_recipe", None)
        if recipe is None or not recipe.storable:
            log.info("kiln cache: AOT autograd entry %s not stored: %s", key,
                     "inputs share memory with a mutated input" if recipe is None
                     else "a graph is not in the FX graph cache")
            return None
        try:
            spec = pytree.treespec_dumps(out_spec)
        except Exception as e:  # noqa: BLE001 - an output structure pytree cannot write
            log.info("kiln cache: AOT autograd entry %s not stored: %s", key, e)
            return None
        name = cls.save(key, AotCacheEntry(recipe, spec), guards)
        if name is not None:
            cls._count("saved")
        return name


__all__ = ["AotAutogradCache", "AotCacheEntry", "AotRecipe", "autograd_cache_key",
           "build_runtime", "graph_loader", "pipeline_options", "recipe_for"]
