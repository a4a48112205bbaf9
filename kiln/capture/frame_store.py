"""Where persisted frames (persist.py) are kept: ``cache_dir()/frames``, one file per code
object and compile setting, holding its newest entries.

The key is everything a persisted entry's validity depends on that its own checks do not
see: the code object's fingerprint and location, kiln's sources, the torch and Python
versions, the backend, ``fullgraph``/``dynamic`` and every kiln.config entry. Files are
written atomically through kiln/cache/store.py; a damaged file is a miss that is logged and
replaced, never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import pickle
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

from kiln import config
from kiln.capture import persist
from kiln.capture.convert import CompiledFrame, FrameHooks
from kiln.capture.shapes import FrameState
from kiln.counters import counters

log = logging.getLogger("kiln.cache")


def enabled() -> bool:
    """Persisted frames are used with ``config.frame_cache`` and both caches they refer to."""
    return bool(config.frame_cache and config.fx_graph_cache and config.enable_autograd_cache)


def frame_key(fn: types.FunctionType, hooks: FrameHooks) -> str | None:
    """The key of ``fn``'s persisted entries under ``hooks``, or None where frames of this
    compile are not persisted (the setting is off, or the backend is not ``"kiln"``)."""
    if not enabled():
        return None
    from kiln.backends.registry import lookup_backend
    from kiln.cache.hashing import kiln_source_hash

    if hooks.backend is not lookup_backend("kiln"):
        return None
    code = fn.__code__
    parts = [persist.FORMAT, kiln_source_hash(), torch.__version__, sys.version,
             hooks.backend_name, hooks.fullgraph, hooks.dynamic,
             sorted((k, repr(v)) for k, v in config.save_config().items()),
             getattr(fn, "__module__", None), code.co_filename, code.co_qualname,
             code.co_firstlineno, persist.code_fingerprint(code)]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _path(key: str) -> Path:
    from kiln.cache.dirs import subdir

    return subdir("frames") / key[:2] / key


def _read(key: str) -> list[persist.PersistedFrame]:
    from kiln.cache.store import read_entry

    try:
        path = _path(key)
        payload = read_entry(path)
    except OSError as e:  # an unusable cache directory: no persisted frames, not an error
        log.warning("kiln cache: cannot read persisted frames: %s", e)
        return []
    if payload is None:
        return []
    try:
        frames = pickle.loads(payload)
        if not isinstance(frames, list) or not all(
                isinstance(f, persist.PersistedFrame) for f in frames):
            raise TypeError(f"unexpected contents {type(frames).__name__}")
        return frames
    except Exception as e:  # noqa: BLE001 - anything unreadable is a miss
        log.warning("kiln cache: discarding the persisted frames %s: %s", path, e)
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return []


def load(key: str, fn: types.FunctionType, args: tuple[Any, ...],
         frame_state: FrameState) -> CompiledFrame | None:
    """A persisted entry of ``fn`` whose guards hold for this call, as a CompiledFrame
    (``graph`` None: nothing was traced), or None."""
    start = time.perf_counter()
    frames = _read(key)
    if not frames:
        return None
    from kiln.aot.api import load_forward
    from kiln.codegen.compile_graph import load_cached_graph

    def load_graph(aot_key: str, name: str) -> Any:
        return load_forward(aot_key, name, load_cached_graph)

    call_args = (fn.__closure__, *args)
    reasons = []
    for persisted in frames:
        try:
            guard_set = persist.instantiate(persisted, fn, call_args)
            if not guard_set.compile()(*call_args):
                reasons.append("; ".join(guard_set.failure_reasons(call_args, False)))
                continue
            # only now the graphs (a load counts as a cache hit and replays kernel counts)
            run = persist.entry_code(persisted, guard_set, load_graph)
        except persist.Mismatch as e:
            reasons.append(str(e))
            continue
        if not frame_state.sizes and not frame_state.scalars:
            frame_state.sizes, frame_state.scalars = persist.frame_state_restore(
                persisted.frame_state)
        counters["frames"]["persisted_hit"] += 1
        log.info("kiln frame cache: hit for %s (%.0f ms)", persisted.label,
                 (time.perf_counter() - start) * 1e3)
        return CompiledFrame(guard_set, run, None,
                             compile_seconds=time.perf_counter() - start)
    counters["frames"]["persisted_miss"] += 1
    log.info("kiln frame cache: no persisted entry of %s fits: %s", fn.__qualname__,
             " | ".join(reasons))
    return None


def save(key: str, persisted: persist.PersistedFrame, frame_state: FrameState) -> None:
    """Store ``persisted`` as the newest entry of ``key`` (the oldest past
    ``persist.MAX_ENTRIES`` dropped)."""
    from kiln.cache.store import write_entry

    persisted.frame_state = persist.frame_state_snapshot(frame_state.sizes, frame_state.scalars)
    frames = [persisted, *_read(key)][:persist.MAX_ENTRIES]
    try:
        payload = pickle.dumps(frames)
    except Exception as e:  # noqa: BLE001 - a value pickle cannot write
        log.info("kiln frame cache: %s not persisted: %s", persisted.label, e)
        return
    try:
        write_entry(_path(key), payload)
    except OSError as e:  # read-only or full: the frame stays compiled in this process
        log.warning("kiln cache: cannot write the persisted frame %s: %s", key, e)
        return
    counters["frames"]["persisted_saved"] += 1


__all__ = ["enabled", "frame_key", "load", "save"]
