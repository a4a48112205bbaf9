"""kiln.codegen.cpp_compiler: build, load, call; the on-disk cache; compiler errors; damaged
libraries rebuilt."""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kiln.codegen import cpp_compiler
from kiln.codegen.cpp_compiler import CppCompileError, compile_cpp

ADD = r"""
extern "C" void add(const float* a, const float* b, float* out, long n) {
    #pragma omp parallel for
    for (long i = 0; i < n; ++i) out[i] = a[i] + b[i];
}
"""
ADD_ARGTYPES = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    cpp_compiler.clear_memory_cache()
    yield tmp_path / "cpp"
    cpp_compiler.clear_memory_cache()


@pytest.fixture
def compiles(monkeypatch):
    """Counts compiler runs made in this process."""
    calls = []
    real = cpp_compiler.run_compiler

    def counting(command):
        calls.append(command)
        return real(command)

    monkeypatch.setattr(cpp_compiler, "run_compiler", counting)
    return calls


def call_add(lib, a, b):
    out = torch.empty_like(a)
    lib.function("add", ADD_ARGTYPES)(a.data_ptr(), b.data_ptr(), out.data_ptr(), a.numel())
    return out


def test_add_matches_torch_including_nan_and_inf(cache_dir):
    lib = compile_cpp(ADD)
    a, b = torch.randn(10_007), torch.randn(10_007)
    a[:4] = torch.tensor([float("nan"), float("inf"), float("inf"), -0.0])
    b[:4] = torch.tensor([1.0, float("-inf"), 1.0, -0.0])
    torch.testing.assert_close(call_add(lib, a, b), a + b, rtol=0, atol=0, equal_nan=True)
    assert lib.path.parent == cache_dir and lib.path.name == f"{lib.key}.so"
    assert (cache_dir / f"{lib.key}.cpp").read_text() == ADD


def test_command_flags():
    command = cpp_compiler.cpp_compile_command("k.cpp", "k.so", extra_flags=["-lm"])
    libs = ["-lmvec"] if cpp_compiler.libmvec_available() else []
    assert command[1:] == ["-O3", "-march=native", "-fopenmp", "-fno-math-errno",
                           "-fno-trapping-math", "-shared", "-fPIC", "-std=c++17",
                           "k.cpp", "-o", "k.so", "-lm", *libs]
    assert "-ffast-math" not in command  # NaN and inf must behave as in eager


def test_compiler_comes_from_cxx(monkeypatch):
    monkeypatch.setenv("CXX", "/usr/bin/g++")
    assert cpp_compiler.cpp_compile_command("k.cpp", "k.so")[0] == "/usr/bin/g++"
    monkeypatch.delenv("CXX")
    assert cpp_compiler.cpp_compile_command("k.cpp", "k.so")[0] == "g++"


def test_key_covers_source_flags_and_compiler(monkeypatch):
    key = cpp_compiler.source_key(ADD)
    assert key == cpp_compiler.source_key(ADD)
    assert key != cpp_compiler.source_key(ADD + "\n")
    monkeypatch.setattr(cpp_compiler, "CXX_FLAGS", cpp_compiler.CXX_FLAGS + ("-DKILN_X",))
    assert key != cpp_compiler.source_key(ADD)
    monkeypatch.undo()
    monkeypatch.setattr(cpp_compiler, "compiler_version", lambda compiler: "g++ 99.0")
    assert key != cpp_compiler.source_key(ADD)


def test_same_source_compiles_once(compiles, cache_dir):
    first = compile_cpp(ADD)
    assert compile_cpp(ADD) is first and len(compiles) == 1
    before = os.stat(first.path)

    cpp_compiler.clear_memory_cache()  # as a new process: only the disk remains
    again = compile_cpp(ADD)
    assert again.key == first.key and again.path == first.path and len(compiles) == 1
    after = os.stat(again.path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    a, b = torch.randn(100), torch.randn(100)
    torch.testing.assert_close(call_add(again, a, b), a + b)
    assert sorted(p.suffix for p in cache_dir.iterdir()) == [".cpp", ".so"]  # no temp files


def test_distinct_sources_get_distinct_libraries(compiles):
    sub = ADD.replace("add(", "sub(").replace("a[i] + b[i]", "a[i] - b[i]")
    add, sub_lib = compile_cpp(ADD), compile_cpp(sub)
    assert add.key != sub_lib.key and len(compiles) == 2
    a, b = torch.randn(64), torch.randn(64)
    out = torch.empty(64)
    sub_lib.function("sub", ADD_ARGTYPES)(a.data_ptr(), b.data_ptr(), out.data_ptr(), 64)
    torch.testing.assert_close(out, a - b)


def test_syntax_error_raises_with_the_compilers_message(cache_dir):
    bad = 'extern "C" void broken(float* x) { x[0] = ; }\n'
    with pytest.raises(CppCompileError) as info:
        compile_cpp(bad)
    message = str(info.value)
    key = cpp_compiler.source_key(bad)
    assert "expected primary-expression" in message  # g++'s own words
    assert "g++ -O3" in message and str(cache_dir / f"{key}.cpp") in message
    assert isinstance(info.value, RuntimeError)
    assert [p.name for p in cache_dir.iterdir()] == [f"{key}.cpp"]  # no library, no temp


def test_missing_compiler_raises_cpp_compile_error(monkeypatch):
    monkeypatch.setenv("CXX", "/nonexistent/kiln-c++")
    with pytest.raises(CppCompileError, match="nonexistent/kiln-c.."):
        compile_cpp(ADD)


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated", "object_file"])
def test_damaged_library_on_disk_is_rebuilt(damage, compiles, cache_dir):
    job = cpp_compiler.plan(ADD)
    if damage == "garbage":
        job.library_path.write_bytes(b"not a shared library\n" * 10)
    elif damage == "empty":  # what a crash before the data reached the disk can leave
        job.library_path.write_bytes(b"")
    elif damage == "truncated":  # a copy cut short; dlopen of it would die of SIGBUS
        other = compile_cpp(ADD.replace("add(", "other_add("))
        job.library_path.write_bytes(other.path.read_bytes()[:2000])
    else:  # a complete ELF file that dlopen refuses (OSError from ctypes)
        job.source_path.write_text(ADD)
        subprocess.run(["g++", "-c", "-fPIC", "-x", "c++", str(job.source_path), "-o",
                        str(job.library_path)], check=True)
        assert cpp_compiler.elf_is_complete(job.library_path)
        with pytest.raises(OSError):
            ctypes.CDLL(str(job.library_path))
    compiles.clear()
    lib = compile_cpp(ADD)
    assert len(compiles) == 1
    assert cpp_compiler.elf_is_complete(lib.path)
    a, b = torch.randn(33), torch.randn(33)
    torch.testing.assert_close(call_add(lib, a, b), a + b)


def test_elf_check_accepts_every_prefix_only_when_whole(tmp_path):
    """Each cut of a real library is caught, not only the cut above."""
    data = compile_cpp(ADD).path.read_bytes()
    cut = tmp_path / "cut.so"
    for size in range(0, len(data), max(1, len(data) // 200)):
        cut.write_bytes(data[:size])
        assert not cpp_compiler.elf_is_complete(cut), size
    cut.write_bytes(data)
    assert cpp_compiler.elf_is_complete(cut)


def test_function_sets_restype_and_argtypes():
    lib = compile_cpp(ADD)
    add = lib.function("add", ADD_ARGTYPES)
    assert add.restype is None and add.argtypes == ADD_ARGTYPES
    with pytest.raises(ctypes.ArgumentError):
        add(1.5, 2.5, 3.5, 1)
    assert lib.function("add", [ctypes.c_void_p]).argtypes == [ctypes.c_void_p]
    assert add.argtypes == ADD_ARGTYPES  # each caller gets its own function object


def test_module_does_not_import_torch():
    """A compile worker may run this module; torch would cost it seconds to start."""
    path = Path(cpp_compiler.__file__)
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('cpp_compiler', {str(path)!r})\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "sys.modules['cpp_compiler'] = module\n"
            "spec.loader.exec_module(module)\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
