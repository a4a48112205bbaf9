"""kiln's compiled-code caches (torch's ``torch._inductor.codecache``): cache directories,
the FX graph cache and its keys, the remote (Redis) store, generated Python modules. The
C++ kernel libraries are cached by kiln/codegen/cpp_compiler.py under
``cache_dir() / "cpp"``."""

from kiln.cache.dirs import cache_dir, clear_caches, fresh_cache
from kiln.cache.fx_graph import FxGraphCache
from kiln.cache.hashing import (
    BypassFxGraphCache,
    FxGraphCachePickler,
    FxGraphHashDetails,
    TensorMetadata,
    TensorMetadataAndValues,
)
from kiln.cache.pycode import PyCodeCache
from kiln.cache.remote import RedisRemoteCacheBackend, RemoteCacheBackend

__all__ = [
    "BypassFxGraphCache",
    "FxGraphCache",
    "FxGraphCachePickler",
    "FxGraphHashDetails",
    "PyCodeCache",
    "RedisRemoteCacheBackend",
    "RemoteCacheBackend",
    "TensorMetadata",
    "TensorMetadataAndValues",
    "cache_dir",
    "clear_caches",
    "fresh_cache",
]
