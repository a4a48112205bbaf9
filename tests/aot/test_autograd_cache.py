"""The AOT autograd cache (kiln/aot/autograd_cache.py): a compiled AOT function comes back
from disk in a new process or after kiln.reset(), forward and gradients equal to eager; what
the key cannot see bypasses; stale, damaged and guarded entries are misses."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

import kiln
from kiln import config
from kiln.aot.autograd_cache import AotAutogradCache
from kiln.cache import FxGraphCache, cache_dir, clear_caches, fresh_cache, store
from kiln.counters import counters


@pytest.fixture(autouse=True)
def _cache_on():
    with fresh_cache(), config.patch(fx_graph_cache=True, enable_autograd_cache=True):
        yield


def _aot() -> dict[str, int]:
    return {k.removeprefix("autograd_cache_"): v for k, v in counters["aot_autograd"].items()
            if k.startswith("autograd_cache_")}


def _fresh_run(fn, *args):
    """``fn`` compiled from nothing in memory (a new process, as far as kiln can tell)."""
    kiln.reset()
    clear_caches()
    counters.clear()
    return kiln.compile(fn)(*args)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.LayerNorm(16))


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_a_training_graph_is_loaded_with_equal_outputs_and_gradients():
    model, x = _model(), torch.randn(4, 8, requires_grad=True)
    expected = model(x)
    expected.sum().backward()
    expected_grads, expected_x = _grads(model), x.grad.clone()
    for round_ in range(2):
        model.zero_grad()
        x.grad = None
        out = _fresh_run(model, x)
        out.sum().backward()
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(_grads(model), expected_grads)
        torch.testing.assert_close(x.grad, expected_x)
        if round_ == 0:
            assert _aot() == {"miss": 1, "saved": 1}
            assert counters["codegen"]["fxgraph_cache_miss"] == 2
        else:
            assert _aot() == {"hit": 1}
            # its forward and backward graphs come from the FX graph cache, as torch counts
            assert counters["codegen"]["fxgraph_cache_hit"] == 2
            assert counters["codegen"]["fxgraph_cache_miss"] == 0


def test_an_inference_graph_is_loaded_and_replays_the_kernel_count():
    def fn(x, y):
        return (x * y).softmax(-1) + y

    x, y = torch.randn(4, 8), torch.randn(4, 8)
    kiln.metrics.reset()
    torch.testing.assert_close(_fresh_run(fn, x, y), fn(x, y))
    compiled_count = kiln.metrics.generated_kernel_count
    kiln.metrics.reset()
    torch.testing.assert_close(_fresh_run(fn, x, y), fn(x, y))
    assert _aot() == {"hit": 1}
    assert kiln.metrics.generated_kernel_count == compiled_count > 0


def test_grad_mode_and_requires_grad_key_apart():
    def fn(x):
        return (x.sin() * 2).sum()

    x = torch.randn(8)
    _fresh_run(fn, x)
    with torch.no_grad():
        _fresh_run(fn, x)
    assert _aot() == {"miss": 1, "saved": 1}
    _fresh_run(fn, x.requires_grad_())
    assert _aot() == {"miss": 1, "saved": 1}
    out = _fresh_run(fn, x)
    out.backward()
    assert _aot() == {"hit": 1}
    torch.testing.assert_close(x.grad, 2 * x.detach().cos())


def test_input_mutations_and_aliased_calls_after_a_hit():
    def fn(x, y):
        x.add_(1)
        return x * y

    for _ in range(2):
        x, y = torch.ones(6), torch.full((6,), 3.0)
        torch.testing.assert_close(_fresh_run(fn, x, y), torch.full((6,), 6.0))
        torch.testing.assert_close(x, torch.full((6,), 2.0))
    assert _aot() == {"hit": 1}
    # called with views of one tensor, the mutation shows through both (eager's result)
    compiled = kiln.compile(fn)
    base = torch.zeros(6)
    a, b = base[:4], base[2:]
    expected_base = torch.zeros(6)
    expected = fn(expected_base[:4], expected_base[2:])
    torch.testing.assert_close(compiled(a, b), expected)
    torch.testing.assert_close(base, expected_base)


def test_the_same_tensor_twice_after_a_hit():
    def fn(x, y):
        return x * 2 + y

    x = torch.randn(5)
    for _ in range(2):
        torch.testing.assert_close(_fresh_run(fn, x, x), x * 3)
    assert _aot() == {"hit": 1}
    # the key knows that both inputs were one tensor: two tensors compile apart
    _fresh_run(fn, x, x.clone())
    assert _aot() == {"miss": 1, "saved": 1}


def _user_function(x):
    return x * 3


def test_a_graph_calling_a_user_function_bypasses():
    kiln.allow_in_graph(_user_function)
    try:
        def fn(x):
            return _user_function(x).relu()

        x = torch.randn(4)
        for _ in range(2):
            torch.testing.assert_close(_fresh_run(fn, x), (x * 3).relu())
            assert _aot() == {"bypass": 1}
    finally:
        kiln.reset()


def test_a_graph_whose_outputs_alias_inputs_is_not_stored():
    def fn(x):
        return x.view(-1), x * 2

    x = torch.randn(2, 3)
    for _ in range(2):
        view, doubled = _fresh_run(fn, x)
        assert view._base is x
        torch.testing.assert_close(doubled, x * 2)
        assert _aot() == {"miss": 1}


def test_fx_graphs_gone_make_the_entry_stale():
    model, x = _model(), torch.randn(4, 8)
    _fresh_run(model, x)
    FxGraphCache.clear()
    torch.testing.assert_close(_fresh_run(model, x), model(x))
    assert _aot() == {"miss": 1, "saved": 1}
    assert counters["codegen"]["fxgraph_cache_miss"] > 0
    _fresh_run(model, x)
    assert _aot() == {"hit": 1}


def _aot_entries():
    return [p for p in (cache_dir() / AotAutogradCache.SUBDIR).rglob("*") if p.is_file()]


def test_a_damaged_entry_is_a_miss_and_replaced():
    model, x = _model(), torch.randn(4, 8)
    _fresh_run(model, x)
    (entry,) = _aot_entries()
    data = entry.read_bytes()
    entry.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    torch.testing.assert_close(_fresh_run(model, x), model(x))
    assert _aot() == {"miss": 1, "saved": 1}
    assert len(_aot_entries()) == 1


def test_a_stored_guard_that_fails_on_the_current_sizes_is_a_miss():
    def fn(x, y):
        return (x * y + y).relu().sum(-1)

    x, y = torch.randn(4, 8), torch.randn(4, 8)
    kiln.reset()
    kiln.compile(fn, dynamic=True)(x, y)
    (entry,) = _aot_entries()
    payload = pickle.loads(store.read_entry(entry))
    payload["guards"] = ["s0 > 100"]
    store.write_entry(entry, pickle.dumps(payload))
    kiln.reset()
    counters.clear()
    torch.testing.assert_close(kiln.compile(fn, dynamic=True)(x, y), fn(x, y))
    assert _aot()["miss"] == 1


def test_dynamic_sizes_hit_for_another_size():
    def fn(x):
        return (x.exp() + 1).sum(0)

    kiln.reset()
    kiln.compile(fn, dynamic=True)(torch.randn(5, 3))
    kiln.reset()
    clear_caches()
    counters.clear()
    x = torch.randn(9, 3)
    torch.testing.assert_close(kiln.compile(fn, dynamic=True)(x), fn(x))
    assert _aot() == {"hit": 1}


def test_off_means_no_lookups():
    with config.patch(enable_autograd_cache=False):
        _fresh_run(_model(), torch.randn(4, 8))
    assert _aot() == {}
    assert not _aot_entries()


def test_the_remote_store_when_on(monkeypatch):
    from kiln.cache import remote

    class Memory:
        data: dict[str, bytes] = {}

        def get(self, key):
            return self.data.get(key)

        def put(self, key, data):
            self.data[key] = data

    monkeypatch.setattr(remote, "remote_backend", lambda *a, **k: Memory())
    model, x = _model(), torch.randn(4, 8)
    with config.patch(fx_graph_remote_cache=True, autograd_remote_cache=True):
        _fresh_run(model, x)
        assert any(k.startswith("a") for k in Memory.data)
        with fresh_cache():  # an empty disk: the remote store alone
            torch.testing.assert_close(_fresh_run(model, x), model(x))
            assert _aot() == {"hit": 1}


CHILD = textwrap.dedent("""
    import torch, kiln
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.LayerNorm(32))
    x = torch.randn(8, 16, requires_grad=True)
    out = kiln.compile(model)(x)
    out.sum().backward()
    torch.testing.assert_close(out, model(x))
    c = kiln.counters["aot_autograd"]
    print(c["autograd_cache_miss"], c["autograd_cache_hit"])
""")


def test_a_new_process_starts_from_the_entry():
    env = {**os.environ, "KILN_CACHE_DIR": str(cache_dir())}
    runs = [subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                           text=True, timeout=300) for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    assert [r.stdout.split() for r in runs] == [["1", "0"], ["0", "1"]]
