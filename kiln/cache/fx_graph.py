"""The FX graph cache: compiled graphs on disk (and in a remote store), keyed by what their
code depends on (hashing.py), so a new process compiling the same graph loads it instead.

Entries live at ``cache_dir()/fxgraph/<key[1:3]>/<key>/<hash of the entry>``: one key may
hold several entries, each compiled under other assumptions about the symbolic sizes. An
entry is the compiled artifact (what the backend needs to rebuild the callable without
compiling: the wrapper's source, the kernels' sources and libraries) and the guards over
symbolic sizes that compiling it added; a lookup takes the first entry whose guards hold for
the current sizes' hints, and adds those guards to the current ShapeEnv.

Counters (``kiln.counters["codegen"]``, torch's ``counters["inductor"]``):
``fxgraph_cache_miss``, ``fxgraph_cache_hit``, ``fxgraph_cache_bypass``,
``fxgraph_lookup_write_file`` (a hit whose generated module had to be written again),
``fxgraph_cache_pickle_error``.
"""

from __future__ import annotations

import functools
import logging
import pickle
import shutil
from collections.abc import Callable
from typing import Any

import sympy
import torch

from kiln import config
from kiln.cache.dirs import cache_dir, subdir
from kiln.cache.hashing import BypassFxGraphCache, compiled_fx_graph_hash, sha256_hash
from kiln.cache.store import pack, read_entry, unpack, write_entry
from kiln.counters import counters

log = logging.getLogger("kiln.cache")

Loader = Callable[[Any, str], Any]


def _symbols(example_inputs: list[Any]) -> tuple[dict[str, int], list[Any]]:
    """The hint of each size symbol of the inputs, and their ShapeEnvs."""
    hints: dict[str, int] = {}
    envs: dict[int, Any] = {}

    def visit(value: Any) -> None:
        if isinstance(value, torch.SymInt):
            node = value.node
            envs.setdefault(id(node.shape_env), node.shape_env)
            expr = node.expr
            if isinstance(expr, sympy.Symbol) and node.hint is not None:
                hints[expr.name] = int(node.hint)

    for x in example_inputs:
        if isinstance(x, torch.Tensor):
            for s in (*x.shape, *(x.stride() if x.layout == torch.strided else ())):
                visit(s)
        else:
            visit(x)
    return hints, list(envs.values())


@functools.cache
def _sympy_names() -> dict[str, Any]:
    """torch's sympy functions by name (``FloorDiv``, ``Mod``, ``CeilToInt``...): a guard
    read back must be made of the classes the ShapeEnv uses, not sympy's look-alikes."""
    import torch.utils._sympy.functions as functions

    return {name: value for name, value in vars(functions).items()
            if isinstance(value, type) and issubclass(value, sympy.Basic)
            and value.__module__ == functions.__name__}


def guard_text(expr: Any) -> str:
    """A guard as text that reads back as the same expression (sympy's ``srepr``)."""
    return sympy.srepr(expr)


def parse_guard(text: str) -> Any:
    return sympy.sympify(text, locals=_sympy_names())


def _holds(guards: list[str], hints: dict[str, int]) -> bool:
    for text in guards:
        try:
            expr = parse_guard(text)
            symbols = {s.name: s for s in expr.free_symbols}
            if symbols.keys() - hints.keys():
                return False
            value = expr.subs({s: hints[name] for name, s in symbols.items()})
        except Exception as e:  # noqa: BLE001 - a guard kiln cannot read: the entry is unusable
            log.debug("kiln cache: guard %s cannot be evaluated: %s", text, e)
            return False
        if value is not sympy.true and value is not True:
            return False
    return True


def _remote_put(key: str, payload: bytes) -> None:
    from kiln.cache import remote
    try:
        remote.remote_backend().put(key, pack(payload))
    except Exception as e:  # noqa: BLE001 - a failing remote loses nothing locally
        remote._warn_once(f"put {type(e).__name__}", f"kiln: the remote cache failed: {e}")


class FxGraphCache:
    """Lookup, save and clear of compiled graphs (see the module doc). The AOT autograd
    cache (kiln/aot/autograd_cache.py) stores its entries the same way, in its own
    subfolder and with its own counters: the class attributes say which."""

    SUBDIR = "fxgraph"
    COUNTER_GROUP = "codegen"
    COUNTER_PREFIX = "fxgraph_cache"
    WHAT = "FX graph"

    @staticmethod
    def _local_on() -> bool:
        return bool(config.fx_graph_cache)

    @staticmethod
    def _remote_on() -> bool:
        return bool(config.fx_graph_remote_cache)

    @classmethod
    def _dir(cls, key: str) -> Any:
        return subdir(cls.SUBDIR) / key[1:3] / key

    @classmethod
    def _count(cls, event: str) -> None:
        counters[cls.COUNTER_GROUP][f"{cls.COUNTER_PREFIX}_{event}"] += 1

    @classmethod
    def lookup(cls, key: str, example_inputs: list[Any]) -> Any | None:
        """The artifact of the first entry of ``key`` whose guards hold, or None."""
        found = cls.lookup_entry(key, example_inputs)
        return None if found is None else found[0]

    @classmethod
    def lookup_entry(cls, key: str, example_inputs: list[Any]) -> tuple[Any, str] | None:
        """(artifact, entry name) of the first entry of ``key`` whose guards hold for the
        sizes of ``example_inputs`` (its guards then added to their ShapeEnv), or None."""
        hints, envs = _symbols(example_inputs)
        candidates: list[tuple[str, bytes]] = []
        if cls._local_on():
            directory = cls._dir(key)
            if directory.is_dir():
                for path in sorted(directory.iterdir()):
                    if path.name.startswith("."):
                        continue  # a write in progress
                    payload = read_entry(path)
                    if payload is not None:
                        candidates.append((path.name, payload))
        found = cls._first_holding(key, candidates, hints)
        if found is None and cls._remote_on():
            payload = cls._remote_get(key)
            remote = [(sha256_hash(payload), payload)] if payload is not None else []
            found = cls._first_holding(key, remote, hints)
            if found is not None and cls._local_on():  # a remote hit fills the local store
                cls._write_local(key, remote[0][1])
        if found is None:
            return None
        guards, artifact, name = found
        cls._add_guards(guards, envs)
        return artifact, name

    @classmethod
    def load_entry(cls, key: str, name: str) -> Any | None:
        """The artifact of exactly the entry ``name`` of ``key`` (local, else remote), its
        guards not checked (the caller knows they hold); None when it is gone or damaged."""
        payload = None
        if cls._local_on():
            path = cls._dir(key) / name
            payload = read_entry(path) if path.is_file() else None
        if payload is None and cls._remote_on():
            payload = cls._remote_get(key)
            if payload is not None and sha256_hash(payload) != name:
                payload = None  # the remote holds another entry of the key
            elif payload is not None and cls._local_on():
                cls._write_local(key, payload)
        if payload is None:
            return None
        found = cls._first_holding(key, [(name, payload)], None)
        return None if found is None else found[1]

    @classmethod
    def _remote_get(cls, key: str) -> bytes | None:
        from kiln.cache import remote
        try:
            data = remote.remote_backend().get(key)
        except Exception as e:  # noqa: BLE001 - a failing remote is a miss, never an error
            remote._warn_once(f"get {type(e).__name__}", f"kiln: the remote cache failed: {e}")
            return None
        if data is None:
            return None
        payload, why = unpack(data)
        if payload is None:
            log.warning("kiln cache: discarding the remote %s entry %s: %s", cls.WHAT, key, why)
        return payload

    @classmethod
    def _first_holding(cls, key: str, payloads: list[tuple[str, bytes]],
                       hints: dict[str, int] | None) -> tuple[list[str], Any, str] | None:
        """The first entry whose guards hold on ``hints`` (None: do not check them)."""
        for name, payload in payloads:
            try:
                entry = pickle.loads(payload)
                guards, artifact = entry["guards"], entry["artifact"]
            except Exception as e:  # noqa: BLE001 - an entry of an older layout: a miss
                log.warning("kiln cache: an %s entry of %s cannot be read: %s", cls.WHAT, key, e)
                continue
            if hints is None or _holds(guards, hints):
                return guards, artifact, name
        return None

    @classmethod
    def _write_local(cls, key: str, payload: bytes) -> None:
        try:
            write_entry(cls._dir(key) / sha256_hash(payload), payload)
        except OSError as e:
            cls._count("write_error")
            log.warning("kiln cache: cannot write the %s entry %s: %s", cls.WHAT, key, e)

    @classmethod
    def remove_entry(cls, key: str, name: str) -> None:
        """Forget one local entry (it refers to something that is gone)."""
        (cls._dir(key) / name).unlink(missing_ok=True)

    @staticmethod
    def _add_guards(guards: list[str], envs: list[Any]) -> None:
        """The entry's guards in the current ShapeEnv, so the compiled frame checks them."""
        if not guards:
            return
        for env in envs:
            values = getattr(env, "backed_var_to_val", None)  # torch >= 2.13's name
            symbols = {s.name: s for s in (values if values is not None else env.var_to_val)}
            for text in guards:
                try:
                    expr = parse_guard(text)
                    expr = expr.xreplace({s: symbols[s.name] for s in expr.free_symbols
                                          if s.name in symbols})
                    env.evaluate_expr(expr)
                except Exception as e:  # noqa: BLE001 - the guard held on the hints
                    log.debug("kiln cache: guard %s not added: %s", text, e)

    @classmethod
    def save(cls, key: str, artifact: Any, guards: list[str]) -> str | None:
        """Store ``artifact`` under ``key``; the entry's name, or None if not stored."""
        try:
            payload = pickle.dumps({"guards": guards, "artifact": artifact}, protocol=4)
        except Exception as e:  # noqa: BLE001 - something in the artifact does not pickle
            cls._count("pickle_error")
            log.info("kiln cache: the %s %s is not stored: %s", cls.WHAT, key, e)
            return None
        if cls._local_on():
            cls._write_local(key, payload)
        if cls._remote_on():
            _remote_put(key, payload)
        return sha256_hash(payload)

    @classmethod
    def clear(cls) -> None:
        """Remove every entry on disk (a missing directory is fine)."""
        shutil.rmtree(cache_dir() / cls.SUBDIR, ignore_errors=True)

    @staticmethod
    def guards_added(envs: list[Any], before: list[int]) -> list[str]:
        """The guards ``envs`` gained since they had ``before`` guards each."""
        return [guard_text(g.expr) for env, n in zip(envs, before) for g in env.guards[n:]]

    @classmethod
    def load(cls, gm: torch.fx.GraphModule, example_inputs: list[Any],
             compile_artifact: Callable[[], Any], load_artifact: Loader,
             on_hit: Callable[[Any, str], None] = lambda artifact, key: None) -> Any:
        """The callable of ``gm``: from the cache when an entry fits, else compiled by
        ``compile_artifact()`` and stored. ``load_artifact(artifact, key)`` turns an
        artifact into the callable; ``on_hit`` replays what compiling would have counted.
        The callable's ``_kiln_fx_entry`` is ``(key, entry name)`` when the cache holds it
        (the AOT autograd cache refers to it so)."""
        if not (config.fx_graph_cache or config.fx_graph_remote_cache):
            return load_artifact(compile_artifact(), "")
        try:
            key = compiled_fx_graph_hash(gm, example_inputs)
        except BypassFxGraphCache as e:
            cls._count("bypass")
            log.info("kiln cache: bypassing the FX graph cache: %s", e)
            return load_artifact(compile_artifact(), "")
        found = cls.lookup_entry(key, example_inputs)
        if found is not None:
            artifact, name = found
            cls._count("hit")
            log.info("kiln cache: FX graph cache hit for %s", key)
            on_hit(artifact, key)
        else:
            cls._count("miss")
            _, envs = _symbols(example_inputs)
            before = [len(env.guards) for env in envs]
            artifact = compile_artifact()
            name = cls.save(key, artifact, cls.guards_added(envs, before))
        compiled = load_artifact(artifact, key)
        if name is not None:
            compiled._kiln_fx_entry = (key, name)
        return compiled


__all__ = ["BypassFxGraphCache", "FxGraphCache"]
