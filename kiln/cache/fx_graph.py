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


def _holds(guards: list[str], hints: dict[str, int]) -> bool:
    for text in guards:
        expr = sympy.sympify(text, locals={n: sympy.Symbol(n, integer=True) for n in hints})
        if expr.free_symbols - {sympy.Symbol(n, integer=True) for n in hints}:
            return False
        value = expr.subs({sympy.Symbol(n, integer=True): v for n, v in hints.items()})
        if value is not sympy.true and value is not True:
            return False
    return True


def _remote_get(key: str) -> bytes | None:
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
        log.warning("kiln cache: discarding the remote FX graph entry %s: %s", key, why)
    return payload


def _remote_put(key: str, payload: bytes) -> None:
    from kiln.cache import remote
    try:
        remote.remote_backend().put(key, pack(payload))
    except Exception as e:  # noqa: BLE001 - a failing remote loses nothing locally
        remote._warn_once(f"put {type(e).__name__}", f"kiln: the remote cache failed: {e}")


class FxGraphCache:
    """Lookup, save and clear of compiled graphs (see the module doc)."""

    @staticmethod
    def _dir(key: str) -> Any:
        return subdir("fxgraph") / key[1:3] / key

    @classmethod
    def lookup(cls, key: str, example_inputs: list[Any]) -> Any | None:
        """The artifact of the first entry of ``key`` whose guards hold, or None."""
        hints, envs = _symbols(example_inputs)
        candidates: list[bytes] = []
        if config.fx_graph_cache:
            directory = cls._dir(key)
            if directory.is_dir():
                for path in sorted(directory.iterdir()):
                    if path.name.startswith("."):
                        continue  # a write in progress
                    payload = read_entry(path)
                    if payload is not None:
                        candidates.append(payload)
        found = cls._first_holding(key, candidates, hints)
        if found is None and config.fx_graph_remote_cache:
            payload = _remote_get(key)
            found = cls._first_holding(key, [payload] if payload is not None else [], hints)
            if found is not None and config.fx_graph_cache:  # a remote hit fills the local store
                cls._write_local(key, payload)
        if found is None:
            return None
        guards, artifact = found
        cls._add_guards(guards, envs)
        return artifact

    @staticmethod
    def _first_holding(key: str, payloads: list[bytes],
                       hints: dict[str, int]) -> tuple[list[str], Any] | None:
        for payload in payloads:
            try:
                entry = pickle.loads(payload)
                guards, artifact = entry["guards"], entry["artifact"]
            except Exception as e:  # noqa: BLE001 - an entry of an older layout: a miss
                log.warning("kiln cache: an FX graph entry of %s cannot be read: %s", key, e)
                continue
            if _holds(guards, hints):
                return guards, artifact
        return None

    @classmethod
    def _write_local(cls, key: str, payload: bytes) -> None:
        try:
            write_entry(cls._dir(key) / sha256_hash(payload), payload)
        except OSError as e:
            counters["codegen"]["fxgraph_cache_write_error"] += 1
            log.warning("kiln cache: cannot write the FX graph entry %s: %s", key, e)

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
                    env.evaluate_expr(sympy.sympify(text, locals=symbols))
                except Exception as e:  # noqa: BLE001 - the guard held on the hints
                    log.debug("kiln cache: guard %s not added: %s", text, e)

    @classmethod
    def save(cls, key: str, artifact: Any, guards: list[str]) -> None:
        try:
            payload = pickle.dumps({"guards": guards, "artifact": artifact}, protocol=4)
        except Exception as e:  # noqa: BLE001 - something in the artifact does not pickle
            counters["codegen"]["fxgraph_cache_pickle_error"] += 1
            log.info("kiln cache: the compiled graph %s is not stored: %s", key, e)
            return
        if config.fx_graph_cache:
            cls._write_local(key, payload)
        if config.fx_graph_remote_cache:
            _remote_put(key, payload)

    @staticmethod
    def clear() -> None:
        """Remove every FX graph entry on disk (a missing directory is fine)."""
        shutil.rmtree(cache_dir() / "fxgraph", ignore_errors=True)

    @classmethod
    def load(cls, gm: torch.fx.GraphModule, example_inputs: list[Any],
             compile_artifact: Callable[[], Any], load_artifact: Loader,
             on_hit: Callable[[Any, str], None] = lambda artifact, key: None) -> Any:
        """The callable of ``gm``: from the cache when an entry fits, else compiled by
        ``compile_artifact()`` and stored. ``load_artifact(artifact, key)`` turns an
        artifact into the callable; ``on_hit`` replays what compiling would have counted."""
        if not (config.fx_graph_cache or config.fx_graph_remote_cache):
            return load_artifact(compile_artifact(), "")
        try:
            key = compiled_fx_graph_hash(gm, example_inputs)
        except BypassFxGraphCache as e:
            counters["codegen"]["fxgraph_cache_bypass"] += 1
            log.info("kiln cache: bypassing the FX graph cache: %s", e)
            return load_artifact(compile_artifact(), "")
        artifact = cls.lookup(key, example_inputs)
        if artifact is not None:
            counters["codegen"]["fxgraph_cache_hit"] += 1
            log.info("kiln cache: FX graph cache hit for %s", key)
            on_hit(artifact, key)
            return load_artifact(artifact, key)
        counters["codegen"]["fxgraph_cache_miss"] += 1
        _, envs = _symbols(example_inputs)
        before = [len(env.guards) for env in envs]
        artifact = compile_artifact()
        guards = [str(g.expr) for env, n in zip(envs, before) for g in env.guards[n:]]
        cls.save(key, artifact, guards)
        return load_artifact(artifact, key)


__all__ = ["BypassFxGraphCache", "FxGraphCache"]
