"""The FX graph cache end to end: damaged entries are replaced, a graph that cannot be
keyed bypasses, guards over sizes decide the entry, many processes share one cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import kiln
from kiln import config
from kiln.cache import FxGraphCache, cache_dir, clear_caches, fresh_cache
from kiln.counters import counters


@pytest.fixture(autouse=True)
def _cache_on():
    with fresh_cache(), config.patch(fx_graph_cache=True):
        yield


def _fn(x, y):
    return (x * y + y).relu().sum(-1)


def _run(x, y):
    kiln.reset()
    clear_caches()
    return kiln.compile(_fn)(x, y)


def _entries():
    return [p for p in (cache_dir() / "fxgraph").rglob("*") if p.is_file()]


@pytest.mark.parametrize("how", ["truncate", "bitflip", "garbage"])
def test_a_damaged_entry_is_a_miss_and_replaced(how):
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    _run(x, y)
    (entry,) = _entries()
    data = entry.read_bytes()
    entry.write_bytes({"truncate": data[: len(data) // 2],
                       "bitflip": data[:-7] + bytes([data[-7] ^ 1]) + data[-6:],
                       "garbage": b"\0" * 100}[how])
    counters.clear()
    torch.testing.assert_close(_run(x, y), _fn(x, y))
    assert counters["codegen"]["fxgraph_cache_miss"] == 1
    assert len(_entries()) == 1  # written again
    counters.clear()
    torch.testing.assert_close(_run(x, y), _fn(x, y))
    assert counters["codegen"]["fxgraph_cache_hit"] == 1


def test_results_of_a_hit_equal_eager_for_new_values():
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    _run(x, y)
    counters.clear()
    x2, y2 = torch.randn(4, 8), torch.randn(4, 8)
    torch.testing.assert_close(_run(x2, y2), _fn(x2, y2))
    assert counters["codegen"]["fxgraph_cache_hit"] == 1


def test_the_cache_off_neither_reads_nor_writes():
    with config.patch(fx_graph_cache=False):
        _run(torch.randn(3), torch.randn(3))
    assert _entries() == [] and counters["codegen"]["fxgraph_cache_miss"] == 0


def test_clear_removes_every_entry():
    _run(torch.randn(3), torch.randn(3))
    assert _entries()
    FxGraphCache.clear()
    assert _entries() == []


def test_a_stored_guard_that_fails_on_the_current_sizes_is_a_miss(tmp_path):
    # an entry whose recorded guard (s0 > 100) does not hold for size 4 is skipped (the
    # FX graph cache's own lookup: the AOT autograd cache, which would load the entry by
    # name under its own guards, is off)
    x, y = torch.randn(4, 8), torch.randn(4, 8)
    with config.patch(automatic_dynamic_shapes=True, enable_autograd_cache=False):
        kiln.reset()
        kiln.compile(_fn, dynamic=True)(x, y)
    (entry,) = _entries()
    import pickle

    from kiln.cache import store
    payload = pickle.loads(store.read_entry(entry))
    payload["guards"] = ["s0 > 100"]
    store.write_entry(entry, pickle.dumps(payload))
    counters.clear()
    kiln.reset()
    clear_caches()
    with config.patch(enable_autograd_cache=False):
        torch.testing.assert_close(kiln.compile(_fn, dynamic=True)(x, y), _fn(x, y))
    assert counters["codegen"]["fxgraph_cache_miss"] == 1
    assert counters["codegen"]["fxgraph_cache_hit"] == 0


CHILD = textwrap.dedent("""
    import sys, torch, kiln
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.LayerNorm(32))
    x = torch.randn(8, 16, requires_grad=True)
    out = kiln.compile(model)(x)
    out.sum().backward()
    ref = model(x)
    torch.testing.assert_close(out, ref)
    c = kiln.counters["codegen"]
    print(c["fxgraph_cache_miss"], c["fxgraph_cache_hit"])
""")


def test_processes_compiling_the_same_model_at_once_share_one_valid_cache():
    env = {**__import__("os").environ, "KILN_CACHE_DIR": str(cache_dir())}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(8)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, results):
        assert p.returncode == 0, err
    # forward and backward graphs: each key holds valid entries, and a later process hits
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                         text=True, timeout=300, check=True).stdout.split()
    assert out == ["0", "2"]
