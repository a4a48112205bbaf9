"""The remote cache: compiled graphs shared by a fleet of machines through a key-value store.

A backend is anything with ``get(key) -> bytes | None`` and ``put(key, data: bytes)``
(:class:`RemoteCacheBackend`); :class:`RedisRemoteCacheBackend` is the real one, on the
``redis`` client (``pip install kiln[redis]``), at ``KILN_REDIS_HOST`` (default
``localhost``) and ``KILN_REDIS_PORT`` (default 6379). Its socket timeouts are bounded
(``KILN_REDIS_TIMEOUT`` seconds, default 1): an unreachable or slow Redis, or a missing
client, warns once per process and kiln goes on with the local store. What goes through it
is the local store's self-checking entry format (store.py), so a damaged value is a miss.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Protocol

log = logging.getLogger("kiln.cache")

_warned: set[str] = set()


def _warn_once(what: str, message: str) -> None:
    if what not in _warned:
        _warned.add(what)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        log.warning("%s", message)


class RemoteCacheBackend(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...


class RedisRemoteCacheBackend:
    """Values at ``kiln:<cache_id>::<key>`` in Redis."""

    def __init__(self, cache_id: str) -> None:
        self.cache_id = cache_id
        self.host = os.environ.get("KILN_REDIS_HOST", "localhost")
        self.port = int(os.environ.get("KILN_REDIS_PORT", "6379"))
        timeout = float(os.environ.get("KILN_REDIS_TIMEOUT", "1"))
        self._redis = None
        try:
            import redis
        except ImportError:
            _warn_once("import", "kiln: fx_graph_remote_cache is on but the redis client is "
                       "not installed (pip install 'kiln[redis]'); using the local cache only")
            return
        self._errors = (redis.exceptions.RedisError, OSError)
        self._redis = redis.Redis(host=self.host, port=self.port, socket_timeout=timeout,
                                  socket_connect_timeout=timeout)

    def _key(self, key: str) -> str:
        return f"kiln:{self.cache_id}::{key}"

    def _failed(self, e: BaseException) -> None:
        self._redis = None
        _warn_once(f"{self.host}:{self.port}",
                   f"kiln: the remote cache at Redis {self.host}:{self.port} is unreachable "
                   f"({type(e).__name__}: {e}); using the local cache only")

    def get(self, key: str) -> bytes | None:
        if self._redis is None:
            return None
        try:
            value = self._redis.get(self._key(key))
        except self._errors as e:
            self._failed(e)
            return None
        return value if isinstance(value, bytes) else None

    def put(self, key: str, data: bytes) -> None:
        if self._redis is None:
            return
        try:
            self._redis.set(self._key(key), data)
        except self._errors as e:
            self._failed(e)


def remote_backend(cache_id: str = "fx-graph-v1") -> RemoteCacheBackend:
    """The remote backend FX graph lookups and saves use (looked up at each use, so a test
    can put a counting backend in its place)."""
    return RedisRemoteCacheBackend(cache_id)
