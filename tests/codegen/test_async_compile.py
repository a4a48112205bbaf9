"""kiln.codegen.async_compile: kernels compiled in a worker pool (fork and spawn) or in the
calling process, loaded in the parent, errors carried back through the future."""

import ctypes
import multiprocessing
import os
import signal

import pytest
import torch

import kiln
from kiln.codegen import async_compile, cpp_compiler
from kiln.codegen.async_compile import AsyncCompile
from kiln.codegen.cpp_compiler import CppCompileError

ARGTYPES = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long]


def scale_source(name: str, factor: int) -> str:
    return (f'extern "C" void {name}(const float* x, float* out, long n) {{\n'
            f"    #pragma omp parallel for\n"
            f"    for (long i = 0; i < n; ++i) out[i] = x[i] * {factor}.0f;\n"
            f"}}\n")


def check_scale(lib, name: str, factor: int) -> None:
    x = torch.randn(1000)
    out = torch.empty_like(x)
    lib.function(name, ARGTYPES)(x.data_ptr(), out.data_ptr(), x.numel())
    torch.testing.assert_close(out, x * factor)


@pytest.fixture(autouse=True)
def fresh(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    cpp_compiler.clear_memory_cache()
    async_compile._Pool.shutdown()
    yield
    async_compile._Pool.shutdown()
    cpp_compiler.clear_memory_cache()


@pytest.fixture
def no_compile_in_parent(monkeypatch):
    """Fails the test if this process runs the compiler itself."""
    def refuse(command):
        raise AssertionError("compiled in the parent process")
    monkeypatch.setattr(cpp_compiler, "run_compiler", refuse)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_compiles_in_parallel(method, no_compile_in_parent):
    with kiln.config.patch(compile_threads=2, worker_start_method=method):
        compiler = AsyncCompile()
        names = [f"scale{i}" for i in range(3)]
        futures = [compiler.submit(scale_source(name, i + 2)) for i, name in enumerate(names)]
        assert not all(f.done() for f in futures)  # submit did not wait for the compiler
        libs = [f.result(timeout=60) for f in futures]
        assert len({lib.key for lib in libs}) == 3
        for i, (lib, name) in enumerate(zip(libs, names)):
            check_scale(lib, name, i + 2)
        # A library already built is loaded, not compiled again.
        assert compiler.submit(scale_source("scale0", 2)).result() is libs[0]


def test_compile_many_keeps_order():
    sources = [scale_source(f"k{i}", i) for i in range(4)]
    with kiln.config.patch(compile_threads=2, worker_start_method="fork"):
        libs = AsyncCompile().compile_many(sources)
    assert [lib.key for lib in libs] == [cpp_compiler.source_key(s) for s in sources]
    for i, lib in enumerate(libs):
        check_scale(lib, f"k{i}", i)


def test_spawned_workers_do_not_import_torch():
    with kiln.config.patch(compile_threads=2, worker_start_method="spawn"):
        AsyncCompile.warm_pool()
        pool = async_compile._Pool.get()
        assert pool.submit(eval, "'torch' in __import__('sys').modules").result() is False


def test_one_thread_compiles_in_process(monkeypatch):
    calls = []
    real = cpp_compiler.run_compiler
    monkeypatch.setattr(cpp_compiler, "run_compiler", lambda c: calls.append(c) or real(c))
    with kiln.config.patch(compile_threads=1):
        AsyncCompile.warm_pool()  # nothing to warm
        future = AsyncCompile().submit(scale_source("one", 3))
        assert future.done() and len(calls) == 1
        check_scale(future.result(), "one", 3)
        bad = AsyncCompile().submit("this is not C++")
        assert bad.done() and isinstance(bad.exception(), CppCompileError)
    assert async_compile._Pool.executor is None
    assert multiprocessing.active_children() == []


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_warm_pool_starts_every_worker_once(method):
    with kiln.config.patch(compile_threads=2, worker_start_method=method):
        AsyncCompile.warm_pool()
        pool = async_compile._Pool.executor
        workers = {p.pid for p in multiprocessing.active_children()}
        assert pool is not None and len(workers) == 2
        AsyncCompile.warm_pool()
        assert async_compile._Pool.executor is pool
        assert {p.pid for p in multiprocessing.active_children()} == workers
        check_scale(AsyncCompile().submit(scale_source("warm", 5)).result(), "warm", 5)
        assert {p.pid for p in multiprocessing.active_children()} == workers


def test_new_settings_make_a_new_pool():
    with kiln.config.patch(compile_threads=2, worker_start_method="fork"):
        AsyncCompile.warm_pool()
        first = async_compile._Pool.executor
    with kiln.config.patch(compile_threads=2, worker_start_method="spawn"):
        AsyncCompile.warm_pool()
        assert async_compile._Pool.executor is not first
    with kiln.config.patch(compile_threads=2, worker_start_method="forkserver"):
        with pytest.raises(ValueError, match="worker_start_method"):
            AsyncCompile.warm_pool()


def test_compile_error_comes_back_through_the_future():
    with kiln.config.patch(compile_threads=2, worker_start_method="fork"):
        good = AsyncCompile().submit(scale_source("fine", 2))
        bad = AsyncCompile().submit('extern "C" void broken(float* x) { x[0] = ; }\n')
        with pytest.raises(CppCompileError, match="expected primary-expression"):
            bad.result(timeout=60)
        check_scale(good.result(timeout=60), "fine", 2)
    leftovers = [p.name for p in cpp_compiler.cache_dir().iterdir() if p.suffix == ".tmp"]
    assert leftovers == []


def test_same_source_in_flight_is_compiled_once():
    source = scale_source("twice", 4)
    with kiln.config.patch(compile_threads=2, worker_start_method="fork"):
        first, second = AsyncCompile().submit(source), AsyncCompile().submit(source)
        assert first is second
        check_scale(first.result(timeout=60), "twice", 4)


def test_a_dead_worker_does_not_fail_later_compiles():
    with kiln.config.patch(compile_threads=2, worker_start_method="fork"):
        AsyncCompile.warm_pool()
        for worker in multiprocessing.active_children():
            os.kill(worker.pid, signal.SIGKILL)
        libs = [AsyncCompile().submit(scale_source(f"after{i}", i)).result(timeout=60)
                for i in range(2)]
        for i, lib in enumerate(libs):
            check_scale(lib, f"after{i}", i)
