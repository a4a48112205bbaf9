"""kiln's one flat configuration, with torch.compile's names.

Each entry is a module attribute, so reading one is a plain attribute lookup (the call path
reads some of them). Entries are declared with :func:`_entry`, which records the default,
a docstring, whether the entry changes generated code (it then enters the FX graph cache
key), and reads the environment override ``KILN_<NAME>``.

Setting a name that is not an entry raises ``AttributeError``: a torch.compile setting kiln
does not implement yet is absent, never silently ignored.

    kiln.config.cache_size_limit = 4
    with kiln.config.patch(cache_size_limit=4): ...
    @kiln.config.patch("cache_size_limit", 4)
    def test(): ...
    unittest.mock.patch.object(kiln.config, "cache_size_limit", 4)
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConfigEntry:
    name: str
    default: Any
    doc: str
    changes_generated_code: bool = False


_ENTRIES: dict[str, ConfigEntry] = {}
_ALIASES: dict[str, str] = {}


def _parse_env(raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected a boolean, got {raw!r}")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw


def _entry(name: str, default: Any, doc: str, *, changes_generated_code: bool = False) -> Any:
    _ENTRIES[name] = ConfigEntry(name, default, doc, changes_generated_code)
    env_name = "KILN_" + name.upper()
    raw = os.environ.get(env_name)
    if raw is None:
        return default
    try:
        return _parse_env(raw, default)
    except ValueError as e:
        raise ValueError(f"kiln: environment variable {env_name}={raw!r}: {e}") from None


# --- capture: recompilation policy (torch._dynamo.config) ---------------------------------
cache_size_limit = _entry(
    "cache_size_limit", 8,
    "Compiled entries kept per function (counting only entries whose identity-guarded objects, "
    "such as `self`, are the ones of the current call). Past it the function runs eagerly.")
accumulated_cache_size_limit = _entry(
    "accumulated_cache_size_limit", 256, "Hard cap on compiled entries per function.")
fail_on_cache_limit_hit = _entry(
    "fail_on_cache_limit_hit", False,
    "Raise kiln.exc.FailOnRecompileLimitHit instead of falling back to eager at the limit.")
error_on_recompile = _entry(
    "error_on_recompile", False, "Raise kiln.exc.RecompileError whenever a function recompiles.")
suppress_errors = _entry(
    "suppress_errors", False,
    "Run the function eagerly, with a logged error, when its backend fails to compile it "
    "(instead of raising kiln.exc.BackendCompilerFailed).")
raise_internal_errors = _entry(
    "raise_internal_errors", False,
    "Raise kiln's own internal errors instead of logging them and running the function "
    "eagerly (kiln's test suite turns this on).")

# --- capture: shapes ---------------------------------------------------------------------
automatic_dynamic_shapes = _entry(
    "automatic_dynamic_shapes", True,
    "A size (or int argument) that changed since the last compile recompiles as a symbol, so "
    "one entry serves all its values.")
assume_static_by_default = _entry(
    "assume_static_by_default", True,
    "Sizes are static unless marked dynamic or seen to change; False makes every size "
    "symbolic from the first compile (as dynamic=True).")
specialize_int = _entry(
    "specialize_int", False,
    "Int arguments are always compile-time constants (never symbols).")
force_parameter_static_shapes = _entry(
    "force_parameter_static_shapes", True,
    "nn.Parameter sizes are never symbolic.")

# --- AOT autograd (torch._functorch.config) ----------------------------------------------------
enable_autograd_cache = _entry(
    "enable_autograd_cache", True,
    "Store compiled AOT functions (the traced, partitioned forward and backward and their "
    "runtime metadata) on disk (cache_dir()/aotautograd), so a later process skips tracing "
    "too. Its local store is on with fx_graph_cache; an entry refers to FX graph entries.")
autograd_remote_cache = _entry(
    "autograd_remote_cache", False,
    "Also look compiled AOT functions up in, and store them to, the remote cache (as "
    "fx_graph_remote_cache does for FX graphs).")
debug_assert = _entry(
    "debug_assert", False,
    "Check, on every call of an AOT-compiled function, what its compile assumed about its "
    "inputs (e.g. which of them are the same tensor).")

fake_tensor_allow_unsafe_data_ptr_access = _entry(
    "fake_tensor_allow_unsafe_data_ptr_access", True,
    "Whether data_ptr() on the fake tensors kiln.aot makes for real inputs (aot_function) "
    "works; when False it raises 'Cannot access data pointer'. Capture's fake tensors "
    "always raise, as torch.compile's do.")

# --- capture: nn.Modules ---------------------------------------------------------------------
inline_inbuilt_nn_modules = _entry(
    "inline_inbuilt_nn_modules", True,
    "Trace into torch.nn modules' forward like user code. When False, each torch.nn module "
    "is one call_module node.")

# --- capture: limits of the interpreter -----------------------------------------------------
max_inline_depth = _entry(
    "max_inline_depth", 64, "Deepest chain of inlined user calls before kiln gives up.")
max_traced_instructions = _entry(
    "max_traced_instructions", 2_000_000,
    "Instructions one frame compile may interpret (unrolled loops count each iteration).")

# --- code generation: compiling kernels (torch._inductor.config) ---------------------------
compile_threads = _entry(
    "compile_threads",
    min(32, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
        os.cpu_count() or 1),
    "Worker processes that compile generated kernels in parallel (the CPUs this process may "
    "run on, at most 32, as torch's inductor). 1 compiles in the calling process, one kernel "
    "at a time.")
worker_start_method = _entry(
    "worker_start_method", "fork",
    "How compile workers start: 'fork' (fast to start, copies this process) or 'spawn' (a "
    "fresh interpreter each; safe where forking this process is not, e.g. with threads "
    "holding locks).")
cuda_cxx = _entry(
    "cuda_cxx", None,
    "The CUDA compiler (a program on $PATH or a path) that builds CUDA sources "
    "(kiln.codegen.CUDACodeCache). Unset, or not an executable: $CUDACXX where it names one, "
    "else nvcc.")
cpp_parallel_threshold = _entry(
    "cpp_parallel_threshold", 32768,
    "Elements below which a generated C++ kernel runs on one thread (no OpenMP team).",
    changes_generated_code=True)

# --- caches (torch._inductor.config) --------------------------------------------------------
fx_graph_cache = _entry(
    "fx_graph_cache", True,
    "Store compiled graphs on disk (cache_dir()/fxgraph) and load them in later processes.")
frame_cache = _entry(
    "frame_cache", True,
    "Store each compiled frame (its guards and entry code, naming the graphs in the FX graph "
    "and AOT autograd caches) on disk (cache_dir()/frames), so a later process loads it "
    "without tracing: a warm start that never imports torch._dynamo. Active with "
    "fx_graph_cache and enable_autograd_cache; only for the 'kiln' backend and frames "
    "without graph breaks (symbolic sizes are kept). torch's closest setting is "
    "caching_precompile (off by default there).")
fx_graph_remote_cache = _entry(
    "fx_graph_remote_cache", False,
    "Also look compiled graphs up in, and store them to, the remote cache (Redis at "
    "KILN_REDIS_HOST / KILN_REDIS_PORT).")


def patch(arg1: str | dict[str, Any] | None = None, arg2: Any = None, **kwargs: Any) -> ConfigPatch:
    """Temporarily change entries: ``patch("name", v)``, ``patch({"name": v})`` or
    ``patch(name=v)``; a context manager, a function decorator, or a TestCase decorator."""
    if arg1 is not None:
        assert not kwargs, "pass either a name and a value, a dict, or keywords, not several"
        if isinstance(arg1, dict):
            changes = dict(arg1)
        else:
            changes = {arg1: arg2}
    else:
        changes = kwargs
    for name in changes:
        _resolve(name)
    return ConfigPatch(changes)


class ConfigPatch(contextlib.ContextDecorator):
    def __init__(self, changes: dict[str, Any]):
        self.changes = changes
        self._saved: list[dict[str, Any]] = []

    def __enter__(self) -> ConfigPatch:
        module = sys.modules[__name__]
        self._saved.append({name: getattr(module, name) for name in self.changes})
        for name, value in self.changes.items():
            setattr(module, name, value)
        return self

    def __exit__(self, *exc: object) -> None:
        module = sys.modules[__name__]
        for name, value in self._saved.pop().items():
            setattr(module, name, value)

    def __call__(self, func: Any) -> Any:
        if isinstance(func, type):
            return self._decorate_class(func)
        return super().__call__(func)

    def _decorate_class(self, cls: type) -> type:
        import unittest

        if not issubclass(cls, unittest.TestCase):
            raise TypeError("kiln.config.patch can decorate functions and TestCase classes")
        patch_obj = self
        orig_setup, orig_teardown = cls.setUpClass.__func__, cls.tearDownClass.__func__

        def setUpClass(klass: type) -> None:
            patch_obj.__enter__()
            try:
                orig_setup(klass)
            except Exception:
                patch_obj.__exit__(None, None, None)
                raise

        def tearDownClass(klass: type) -> None:
            try:
                orig_teardown(klass)
            finally:
                patch_obj.__exit__(None, None, None)

        cls.setUpClass = classmethod(setUpClass)
        cls.tearDownClass = classmethod(tearDownClass)
        return cls


def _resolve(name: str) -> str:
    name = _ALIASES.get(name, name)
    if name not in _ENTRIES:
        raise AttributeError(
            f"kiln.config has no entry {name!r}. kiln accepts: {', '.join(sorted(_ENTRIES))}")
    return name


def entries() -> dict[str, ConfigEntry]:
    """Every entry, by name (for docs and for the cache key)."""
    return dict(_ENTRIES)


def codegen_config() -> dict[str, Any]:
    """Current values of the entries that change generated code (they enter cache keys)."""
    module = sys.modules[__name__]
    return {n: getattr(module, n) for n, e in sorted(_ENTRIES.items()) if e.changes_generated_code}


def save_config() -> dict[str, Any]:
    module = sys.modules[__name__]
    return {n: getattr(module, n) for n in sorted(_ENTRIES)}


class _ConfigModule(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            return super().__setattr__(name, value)
        name = _resolve(name)
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        if name in _ALIASES:
            return getattr(self, _ALIASES[name])
        raise AttributeError(
            f"kiln.config has no entry {name!r}. kiln accepts: {', '.join(sorted(_ENTRIES))}")

    def __delattr__(self, name: str) -> None:
        # unittest.mock.patch.object deletes the attribute on exit when it was not found in
        # __dict__ (an alias); real entries live in __dict__ and are restored by setattr.
        name = _resolve(name)
        super().__setattr__(name, _ENTRIES[name].default)


_ALIASES.update(recompile_limit="cache_size_limit",
                accumulated_recompile_limit="accumulated_cache_size_limit",
                fail_on_recompile_limit_hit="fail_on_cache_limit_hit")

sys.modules[__name__].__class__ = _ConfigModule
