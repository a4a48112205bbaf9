"""kiln/cache/store.py: atomic writes; truncated, bit-flipped and foreign entries are misses
that remove the file."""

from __future__ import annotations

import struct

import pytest

from kiln.cache import store


def test_an_entry_reads_back(tmp_path):
    path = tmp_path / "a" / "entry"
    store.write_entry(path, b"payload")
    assert store.read_entry(path) == b"payload"
    assert [p.name for p in path.parent.iterdir()] == ["entry"]  # no temporary file left


def _damage(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[:-3]
    if how == "header":
        return data[:10]
    if how == "bitflip":
        return data[:-1] + bytes([data[-1] ^ 0x10])
    if how == "version":  # the kiln version field of the header
        magic, fmt, _, digest = struct.unpack_from("<8sI32s32s", data)
        return struct.pack("<8sI32s32s", magic, fmt, b"0.0.0-other".ljust(32, b"\0"),
                           digest) + data[struct.calcsize("<8sI32s32s"):]
    return b"garbage" * 20


@pytest.mark.parametrize("how", ["truncated", "header", "bitflip", "version", "garbage"])
def test_a_damaged_entry_is_a_logged_miss_and_removed(tmp_path, caplog, how):
    path = tmp_path / "entry"
    store.write_entry(path, b"some payload bytes")
    path.write_bytes(_damage(path.read_bytes(), how))
    assert store.read_entry(path) is None
    assert not path.exists()
    assert "discarding" in caplog.text


def test_a_missing_entry_is_a_quiet_miss(tmp_path, caplog):
    assert store.read_entry(tmp_path / "none") is None
    assert caplog.text == ""


def test_an_unusable_cache_directory_is_a_clear_error(tmp_path, monkeypatch):
    import torch

    import kiln
    from kiln.cache import cache_dir
    from kiln.cache.dirs import CacheDirError
    from kiln.exc import BackendCompilerFailed

    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("KILN_CACHE_DIR", str(not_a_dir))
    with pytest.raises(CacheDirError, match=r"\$KILN_CACHE_DIR=.*cannot be used.*writable"):
        cache_dir()
    with kiln.config.patch(frame_cache=True, fx_graph_cache=True), \
            pytest.raises(BackendCompilerFailed, match="cannot be used"):
        kiln.compile(lambda x: x.sin() + 1)(torch.ones(3))
