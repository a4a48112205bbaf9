"""The remote cache against a real redis-server on a free loopback port: a compile stores
its graphs, a second process with an empty local cache starts warm from Redis alone, a Redis
stopped mid-run (or never reachable) warns once and kiln goes on with correct results."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch

import kiln
from kiln import config
from kiln.cache import clear_caches, fresh_cache, remote
from kiln.counters import counters

pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="needs a redis-server binary (.ci/run installs it)")]
pytest.importorskip("redis")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_server(tmp_path, monkeypatch):
    port = _free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    monkeypatch.setenv("KILN_REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("KILN_REDIS_PORT", str(port))
    monkeypatch.setattr(remote, "_warned", set())
    yield proc, port
    proc.kill()
    proc.wait()


def _fn(x, y):
    return (x @ y).sin() + y.sum()


def _compile_and_check():
    x, y = torch.randn(8, 8), torch.randn(8, 8)
    kiln.reset()
    clear_caches()
    torch.testing.assert_close(kiln.compile(_fn)(x, y), _fn(x, y))


def test_a_second_local_cache_starts_warm_from_redis(redis_server):
    with config.patch(fx_graph_cache=True, fx_graph_remote_cache=True):
        with fresh_cache():
            _compile_and_check()
        assert counters["codegen"]["fxgraph_cache_miss"] == 1
        counters.clear()
        with fresh_cache() as local:
            _compile_and_check()
            assert counters["codegen"]["fxgraph_cache_hit"] == 1
            assert list((local / "fxgraph").rglob("*"))  # the hit filled the local store


CHILD = textwrap.dedent("""
    import torch, kiln
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.LayerNorm(32))
    x = torch.randn(8, 16, requires_grad=True)
    with kiln.config.patch(fx_graph_remote_cache=True):
        out = kiln.compile(model)(x)
        out.sum().backward()
    torch.testing.assert_close(out, model(x))
    c = kiln.counters["codegen"]
    print(c["fxgraph_cache_miss"], c["fxgraph_cache_hit"])
""")


def test_a_new_process_with_an_empty_disk_cache_starts_warm_from_redis(redis_server, tmp_path):
    def run(local_dir):
        env = {**os.environ, "KILN_CACHE_DIR": str(tmp_path / local_dir)}
        return subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                              text=True, timeout=300, check=True).stdout.split()

    assert run("first") == ["2", "0"]  # forward and backward compiled, stored in Redis
    assert run("second") == ["0", "2"]  # another machine's empty disk: both from Redis


def test_redis_stopped_mid_run_warns_once_and_kiln_goes_on(redis_server):
    proc, _ = redis_server
    with config.patch(fx_graph_cache=True, fx_graph_remote_cache=True), fresh_cache():
        _compile_and_check()
        proc.kill()
        proc.wait()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            started = time.monotonic()
            _compile_and_check()  # a local hit: Redis is not asked
            counters.clear()
            kiln.reset()
            clear_caches()
            g = lambda x: (x * 3).cos()  # noqa: E731 - a new graph: Redis get and put fail
            x = torch.randn(5)
            torch.testing.assert_close(kiln.compile(g)(x), g(x))
            h = lambda x: (x * 4).tan()  # noqa: E731
            torch.testing.assert_close(kiln.compile(h)(x), h(x))
        assert time.monotonic() - started < 30
    unreachable = [w for w in caught if "unreachable" in str(w.message)]
    assert len(unreachable) == 1, [str(w.message) for w in caught]


def test_an_unreachable_redis_is_a_warning_not_an_error(monkeypatch):
    monkeypatch.setenv("KILN_REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("KILN_REDIS_PORT", str(_free_port()))  # nothing listens there
    monkeypatch.setattr(remote, "_warned", set())
    with config.patch(fx_graph_cache=False, fx_graph_remote_cache=True), fresh_cache(), \
            pytest.warns(RuntimeWarning, match="unreachable"):
        _compile_and_check()
