"""Compiling CUDA C++ with nvcc, and the content-addressed cache of what it builds (torch's
``cuda_compile_command`` and ``CUDACodeCache``).

    cmd = cuda_compile_command(["a.cu"], "a.so", "so", ["-lineinfo"])   # one shell string
    lib, key, source_path = CUDACodeCache.load(source, "so")           # built, then loaded
    lib.my_launcher(...)                                               # a ctypes function

A build lives at ``cache_dir() / "cuda" / key[:2] / key.<ext>``, next to its source
``key.cu``. The key hashes the source, the compile options (with the extra arguments and the
GPU architecture, so a build for another GPU or other flags is never picked up) and the
compiler's version. nvcc writes into a temporary file beside the destination, which is
renamed into place only once complete: processes sharing the directory see no entry or a
whole one. ``CUDACodeCache.cache`` remembers, per process, the keys built or found, so a second
compile of the same source never looks at the disk (``kiln.cache.clear_caches()`` empties it).

Options: no ``--use_fast_math`` (kernels keep eager's NaN, inf and rounding semantics);
``-DNDEBUG`` always; host code gets ``-fvisibility=hidden``, so a function meant to be called
through ctypes is declared ``extern "C" __attribute__((visibility("default")))``.

Like cpp_compiler.py, this module imports neither torch (only when asked for the GPU's
architecture) nor, until it first compiles, kiln.cache (whose package imports the FX graph
cache and torch.fx).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln import config
from kiln.codegen.cpp_compiler import elf_is_complete
from kiln.exc import CUDACompileError

log = logging.getLogger("kiln.codegen")

# Bumped when the layout of the build directory or the meaning of a key changes.
_KEY_VERSION = "kiln-cuda-1"

# Without a GPU to ask (building ahead of time, or on a CPU-only machine): Ampere.
DEFAULT_ARCH = "80"

NVCC_OPTIONS = (
    "-t=0",                       # compile the -gencode targets in parallel
    "-O1",                        # host code is launch glue; ptxas optimizes device code anyway
    "-std=c++17",
    "--expt-relaxed-constexpr",   # constexpr host functions callable from device code
    "-w",
    "-DNDEBUG",
)
HOST_OPTIONS = ("-fPIC", "-fno-strict-aliasing", "-fvisibility=hidden")

_OUTPUT_OPTIONS = {"o": ("-c",), "so": ("-shared",)}


def cuda_cxx() -> str:
    """The CUDA compiler: ``kiln.config.cuda_cxx`` (env ``KILN_CUDA_CXX``), else
    ``$CUDACXX``, each only where it names an executable (a program on $PATH or a path);
    else ``nvcc``, found on $PATH when the command runs."""
    configured = config.cuda_cxx
    if configured:
        if shutil.which(configured):
            return configured
        log.warning("kiln: config.cuda_cxx=%r is not an executable; using the default "
                    "CUDA compiler", configured)
    from_env = os.environ.get("CUDACXX")
    if from_env and shutil.which(from_env):
        return from_env
    return "nvcc"


def cuda_home(compiler: str | None = None) -> Path | None:
    """The CUDA toolkit's root: ``$CUDA_HOME`` or ``$CUDA_PATH``, else the folder above the
    compiler's ``bin/`` (links followed), else ``/usr/local/cuda``; the first that holds
    ``include/cuda_runtime.h``, None when none does."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    found = shutil.which(compiler or cuda_cxx())
    if found:
        candidates.append(str(Path(os.path.realpath(found)).parent.parent))
    candidates.append("/usr/local/cuda")
    for candidate in candidates:
        if candidate and Path(candidate, "include", "cuda_runtime.h").is_file():
            return Path(candidate)
    return None


@functools.cache
def cuda_arch() -> str:
    """The current GPU's compute capability as nvcc spells it (``"90"`` for 9.0), or
    :data:`DEFAULT_ARCH` where torch sees no CUDA device. Asked once per process."""
    try:
        import torch
        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"{major}{minor}"
    except (ImportError, RuntimeError, AssertionError) as e:
        log.debug("kiln: no CUDA device to take the architecture from (%s)", e)
    return DEFAULT_ARCH


def arch_options(arch: str | None = None) -> list[str]:
    """Machine code for ``arch``, and its PTX so a newer GPU can still JIT-compile it."""
    arch = arch or cuda_arch()
    return [f"-gencode=arch=compute_{arch},code=sm_{arch}",
            f"-gencode=arch=compute_{arch},code=compute_{arch}"]


def _toolkit_lib(home: Path) -> Path | None:
    for name in ("lib64", "lib"):
        if (home / name).is_dir():
            return home / name
    return None


# Where the linker may find libcuda.so besides the toolkit: the driver's usual folders.
_DRIVER_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib/aarch64-linux-gnu",
                    "/usr/local/nvidia/lib64", "/usr/lib/wsl/lib")


@functools.cache
def _libcuda_dir(home: Path | None) -> Path | None:
    """A folder with ``libcuda.so`` (the driver API) to link against: the toolkit's stubs
    (which stand in for the driver at link time; the real one is found at load time),
    else a driver's folder. None on a machine with neither: then ``-lcuda`` is left out
    (only code calling the driver API needs it, and such code passes it itself)."""
    lib = _toolkit_lib(home) if home is not None else None
    dirs = [lib / "stubs", lib] if lib is not None else []
    dirs += [Path(d) for d in os.environ.get("LIBRARY_PATH", "").split(os.pathsep) if d]
    dirs += [Path(d) for d in _DRIVER_LIB_DIRS]
    return next((d for d in dirs if (d / "libcuda.so").exists()), None)


def _include_options(home: Path | None) -> list[str]:
    return [f"-I{home / 'include'}"] if home is not None else []


def _lib_options(home: Path | None) -> list[str]:
    """Link options for a shared library: the toolkit's library folder, searched at link
    time and, through the rpath, at load time; the runtime (libcudart); the driver
    (libcuda) where it can be linked."""
    options = []
    lib = _toolkit_lib(home) if home is not None else None
    if lib is not None:
        options += [f"-L{lib}", "-Xlinker", f"-rpath={lib}"]
    libcuda = _libcuda_dir(home)
    if libcuda is not None:
        if libcuda != lib:
            options.append(f"-L{libcuda}")  # never an rpath: it may be the stubs
        options.append("-lcuda")
    return options + ["-lcudart"]


def cuda_compile_command(src_files: list[str], dst_file: str, dst_file_ext: str,
                         extra_args: list[str] | None = None) -> str:
    """The nvcc command line that builds ``src_files`` into ``dst_file``: an object file
    (``dst_file_ext="o"``: ``-c``) or a shared library (``"so"``: ``-shared``, linked with
    the CUDA driver and runtime). Extra arguments follow kiln's options (a later option
    overrides an earlier one), then come the output and the sources. A shell string, quoted
    with :func:`shlex.join`; :func:`shlex.split` gives back the arguments."""
    if dst_file_ext not in _OUTPUT_OPTIONS:
        raise NotImplementedError(
            f"kiln: cuda_compile_command builds 'o' (object) or 'so' (shared library) files, "
            f"not {dst_file_ext!r}")
    compiler = cuda_cxx()
    home = cuda_home(compiler)
    parts = [compiler, *arch_options(), *NVCC_OPTIONS]
    for option in HOST_OPTIONS:
        parts += ["-Xcompiler", option]
    parts += _include_options(home)
    if dst_file_ext == "so":
        parts += _lib_options(home)
    parts += [*(extra_args or ()), *_OUTPUT_OPTIONS[dst_file_ext], "-o", dst_file, *src_files]
    return shlex.join(parts)


@functools.cache
def compiler_version(compiler: str) -> str:
    """``compiler --version`` in full (nvcc's first lines are the same in every release; its
    last says which one). Empty where the compiler cannot run: the compile then fails with
    its own message. Cached: one subprocess per compiler per process."""
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


@dataclass(frozen=True)
class CUDACacheEntry:
    """What ``CUDACodeCache.cache`` holds per key."""

    output_path: str
    input_path: str


@dataclass(frozen=True)
class CUDALibrary:
    """A loaded shared library built by :class:`CUDACodeCache`: ``lib.name`` is the ctypes
    function ``name`` of the library (set its ``argtypes`` and ``restype`` before calling)."""

    key: str
    path: str
    handle: ctypes.CDLL = field(repr=False)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # copy, pickle and dataclass machinery probe dunders
            raise AttributeError(name)
        return getattr(self.handle, name)


class CUDACodeCache:
    """CUDA sources on disk and what nvcc built from them, by key (see the module docstring).

    ``compile`` returns ``(output path, key, source path)``; ``load`` builds a shared
    library and loads it."""

    cache: dict[str, CUDACacheEntry] = {}
    _SOURCE_CODE_SUFFIX = "cu"

    @staticmethod
    def key_of(source_code: str, dst_file_ext: str, extra_args: Sequence[str] | None = None) -> str:
        """sha256 of the source, the command's options (placeholder paths: where a file is
        built is no part of what it is) and the compiler's version."""
        options = cuda_compile_command(["SRC"], "OUT", dst_file_ext, list(extra_args or ()))
        digest = hashlib.sha256()
        for part in (_KEY_VERSION, source_code, options, compiler_version(cuda_cxx())):
            digest.update(part.encode())
            digest.update(b"\0")
        return digest.hexdigest()

    @classmethod
    def path_of(cls, key: str) -> Path:
        """Where the source of ``key`` is stored; its builds lie beside it."""
        from kiln.cache.dirs import subdir
        return subdir("cuda") / key[:2] / f"{key}.{cls._SOURCE_CODE_SUFFIX}"

    @classmethod
    def write(cls, source_code: str, dst_file_ext: str,
              extra_args: list[str] | None = None) -> tuple[str, str]:
        """(key, source path), the source written there when it is not yet."""
        key = cls.key_of(source_code, dst_file_ext, extra_args)
        path = cls.path_of(key)
        if not path.exists():
            _write_source(path, source_code)
        return key, str(path)

    @classmethod
    def compile(cls, source_code: str, dst_file_ext: str,
                extra_args: list[str] | None = None) -> tuple[str, str, str]:
        """Build ``source_code`` unless built before (in this process or on disk):
        ``(output path, key, source path)``. Raises :class:`kiln.exc.CUDACompileError`."""
        key = cls.key_of(source_code, dst_file_ext, extra_args)
        if (entry := cls.cache.get(key)) is not None:
            return entry.output_path, key, entry.input_path
        input_path = cls.path_of(key)
        output_path = input_path.with_suffix("." + dst_file_ext)
        if output_path.exists():
            if not input_path.exists():
                _write_source(input_path, source_code)
        else:
            # Written again before a build: cheap, and nvcc must never read a damaged copy.
            _write_source(input_path, source_code)
            _build(input_path, output_path, dst_file_ext, extra_args)
        entry = CUDACacheEntry(str(output_path), str(input_path))
        if output_path.exists():
            _remember(key, entry)
        return entry.output_path, key, entry.input_path

    @classmethod
    def load(cls, source_code: str, dst_file_ext: str = "so") -> tuple[CUDALibrary, str, str]:
        """Build ``source_code`` into a shared library and load it with ctypes:
        ``(library, key, source path)``. A library on disk that is not a whole ELF file (a
        damaged cache entry) is rebuilt, since loading it could kill the process."""
        if dst_file_ext != "so":
            raise RuntimeError(
                f"kiln: CUDACodeCache.load loads shared libraries ('so'), not {dst_file_ext!r}")
        output_path, key, input_path = cls.compile(source_code, dst_file_ext)
        if not elf_is_complete(Path(output_path)):
            log.warning("kiln: %s is not a complete library; compiling it again", output_path)
            cls.cache.pop(key, None)
            Path(output_path).unlink(missing_ok=True)
            output_path, key, input_path = cls.compile(source_code, dst_file_ext)
        return CUDALibrary(key, output_path, ctypes.CDLL(output_path)), key, input_path

    @classmethod
    def cache_clear(cls) -> None:
        """Forget what this process built or found; the files stay (libraries already loaded
        stay loaded: ctypes cannot safely unload them)."""
        cls.cache.clear()


def _build(input_path: Path, output_path: Path, dst_file_ext: str,
           extra_args: list[str] | None) -> None:
    """Run nvcc into a temporary file beside ``output_path``, then rename it into place."""
    temp = output_path.with_name(
        f".{output_path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.{dst_file_ext}")
    cmd = cuda_compile_command([str(input_path)], str(temp), dst_file_ext, extra_args)
    cmd_parts = shlex.split(cmd)
    log.debug("kiln: CUDA compile: %s", cmd)
    try:
        # Through the module attribute, so that tests can patch subprocess.check_output.
        subprocess.check_output(cmd_parts, stderr=subprocess.STDOUT, env=os.environ)
    except subprocess.CalledProcessError as e:
        temp.unlink(missing_ok=True)
        raise CUDACompileError(cmd_parts, e.output) from e
    except OSError as e:
        temp.unlink(missing_ok=True)
        raise CUDACompileError(
            cmd_parts, f"cannot run {cmd_parts[0]!r}: {e} (set kiln.config.cuda_cxx or "
                       "$CUDACXX to choose the CUDA compiler)") from e
    if temp.exists():
        os.replace(temp, output_path)
        log.debug("kiln: compiled %s", output_path)
    else:
        log.warning("kiln: %s reported success but wrote no %s", cmd_parts[0], temp)



def _write_source(path: Path, source_code: str) -> None:
    from kiln.cache.store import write_atomic
    write_atomic(path, source_code.encode())


_registered_with_clear_caches = False


def _remember(key: str, entry: CUDACacheEntry) -> None:
    """Record ``entry``, having made sure that ``kiln.cache.clear_caches()`` empties the
    cache (registered on the first entry: until then there is nothing to clear, and this
    module need not import kiln.cache)."""
    global _registered_with_clear_caches
    if not _registered_with_clear_caches:
        from kiln.cache.dirs import register_in_memory_cache
        register_in_memory_cache(CUDACodeCache.cache_clear)
        _registered_with_clear_caches = True
    CUDACodeCache.cache[key] = entry
