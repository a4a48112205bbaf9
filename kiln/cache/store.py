"""Robust files for cache entries: atomic writes and self-checking contents.

A write goes to a temporary file in the entry's directory and is renamed into place, so a
reader sees either no entry or a whole one, and many processes writing the same entry end
with one valid file (the last rename wins; every writer wrote the same bytes).

Each entry starts with a header: a magic word, the format version, kiln's version and the
SHA-256 of the payload. A read that finds a short file, another magic, another version or a
checksum that does not match reports why, removes the file and returns None: a corrupt or
foreign entry is a miss, never a crash or a wrong result.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import uuid
from pathlib import Path

log = logging.getLogger("kiln.cache")

MAGIC = b"KILNCACH"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sI32s32s")  # magic, format version, kiln version, sha256


def _kiln_version() -> bytes:
    from kiln import __version__
    return __version__.encode()[:32].ljust(32, b"\0")


def pack(payload: bytes) -> bytes:
    """``payload`` behind its header."""
    return _HEADER.pack(MAGIC, FORMAT_VERSION, _kiln_version(),
                        hashlib.sha256(payload).digest()) + payload


def unpack(data: bytes) -> tuple[bytes | None, str]:
    """(payload, "") for a valid entry, else (None, why it is not one)."""
    if len(data) < _HEADER.size:
        return None, f"truncated ({len(data)} bytes)"
    magic, version, kiln_version, digest = _HEADER.unpack_from(data)
    if magic != MAGIC:
        return None, "not a kiln cache entry"
    if version != FORMAT_VERSION or kiln_version != _kiln_version():
        writer = kiln_version.rstrip(bytes(1)).decode(errors="replace")
        return None, f"written by kiln {writer} (format {version})"
    payload = data[_HEADER.size:]
    if hashlib.sha256(payload).digest() != digest:
        return None, "checksum mismatch (corrupted or truncated)"
    return payload, ""


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink(missing_ok=True)


def write_entry(path: Path, payload: bytes) -> None:
    write_atomic(path, pack(payload))


def read_entry(path: Path) -> bytes | None:
    """The payload stored at ``path``; None when there is none or it is not valid (then the
    file is removed, with the reason logged)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("kiln cache: cannot read %s: %s", path, e)
        return None
    payload, why = unpack(data)
    if payload is None:
        log.warning("kiln cache: discarding the entry %s: %s", path, why)
        path.unlink(missing_ok=True)
    return payload
