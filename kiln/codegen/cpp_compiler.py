"""Compiling C++ kernel source with the system compiler and loading it with ctypes.

    lib = compile_cpp('extern "C" void add(const float* a, float* out, long n) {...}')
    add = lib.function("add", [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_long])

The build directory is content-addressed: a library's file name is the sha256 of its source,
the compile command and the compiler's version, so a kernel built once (by this process,
an earlier one, or a worker) is found on disk and never compiled again, and a new compiler
or new flags never pick up a stale build. Libraries are renamed into place only when
complete, so a reader never sees half a file from a concurrent writer.

A compile is split into steps that a worker pool can share with the parent
(kiln/codegen/async_compile.py): :func:`plan` (key and paths), :func:`begin_build` (source
written, command chosen), running the command (anywhere), :func:`finish_build` (checked and
renamed into place), :func:`load` (ctypes, which only the parent can do: a handle does not
cross processes). This module imports neither torch nor the rest of kiln, and must not:
it is the part of code generation that needs to be cheap to import anywhere.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shlex
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("kiln.codegen")

# No -ffast-math: generated kernels must keep eager's NaN, inf and signed-zero semantics.
# -fno-math-errno and -fno-trapping-math change no result (only errno and the floating-point
# exception flags, which nothing reads): they let the compiler vectorize sqrt and hoist
# math out of loops.
CXX_FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fno-trapping-math",
             "-shared", "-fPIC", "-std=c++17")

# Bumped when the layout of the build directory or the meaning of a key changes.
_KEY_VERSION = "kiln-cpp-1"


class CppCompileError(RuntimeError):
    """The C++ compiler failed; the message holds its command, its stderr and the source file."""


def cache_dir() -> Path:
    """Where compiled kernels live: ``kiln.cache.cache_dir() / "cpp"`` (read on every call
    so a test, or a user, can point it elsewhere at run time)."""
    from kiln.cache.dirs import subdir
    return subdir("cpp")


def cxx() -> str:
    """The C++ compiler: ``$CXX``, else ``g++``."""
    return os.environ.get("CXX") or "g++"


@functools.cache
def libmvec_available() -> bool:
    """Whether this glibc has the vector math library (libmvec, glibc 2.35 and newer on
    x86-64) with every function generated kernels may call in vector form."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # type: ignore[union-attr]
        major, minor = (int(p) for p in version.split(".")[:2])
    except (ValueError, OSError, AttributeError):
        return False
    return name == "glibc" and (major, minor) >= (2, 35) and os.uname().machine == "x86_64"


def cpp_compile_command(src_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                        extra_flags: Sequence[str] = ()) -> list[str]:
    """The command that builds ``src_path`` into the shared library ``out_path``. Extra
    flags go last, where both compile options and ``-l`` libraries take effect; libmvec is
    linked where it exists (kernels call its vector exp, erf, tanh...)."""
    libs = ["-lmvec"] if libmvec_available() else []
    return [cxx(), *CXX_FLAGS, str(src_path), "-o", str(out_path), *extra_flags, *libs]


@functools.cache
def compiler_version(compiler: str) -> str:
    """First line of ``compiler --version``; part of every key, so upgrading the compiler
    rebuilds kernels. Cached: one subprocess per compiler per process."""
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise CppCompileError(
            f"kiln: cannot run the C++ compiler {compiler!r} (set $CXX to choose one): {e}"
        ) from e
    return out.stdout.splitlines()[0].strip() if out.stdout else ""


def source_key(source: str) -> str:
    """sha256 of everything that decides the built library: source, command, compiler."""
    compiler = cxx()
    template = shlex.join(cpp_compile_command("SRC", "OUT"))
    digest = hashlib.sha256()
    for part in (_KEY_VERSION, source, template, compiler_version(compiler)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class CompileJob:
    """One kernel's place in the build directory, fixed before any work is done."""

    key: str
    source: str
    source_path: Path
    library_path: Path


@dataclass(frozen=True)
class PendingBuild:
    """A started build: the command to run and the temporary file it writes."""

    job: CompileJob
    command: list[str]
    temp_path: Path


@dataclass(frozen=True)
class CompiledLibrary:
    """A loaded kernel library. ``function`` gives typed entry points into it."""

    key: str
    path: Path
    handle: ctypes.CDLL = field(repr=False)

    def function(self, name: str, argtypes: Sequence[type]) -> Callable[..., None]:
        """The C function ``name`` returning void, with ``argtypes`` set so ctypes converts
        (and checks) each argument. Each call makes a fresh function object, so two callers
        may set different argtypes on the same symbol."""
        fn = self.handle[name]
        fn.restype = None
        fn.argtypes = list(argtypes)
        return fn


def plan(source: str) -> CompileJob:
    """Key and paths for ``source``; touches the disk only to create the build directory."""
    key = source_key(source)
    directory = cache_dir()
    return CompileJob(key, source, directory / f"{key}.cpp", directory / f"{key}.so")


def is_built(job: CompileJob) -> bool:
    return job.library_path.exists()


def _write_atomically(path: Path, text: str) -> None:
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(temp, path)


def install(job: CompileJob, library: bytes) -> None:
    """Put a library built elsewhere (an FX graph cache entry holds its bytes) where
    ``job`` builds it, atomically; :func:`load` still checks it is a whole ELF file."""
    from kiln.cache.store import write_atomic
    _write_atomically(job.source_path, job.source)
    write_atomic(job.library_path, library)


def begin_build(job: CompileJob) -> PendingBuild:
    """Write the source (again: it is cheap, and a compile must never read a damaged copy)
    and choose a temporary output name next to the final one, so the rename is atomic."""
    _write_atomically(job.source_path, job.source)
    fd, temp = tempfile.mkstemp(dir=job.library_path.parent, prefix=job.key + ".",
                                suffix=".so.tmp")
    os.close(fd)
    return PendingBuild(job, cpp_compile_command(job.source_path, temp), Path(temp))


def run_compiler(command: list[str]) -> subprocess.CompletedProcess[str]:
    """Run one compile in this process. Pool workers make the same ``subprocess.run`` call,
    handed to them directly (kiln/codegen/async_compile.py says why)."""
    return subprocess.run(command, capture_output=True, text=True)


def finish_build(build: PendingBuild,
                 result: subprocess.CompletedProcess[str] | BaseException) -> Path:
    """Check the compiler's result and rename the library into place; on failure remove the
    temporary file and raise :class:`CppCompileError`."""
    if isinstance(result, BaseException):
        build.temp_path.unlink(missing_ok=True)
        if not isinstance(result, OSError):
            raise result
        detail = f"cannot run the C++ compiler (set $CXX to choose one): {result}"
    elif result.returncode != 0:
        build.temp_path.unlink(missing_ok=True)
        detail = f"exit status {result.returncode}\n{result.stderr.strip()}"
    else:
        detail = None
    if detail is not None:
        raise CppCompileError(
            f"kiln: C++ compile failed\n  command: {shlex.join(build.command)}\n"
            f"  source: {build.job.source_path}\n{detail}")
    os.replace(build.temp_path, build.job.library_path)
    log.debug("kiln: compiled %s", build.job.library_path)
    return build.job.library_path


def build(job: CompileJob, *, force: bool = False) -> Path:
    """Compile ``job`` in this process unless its library is already on disk."""
    if not force and is_built(job):
        return job.library_path
    pending = begin_build(job)
    try:
        result: subprocess.CompletedProcess[str] | BaseException = run_compiler(pending.command)
    except OSError as e:
        result = e
    return finish_build(pending, result)


_loaded: dict[str, CompiledLibrary] = {}
_loaded_lock = threading.Lock()


def loaded(key: str) -> CompiledLibrary | None:
    """The library already loaded by this process for ``key``, if any."""
    with _loaded_lock:
        return _loaded.get(key)


def elf_is_complete(path: Path) -> bool:
    """Whether every part of the ELF file that its headers point at is in the file. dlopen
    maps segments as the headers describe them, so a library cut short (a copy interrupted,
    a crash before the data reached the disk) kills the process with SIGBUS instead of
    failing: the check has to come first. Files that are not 64-bit ELF are left to dlopen."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if len(data) < 64 or data[:4] != b"\x7fELF":
        return False
    if data[4] != 2:  # not ELFCLASS64
        return True
    order = "<" if data[5] == 1 else ">"
    phoff, shoff = struct.unpack_from(order + "QQ", data, 32)
    phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", data, 54)
    if phoff + phnum * phentsize > len(data) or shoff + shnum * shentsize > len(data):
        return False
    for i in range(phnum):
        offset, _, _, filesz = struct.unpack_from(order + "QQQQ", data, phoff + i * phentsize + 8)
        if offset + filesz > len(data):
            return False
    return True


def load(job: CompileJob) -> CompiledLibrary:
    """Load the built library (once per process per key). A file that does not load (cut
    short, or damaged on disk) is rebuilt rather than reported: the source is at hand, so a
    broken cache entry costs one compile, never a failure."""
    if (lib := loaded(job.key)) is not None:
        return lib
    try:
        if not elf_is_complete(job.library_path):
            raise OSError("not a complete ELF file")
        handle = ctypes.CDLL(str(job.library_path))
    except OSError as e:
        log.warning("kiln: %s does not load (%s); compiling it again", job.library_path, e)
        build(job, force=True)
        handle = ctypes.CDLL(str(job.library_path))
    with _loaded_lock:
        return _loaded.setdefault(job.key, CompiledLibrary(job.key, job.library_path, handle))


def compile_cpp(source: str) -> CompiledLibrary:
    """Compile ``source`` (unless built before, here or on disk) and load it."""
    return compile_job(plan(source))


def compile_job(job: CompileJob) -> CompiledLibrary:
    """:func:`compile_cpp` for a planned job."""
    if (lib := loaded(job.key)) is not None:
        return lib
    build(job)
    return load(job)


def clear_memory_cache() -> None:
    """Forget which libraries this process loaded, so the next :func:`compile_cpp` looks at
    the disk as a new process would. The libraries themselves stay loaded (ctypes cannot
    unload them safely while functions from them may still be called)."""
    with _loaded_lock:
        _loaded.clear()
