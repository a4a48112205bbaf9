"""Generated Python modules (the wrappers of compiled graphs) as files in the cache
directory, loaded as modules: a traceback through generated code shows a real file, and
``PyCodeCache.cache`` maps each key to its module (whose ``__file__`` is the source).

The key is ``"c"`` + the hash of the source and an ``extra`` string (what the module's
globals come from, e.g. the FX graph key: two graphs with the same wrapper text but other
constants are two modules).
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from kiln.cache.dirs import register_in_memory_cache, subdir
from kiln.cache.hashing import sha256_hash
from kiln.cache.store import write_atomic


class PyCodeCache:
    cache: dict[str, types.ModuleType] = {}

    @staticmethod
    def key_of(source: str, extra: str = "") -> str:
        return "c" + sha256_hash((source.strip() + "||" + extra).encode())

    @staticmethod
    def path_of(key: str) -> Path:
        return subdir("pycode") / key[1:3] / f"{key}.py"

    @classmethod
    def write(cls, source: str, extra: str = "") -> tuple[str, Path, bool]:
        """(key, path, whether the file had to be written)."""
        key = cls.key_of(source, extra)
        path = cls.path_of(key)
        written = not path.exists()
        if written:
            write_atomic(path, source.encode())
        return key, path, written

    @classmethod
    def load(cls, source: str, namespace: dict[str, Any], extra: str = "") -> types.ModuleType:
        """The module of ``source`` with ``namespace`` as its initial globals (one per key in
        this process)."""
        key, path, _ = cls.write(source, extra)
        module = cls.cache.get(key)
        if module is not None:
            return module
        module = types.ModuleType(key)
        module.__file__ = str(path)
        module.__dict__.update(namespace)
        exec(compile(source, str(path), "exec"), module.__dict__)
        return cls.cache.setdefault(key, module)

    @classmethod
    def cache_clear(cls, purge: bool = False) -> None:
        """Forget the loaded modules (``purge``: remove their files too)."""
        if purge:
            for module in cls.cache.values():
                Path(module.__file__).unlink(missing_ok=True)
        cls.cache.clear()


register_in_memory_cache(PyCodeCache.cache_clear)
