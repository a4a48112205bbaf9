"""Where kiln's caches live, and the in-memory caches that shadow them.

``cache_dir()`` is ``$KILN_CACHE_DIR``, else ``~/.cache/kiln``, read on every call so a test
(or :func:`fresh_cache`) can point it elsewhere at run time; each artifact kind has a
subfolder (``cpp`` for kernel libraries, ``cuda`` for CUDA sources and their nvcc builds,
``fxgraph`` for FX graph entries, ``pycode`` for generated modules). In-memory caches
register a clear function here, so :func:`clear_caches` empties all of them at once (torch's
``clear_inductor_caches``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

ENV = "KILN_CACHE_DIR"

_CLEARERS: list[Callable[[], None]] = []


class CacheDirError(OSError):
    """kiln's cache directory cannot be created or is not a directory."""


def cache_dir() -> Path:
    """The root of kiln's on-disk caches (created when missing)."""
    root = os.environ.get(ENV)
    path = Path(root) if root else Path.home() / ".cache" / "kiln"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        where = f"${ENV}={root}" if root else f"the default {path}"
        raise CacheDirError(
            f"kiln's cache directory ({where}) cannot be used: {e}. Set ${ENV} to a "
            "writable directory (kiln builds its kernels there even with the caches "
            "off).") from e
    return path


def subdir(kind: str) -> Path:
    """``cache_dir() / kind``, created when missing."""
    path = cache_dir() / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def register_in_memory_cache(clear: Callable[[], None]) -> Callable[[], None]:
    """Record ``clear`` (a function emptying an in-memory cache) for :func:`clear_caches`."""
    _CLEARERS.append(clear)
    return clear


def clear_caches() -> None:
    """Empty every in-memory cache (loaded kernel libraries, generated modules, CUDA builds);
    the files on disk stay."""
    for clear in list(_CLEARERS):
        clear()


@contextlib.contextmanager
def fresh_cache(delete: bool = True) -> Iterator[Path]:
    """A fresh temporary cache directory and empty in-memory caches inside the block; the
    previous directory is restored after (and the temporary one removed unless
    ``delete=False``). torch's ``fresh_inductor_cache``."""
    clear_caches()
    saved = os.environ.get(ENV)
    path = Path(tempfile.mkdtemp(prefix="kiln-cache-"))
    os.environ[ENV] = str(path)
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved
        clear_caches()
        if delete:
            shutil.rmtree(path, ignore_errors=True)
