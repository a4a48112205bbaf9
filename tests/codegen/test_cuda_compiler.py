"""kiln.codegen.cuda_compiler: the nvcc command line, the choice of compiler, CUDACodeCache's
keys, files and in-memory entries (nvcc mocked), compile errors; a real nvcc build loaded
with ctypes where nvcc exists, and a kernel launched where a GPU does too."""

from __future__ import annotations

import ctypes
import os
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from kiln import config
from kiln.cache import CUDACodeCache as CacheExport
from kiln.cache import cache_dir, clear_caches, fresh_cache
from kiln.codegen import CUDACodeCache, cuda_compile_command, cuda_compiler
from kiln.exc import CUDACompileError, KilnException


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    """A fresh cache directory, and the default compiler whatever this machine's env says."""
    monkeypatch.delenv("CUDACXX", raising=False)
    with fresh_cache(), config.patch(cuda_cxx=None):
        yield


def _executable(path: Path) -> str:
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return str(path)


def _fake_toolkit(root: Path, *, stubs: bool = True) -> Path:
    (root / "include").mkdir(parents=True)
    (root / "include" / "cuda_runtime.h").write_text("")
    (root / "lib64").mkdir()
    if stubs:
        (root / "lib64" / "stubs").mkdir()
        (root / "lib64" / "stubs" / "libcuda.so").write_text("")
    return root


# --- the command line -------------------------------------------------------------------

def test_object_command():
    parts = shlex.split(cuda_compile_command(["a.cu"], "out.o", "o"))
    assert parts[0] == "nvcc"
    assert parts[-4:] == ["-c", "-o", "out.o", "a.cu"]
    for option in ("-t=0", "-DNDEBUG", "-std=c++17", "--expt-relaxed-constexpr", "-w"):
        assert option in parts
    for option in ("-fPIC", "-fno-strict-aliasing", "-fvisibility=hidden"):
        assert parts[parts.index(option) - 1] == "-Xcompiler"
    assert any(p.startswith("-gencode=arch=compute_") for p in parts)
    assert "--use_fast_math" not in parts
    assert "-shared" not in parts and "-lcudart" not in parts  # nothing is linked


def test_shared_library_command_puts_extra_args_after_kilns_then_output_then_sources():
    cmd = cuda_compile_command(["abc.cu", "def.cu"], "output", "so", ["-Wwhatever", "-DNDEBUG=0"])
    parts = shlex.split(cmd)
    assert parts[-7:] == ["-Wwhatever", "-DNDEBUG=0", "-shared", "-o", "output", "abc.cu",
                          "def.cu"]
    assert parts.index("-DNDEBUG") < parts.index("-DNDEBUG=0")  # the user's option wins
    assert "-lcudart" in parts
    assert cuda_compile_command(["abc.cu"], "output", "so", None) == \
        cuda_compile_command(["abc.cu"], "output", "so", [])


@pytest.mark.parametrize("ext", ["exe", "cubin", "", ".so"])
def test_other_extensions_are_not_implemented(ext):
    with pytest.raises(NotImplementedError, match="'o' .*or 'so'.*not"):
        cuda_compile_command(["a.cu"], "out", ext)


def test_paths_with_spaces_survive_the_shell_string():
    parts = shlex.split(cuda_compile_command(["my dir/a.cu"], "out dir/a.so", "so"))
    assert parts[-3:] == ["-o", "out dir/a.so", "my dir/a.cu"]


def test_the_gpu_architecture_is_in_the_command(monkeypatch):
    monkeypatch.setattr(cuda_compiler, "cuda_arch", lambda: "90")
    parts = shlex.split(cuda_compile_command(["a.cu"], "a.o", "o"))
    assert "-gencode=arch=compute_90,code=sm_90" in parts
    assert "-gencode=arch=compute_90,code=compute_90" in parts  # PTX, for newer GPUs


def test_without_a_gpu_the_architecture_is_the_default(monkeypatch):
    cuda_compiler.cuda_arch.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    try:
        assert cuda_compiler.cuda_arch() == cuda_compiler.DEFAULT_ARCH == "80"
    finally:
        cuda_compiler.cuda_arch.cache_clear()


def test_the_toolkit_gives_include_and_library_folders(tmp_path, monkeypatch):
    home = _fake_toolkit(tmp_path / "cuda")
    monkeypatch.setenv("CUDA_HOME", str(home))
    obj = shlex.split(cuda_compile_command(["a.cu"], "a.o", "o"))
    assert f"-I{home}/include" in obj and not any(p.startswith("-L") for p in obj)
    so = shlex.split(cuda_compile_command(["a.cu"], "a.so", "so"))
    assert f"-I{home}/include" in so and f"-L{home}/lib64" in so
    assert f"-rpath={home}/lib64" in so
    # The driver stub is linked against but never found at load time through the rpath.
    assert f"-L{home}/lib64/stubs" in so and "-lcuda" in so
    assert not any("rpath" in p and "stubs" in p for p in so)


def test_a_folder_without_cuda_headers_is_no_toolkit(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(tmp_path))
    parts = shlex.split(cuda_compile_command(["a.cu"], "a.so", "so"))
    assert f"-I{tmp_path}/include" not in parts and f"-L{tmp_path}/lib64" not in parts


# --- the compiler -----------------------------------------------------------------------

def test_the_default_compiler_is_nvcc(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(_fake_toolkit(tmp_path / "cuda")))  # never counts
    assert cuda_compiler.cuda_cxx() == "nvcc"
    assert cuda_compile_command(["a.cu"], "a.o", "o").startswith("nvcc ")


def test_cudacxx_is_used_when_it_names_an_executable(tmp_path, monkeypatch):
    compiler = _executable(tmp_path / "my-nvcc")
    monkeypatch.setenv("CUDACXX", compiler)
    assert cuda_compiler.cuda_cxx() == compiler
    assert shlex.split(cuda_compile_command(["a.cu"], "a.o", "o"))[0] == compiler


@pytest.mark.parametrize("what", ["missing", "folder", "not executable"])
def test_cudacxx_that_is_no_executable_is_ignored(tmp_path, monkeypatch, what):
    path = tmp_path / "nvcc"
    if what == "folder":
        path.mkdir()
    elif what == "not executable":
        path.write_text("")
    monkeypatch.setenv("CUDACXX", str(path))
    assert cuda_compiler.cuda_cxx() == "nvcc"


def test_config_cuda_cxx_comes_first(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDACXX", _executable(tmp_path / "from-env"))
    configured = _executable(tmp_path / "from-config")
    with config.patch(cuda_cxx=configured):
        assert cuda_compiler.cuda_cxx() == configured


def test_config_cuda_cxx_that_is_no_executable_warns_and_falls_back(tmp_path, monkeypatch,
                                                                   caplog):
    fallback = _executable(tmp_path / "from-env")
    monkeypatch.setenv("CUDACXX", fallback)
    with config.patch(cuda_cxx=str(tmp_path / "missing")):
        assert cuda_compiler.cuda_cxx() == fallback
    assert "config.cuda_cxx" in caplog.text and "not an executable" in caplog.text


def test_config_cuda_cxx_reads_its_environment_variable_in_a_new_process():
    """...where importing this module also shows it does not import kiln.cache (the FX graph
    cache, torch.fx) by itself."""
    code = ("import sys, kiln\n"
            "before = 'kiln.cache' in sys.modules\n"
            "import kiln.codegen.cuda_compiler\n"
            "print(kiln.config.cuda_cxx, before == ('kiln.cache' in sys.modules))\n")
    env = dict(os.environ, KILN_CUDA_CXX="/opt/cuda/bin/nvcc")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["/opt/cuda/bin/nvcc", "True"]
    assert config.entries()["cuda_cxx"].default is None


# --- CUDACodeCache with nvcc mocked -----------------------------------------------------

SOURCE = '__global__ void k(float* x) { x[threadIdx.x] = 0; }\n'


def _output_of(cmd_parts: list[str]) -> Path:
    return Path(cmd_parts[cmd_parts.index("-o") + 1])


@pytest.fixture
def nvcc():
    """subprocess.check_output mocked as a compiler that writes its output file (and checks
    that it writes a temporary file beside the destination, not the destination)."""
    def compile_(cmd_parts, **kwargs):
        out = _output_of(cmd_parts)
        assert out.name.startswith(".") and ".tmp." in out.name
        assert not out.with_name(out.name.split(".")[1] + out.suffix).exists()
        out.write_bytes(b"built from " + Path(cmd_parts[-1]).read_bytes())
        return b""

    with mock.patch("subprocess.check_output", side_effect=compile_) as check_output:
        yield check_output


def test_both_packages_export_the_same_names():
    import kiln.cache
    assert CacheExport is CUDACodeCache
    assert kiln.cache.cuda_compile_command is cuda_compile_command
    assert {"CUDACodeCache", "cuda_compile_command"} <= set(kiln.cache.__all__)


def test_compile_writes_the_source_and_builds_beside_it(nvcc):
    output, key, source_path = CUDACodeCache.compile(SOURCE, "so", ["-lineinfo"])
    expected = cache_dir() / "cuda" / key[:2] / f"{key}.cu"
    assert Path(source_path) == expected and expected.read_text() == SOURCE
    assert Path(output) == expected.with_suffix(".so")
    assert Path(output).read_bytes() == b"built from " + SOURCE.encode()
    assert sorted(p.name for p in expected.parent.iterdir()) == [f"{key}.cu", f"{key}.so"]
    (cmd_parts,), kwargs = nvcc.call_args
    assert cmd_parts[0] == "nvcc" and "-lineinfo" in cmd_parts and "-DNDEBUG" in cmd_parts
    assert cmd_parts[-1] == source_path and _output_of(cmd_parts).parent == expected.parent
    assert kwargs == {"stderr": subprocess.STDOUT, "env": os.environ}
    assert CUDACodeCache.cache[key].output_path == output
    assert CUDACodeCache.cache[key].input_path == source_path


def test_a_second_compile_is_found_in_memory_then_on_disk(nvcc):
    first = CUDACodeCache.compile(SOURCE, "o")
    with mock.patch.object(CUDACodeCache, "path_of", side_effect=AssertionError("disk")):
        assert CUDACodeCache.compile(SOURCE, "o") == first  # not even a look at the disk
    clear_caches()
    assert CUDACodeCache.cache == {}
    assert CUDACodeCache.compile(SOURCE, "o") == first  # the build on disk
    assert nvcc.call_count == 1


def test_the_key_covers_source_options_and_output_kind(nvcc, monkeypatch):
    keys = {
        CUDACodeCache.compile(SOURCE, "so")[1],
        CUDACodeCache.compile(SOURCE, "so", ["-lineinfo"])[1],
        CUDACodeCache.compile(SOURCE, "so", ["-lineinfo", "-G"])[1],
        CUDACodeCache.compile(SOURCE, "o")[1],
        CUDACodeCache.compile(SOURCE + "// other\n", "so")[1],
    }
    other_arch = "86" if cuda_compiler.cuda_arch() != "86" else "90"
    monkeypatch.setattr(cuda_compiler, "cuda_arch", lambda: other_arch)
    keys.add(CUDACodeCache.compile(SOURCE, "so")[1])
    assert len(keys) == 6 and nvcc.call_count == 6
    assert CUDACodeCache.key_of(SOURCE, "so", []) == CUDACodeCache.key_of(SOURCE, "so")


def test_the_key_covers_the_compiler_version(nvcc, monkeypatch):
    key = CUDACodeCache.compile(SOURCE, "so")[1]
    monkeypatch.setattr(cuda_compiler, "compiler_version", lambda compiler: "release 99.9")
    assert CUDACodeCache.compile(SOURCE, "so")[1] != key


def test_a_compiler_that_wrote_nothing_leaves_no_entry(caplog):
    with mock.patch("subprocess.check_output") as check_output:  # the seed's bare mock
        output, key, _ = CUDACodeCache.compile(SOURCE, "so")
        assert key not in CUDACodeCache.cache and not Path(output).exists()
        CUDACodeCache.compile(SOURCE, "so")
    assert check_output.call_count == 2
    assert "wrote no" in caplog.text


def test_fresh_cache_and_clear_caches_empty_the_memory(nvcc):
    key = CUDACodeCache.compile(SOURCE, "so")[1]
    with fresh_cache():
        assert CUDACodeCache.cache == {}
        CUDACodeCache.compile(SOURCE, "so")
    assert CUDACodeCache.cache == {}
    CUDACodeCache.compile(SOURCE, "so")
    assert list(CUDACodeCache.cache) == [key] and nvcc.call_count == 2


def test_a_failing_compile_raises_with_the_command_and_the_output():
    message = b'test.cu(1): error: identifier "oops" is undefined\n'

    def fail(cmd_parts, **kwargs):
        _output_of(cmd_parts).write_bytes(b"half a library")
        raise subprocess.CalledProcessError(2, cmd_parts, output=message)

    with mock.patch("subprocess.check_output", side_effect=fail):
        with pytest.raises(CUDACompileError) as info:
            CUDACodeCache.compile("oops;", "so", ["-Wsomething"])
    error = info.value
    assert isinstance(error, KilnException)
    assert 'identifier "oops" is undefined' in str(error) and "nvcc" in str(error)
    assert error.cmd[0] == "nvcc" and "-Wsomething" in error.cmd
    assert error.output == message.decode().strip()
    assert CUDACodeCache.cache == {}
    folder = cache_dir() / "cuda"
    assert [p.suffix for p in folder.rglob("*") if p.is_file()] == [".cu"]  # no temp left
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == str(error) and again.cmd == error.cmd


def test_a_missing_compiler_says_how_to_choose_one():
    with mock.patch("subprocess.check_output", side_effect=FileNotFoundError("nvcc")):
        with pytest.raises(CUDACompileError, match="config.cuda_cxx or \\$CUDACXX"):
            CUDACodeCache.compile(SOURCE, "o")


def test_load_loads_shared_libraries_only():
    with pytest.raises(RuntimeError, match="not 'o'"):
        CUDACodeCache.load(SOURCE, "o")


# --- nvcc for real ----------------------------------------------------------------------

HOST_AND_KERNEL = r"""
#include <cuda_runtime.h>

__global__ void add_one(float* x, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1.0f;
}

extern "C" __attribute__((visibility("default"))) int kiln_answer(int a) { return a + 41; }

extern "C" __attribute__((visibility("default"))) int launch_add_one(float* x, int n) {
    add_one<<<(n + 255) / 256, 256>>>(x, n);
    return (int)cudaGetLastError();
}
"""

needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")


def _answer(lib) -> int:
    fn = lib.kiln_answer
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
    return fn(1)


@needs_nvcc
def test_nvcc_builds_a_library_that_loads_and_runs(caplog):
    lib, key, source_path = CUDACodeCache.load(HOST_AND_KERNEL, "so")
    assert _answer(lib) == 42
    assert Path(source_path).read_text() == HOST_AND_KERNEL
    assert lib.key == key and Path(lib.path) == Path(source_path).with_suffix(".so")
    with pytest.raises(AttributeError):  # hidden by -fvisibility=hidden
        lib.handle["_Z7add_onePfi"]

    # A library cut short on disk (a damaged cache entry) is rebuilt, not loaded. (A new
    # file, renamed over the old: truncating the loaded one in place would pull pages from
    # under this process.)
    whole = Path(lib.path).read_bytes()
    damaged = Path(lib.path).with_name("damaged")
    damaged.write_bytes(whole[:1000])
    os.replace(damaged, lib.path)
    clear_caches()
    again, again_key, _ = CUDACodeCache.load(HOST_AND_KERNEL, "so")
    assert again_key == key and _answer(again) == 42
    assert "not a complete library; compiling it again" in caplog.text
    assert len(Path(again.path).read_bytes()) == len(whole)


@needs_nvcc
def test_nvcc_builds_an_object_file():
    output, _, _ = CUDACodeCache.compile(HOST_AND_KERNEL, "o")
    data = Path(output).read_bytes()
    assert data[:4] == b"\x7fELF" and int.from_bytes(data[16:18], "little") == 1  # ET_REL


@needs_nvcc
def test_nvcc_errors_come_back_with_the_compilers_message():
    with pytest.raises(CUDACompileError, match="kiln_undefined_name"):
        CUDACodeCache.compile("int f() { return kiln_undefined_name; }", "o")


@pytest.mark.gpu
@needs_nvcc
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_kernel_built_by_nvcc_runs_on_the_gpu():
    lib, _, _ = CUDACodeCache.load(HOST_AND_KERNEL, "so")
    launch = lib.launch_add_one
    launch.restype, launch.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]
    x = torch.arange(1000, dtype=torch.float32, device="cuda")
    assert launch(x.data_ptr(), x.numel()) == 0
    torch.cuda.synchronize()
    torch.testing.assert_close(x.cpu(), torch.arange(1000, dtype=torch.float32) + 1)
