"""Per-code-object cache entries, their lookup, and the recompilation policy.

Every function kiln compiles has a :class:`FrameCache` keyed by its code object (so two
wrappers of the same function, or two closures of the same ``def``, share it, as
torch.compile's per-code cache does). It holds, per backend, the list of entries newest
first; the dispatcher of each compiled wrapper (frame_code.py) walks that very list.

On a miss (:meth:`FrameCache.miss`): the reasons every entry failed are computed (the slow
path) for ``guard_fail_fn``, ``KILN_LOGS=recompiles`` and ``error_on_recompile``; past
``cache_size_limit`` the function's entries are dropped and it runs eagerly from then on
(after one warning), otherwise the frame is compiled and the new entry goes first. Before
compiling, an entry an earlier process persisted (persist.py, frame_store.py) is tried: when
its guards hold for this call it is loaded without tracing.
"""

from __future__ import annotations

import logging
import threading
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kiln import callbacks, config, logs
from kiln.capture import frame_store
from kiln.capture.convert import CompiledFrame, compile_frame
from kiln.capture.frame_code import make_eager_runner
from kiln.capture.shapes import FrameState
from kiln.exc import FailOnRecompileLimitHit, RecompileError

log = logging.getLogger("kiln")
guards_log = logging.getLogger("kiln.guards")

_lock = threading.RLock()
# called with (code, entry) after every frame compile (kiln.explain listens)
compile_listeners: list[Callable[[types.CodeType, CacheEntry], None]] = []
_caches: dict[types.CodeType, FrameCache] = {}
_next_frame_id = [0]


class GuardFail(NamedTuple):
    """What ``guard_fail_fn`` receives: why an entry did not match, and for which code."""

    reason: str
    orig_code: types.CodeType


@dataclass
class CacheEntry:
    frame: CompiledFrame
    compile_id: str
    guard: Callable[..., bool]
    dispatch_item: tuple[Callable[..., Any], Callable[..., Any]]
    id_refs: list[weakref.ref] = field(default_factory=list)

    @property
    def is_eager(self) -> bool:
        return self.frame.fallback_reason is not None


class EntryList:
    """The entries of one (code, backend): ``items`` is what dispatchers iterate."""

    def __init__(self) -> None:
        self.items: list[tuple[Callable[..., Any], Callable[..., Any]]] = []
        self.entries: list[CacheEntry] = []
        self.skipped = False

    def add(self, entry: CacheEntry) -> None:
        self.items.insert(0, entry.dispatch_item)
        self.entries.insert(0, entry)

    def remove(self, entry: CacheEntry) -> None:
        if entry in self.entries:
            i = self.entries.index(entry)
            del self.entries[i]
            del self.items[i]
            entry.frame.guard_set.ns.values.clear()

    def clear(self) -> None:
        self.items.clear()
        for entry in self.entries:
            entry.frame.guard_set.ns.values.clear()
        self.entries.clear()


class FrameCache:
    def __init__(self, code: types.CodeType) -> None:
        self.code = code
        self.frame_id = _next_frame_id[0]
        _next_frame_id[0] += 1
        self.compile_count = 0
        self.lists: dict[Any, EntryList] = {}
        self.warned = False
        self.frame_state = FrameState()  # sizes seen, for automatic dynamic (shapes.py)

    def entry_list(self, backend_key: Any) -> EntryList:
        entries = self.lists.get(backend_key)
        if entries is None:
            entries = self.lists[backend_key] = EntryList()
        return entries

    # --- the slow path ------------------------------------------------------------------------
    def miss(self, compiled: Any, entries: EntryList, args: tuple[Any, ...]) -> Any:
        """Called by a dispatcher when no entry matched: compile (or not), then run."""
        fn = compiled.fn
        call_args = (fn.__closure__, *args)
        with _lock:
            for guard, run in entries.items:  # another thread may have compiled meanwhile
                if guard(*call_args):
                    return run(*call_args)
            if entries.skipped:
                return compiled.eager(*call_args)
            if entries.entries:
                reasons = self._failure_reasons(entries, call_args)
                self._report_recompile(compiled, reasons)
                if self._limit_hit(entries, call_args):
                    return self._give_up(compiled, entries, reasons, call_args)
            entry = self._compile(compiled, entries, args)
        return entry.dispatch_item[1](*call_args)

    def _failure_reasons(self, entries: EntryList,
                         call_args: tuple[Any, ...]) -> list[tuple[CacheEntry, str]]:
        verbose = logs.enabled("recompiles_verbose")
        result = []
        for entry in entries.entries:
            texts = entry.frame.guard_set.failure_reasons(call_args, verbose)
            result.append((entry, "\n".join(texts) if texts else "unknown reason"))
        return result

    def _report_recompile(self, compiled: Any, reasons: list[tuple[CacheEntry, str]]) -> None:
        if compiled.guard_fail_fn is not None:
            for _, reason in reasons:
                try:
                    compiled.guard_fail_fn(GuardFail(reason, self.code))
                except Exception:
                    log.exception("Failure in guard_fail_fn callback - raising here will cause "
                                  "a NULL Error on guard eval")
        if logs.enabled("recompiles") or config.error_on_recompile:
            code = self.code
            lines = [f"Recompiling function {code.co_name} in {code.co_filename}:"
                     f"{code.co_firstlineno}",
                     "    triggered by the following guard failure(s):"]
            for entry, reason in reasons:
                first, *rest = reason.split("\n")
                lines.append(f"    - {entry.compile_id}: {first}")
                lines.extend(f"      {r}" for r in rest)
            message = "\n".join(lines)
            if config.error_on_recompile:
                raise RecompileError(message)
            logs.log_artifact("recompiles", "%s", message)

    def _limit_hit(self, entries: EntryList, call_args: tuple[Any, ...]) -> bool:
        if len(entries.entries) >= config.accumulated_cache_size_limit:
            self._limit_name = "accumulated_cache_size_limit"
            return True
        same_objects = sum(1 for e in entries.entries if _same_id_matched(e, call_args))
        if same_objects >= config.cache_size_limit:
            self._limit_name = "cache_size_limit"
            return True
        return False

    def _give_up(self, compiled: Any, entries: EntryList, reasons: list[tuple[CacheEntry, str]],
                 call_args: tuple[Any, ...]) -> Any:
        code = self.code
        name = self._limit_name
        limit = getattr(config, name)
        last = reasons[0][1] if reasons else "unknown reason"
        message = (f"kiln hit config.{name} ({limit})\n"
                   f"   function: '{code.co_name}' ({code.co_filename}:{code.co_firstlineno})\n"
                   f"   last reason: {last}\n"
                   'To log all recompilation reasons, use KILN_LOGS="recompiles".\n'
                   "To diagnose recompilation issues, see docs/recompiles.md.")
        if compiled.fullgraph or config.fail_on_cache_limit_hit:
            raise FailOnRecompileLimitHit(message)
        if not self.warned:
            self.warned = True
            log.warning(message)
        entries.skipped = True
        entries.clear()
        return compiled.eager(*call_args)

    def _compile(self, compiled: Any, entries: EntryList, args: tuple[Any, ...]) -> CacheEntry:
        compile_id = f"{self.frame_id}/{self.compile_count}"
        self.compile_count += 1
        hooks = compiled.hooks()
        key = frame_store.frame_key(compiled.fn, hooks)
        frame = frame_store.load(key, compiled.fn, args, self.frame_state) \
            if key is not None else None
        if frame is None:
            hooks.persist = key is not None
            with callbacks.compile_callbacks():
                frame = compile_frame(compiled.fn, args, hooks, compile_id)
            if key is not None and frame.persisted is not None:
                frame_store.save(key, frame.persisted, self.frame_state)
        guard = frame.guard_set.compile()
        entry = CacheEntry(frame, compile_id, guard, (guard, frame.run))

        def drop(_: Any, entry: CacheEntry = entry, entries: EntryList = entries) -> None:
            with _lock:
                entries.remove(entry)

        for obj in frame.guard_set.id_matched_objects():
            entry.id_refs.append(weakref.ref(obj, drop))
        entries.add(entry)
        for listener in list(compile_listeners):
            listener(self.code, entry)
        return entry


def _same_id_matched(entry: CacheEntry, call_args: tuple[Any, ...]) -> bool:
    """Whether ``entry``'s identity-guarded objects are the ones of this call (entries for
    other module instances do not count against the cache limit)."""
    checks = entry.frame.guard_set.id_checks(call_args)
    return all(checks)


def cache_for(code: types.CodeType) -> FrameCache:
    with _lock:
        cache = _caches.get(code)
        if cache is None:
            cache = _caches[code] = FrameCache(code)
        return cache


def reset() -> None:
    """Forget every compiled entry (``kiln.reset()``)."""
    with _lock:
        for cache in _caches.values():
            for entries in cache.lists.values():
                entries.clear()
                entries.skipped = False
        _caches.clear()
        _next_frame_id[0] = 0


def entries_of(fn: Any) -> list[CacheEntry]:
    """The cache entries of a function, newest first, all backends (for tests and tools)."""
    code = getattr(fn, "__code__", None)
    cache = _caches.get(code)
    if cache is None:
        return []
    return [e for lst in cache.lists.values() for e in lst.entries]


__all__ = ["FrameCache", "CacheEntry", "GuardFail", "cache_for", "reset", "entries_of",
           "make_eager_runner"]
