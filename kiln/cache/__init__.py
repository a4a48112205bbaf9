"""kiln's compiled-code caches (torch's ``torch._inductor.codecache``): cache directories,
the FX graph cache and its keys, the remote (Redis) store, generated Python modules. The
C++ kernel libraries are cached by kiln/codegen/cpp_compiler.py under
``cache_dir() / "cpp"``; CUDA sources and what nvcc builds from them by ``CUDACodeCache``
(kiln/codegen/cuda_compiler.py) under ``cache_dir() / "cuda"``."""

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
from kiln.codegen.cuda_compiler import CUDACodeCache, cuda_compile_command

__all__ = [
    "BypassFxGraphCache",
    "CUDACodeCache",
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
    "cuda_compile_command",
    "fresh_cache",
]
