"""Compiling many kernels at once, in a pool of worker processes.

    futures = [AsyncCompile().submit(src) for src in sources]   # compiles start now
    libs = [f.result() for f in futures]                        # loaded with ctypes here

A graph yields many kernels and each g++ run takes a fraction of a second, so they are
compiled side by side: ``kiln.config.compile_threads`` workers, started by
``kiln.config.worker_start_method`` ("fork" or "spawn"). With ``compile_threads == 1``
everything happens in the calling process, one kernel at a time.

The parent keeps every step but one (kiln/codegen/cpp_compiler.py): it computes the key,
writes the source, renames the finished library into place and loads it, since a ctypes
handle cannot cross processes. A worker only runs the compiler. The task it is handed is
``subprocess.run`` itself: a worker started by "spawn" imports nothing to run it, where any
function of kiln's would make it import the ``kiln`` package, and with it torch (seconds
per worker).
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import subprocess
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from kiln import config
from kiln.codegen import cpp_compiler
from kiln.codegen.cpp_compiler import CompiledLibrary

log = logging.getLogger("kiln.codegen")

START_METHODS = ("fork", "spawn")


class _Pool:
    """The process's one worker pool, remade only when the settings it was made with change
    (or in a forked child, which must not use its parent's pool)."""

    lock = threading.Lock()
    executor: ProcessPoolExecutor | None = None
    settings: tuple[int, str, int] | None = None  # (workers, start method, owner pid)
    warmed = False

    @classmethod
    def get(cls) -> ProcessPoolExecutor:
        workers, method = config.compile_threads, config.worker_start_method
        if method not in START_METHODS:
            raise ValueError(f"kiln.config.worker_start_method must be one of {START_METHODS}, "
                             f"got {method!r}")
        settings = (workers, method, os.getpid())
        with cls.lock:
            if cls.executor is not None and cls.settings == settings:
                return cls.executor
            if cls.executor is not None and cls.settings[2] == os.getpid():
                # Settings changed: work already queued still finishes.
                cls.executor.shutdown(wait=False)
            cls.executor = ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context(method))
            cls.settings, cls.warmed = settings, False
            log.debug("kiln: compile pool of %d workers (%s)", workers, method)
            return cls.executor

    @classmethod
    def shutdown(cls) -> None:
        with cls.lock:
            executor, owner = cls.executor, cls.settings
            cls.executor, cls.settings, cls.warmed = None, None, False
        if executor is not None and owner is not None and owner[2] == os.getpid():
            executor.shutdown(wait=True, cancel_futures=True)


atexit.register(_Pool.shutdown)

# Compiles submitted and not yet loaded, by key: the same kernel submitted twice compiles once.
_in_flight: dict[str, Future[CompiledLibrary]] = {}
_in_flight_lock = threading.Lock()


class AsyncCompile:
    """Submits kernel sources for compilation; each result is a loaded
    :class:`~kiln.codegen.cpp_compiler.CompiledLibrary`. Errors (``CppCompileError``) are
    raised by ``Future.result()``, in both the pooled and the in-process mode."""

    @staticmethod
    def warm_pool() -> None:
        """Start the workers now, before there is work for them: forking is cheapest while
        the process is small, and spawned interpreters take a while to boot. Calling it
        again does nothing."""
        if config.compile_threads <= 1:
            return
        pool = _Pool.get()
        with _Pool.lock:
            if _Pool.warmed:
                return
            _Pool.warmed = True
        # The executor starts a process per submitted task while none is idle ("spawn"),
        # or all of them at the first task ("fork"): one trivial task per worker starts all.
        for _ in range(config.compile_threads):
            pool.submit(os.getpid)

    def submit(self, source: str) -> Future[CompiledLibrary]:
        """Start compiling ``source``; the future's result is the loaded library."""
        result: Future[CompiledLibrary] = Future()
        result.set_running_or_notify_cancel()  # a compile cannot be called off halfway
        try:
            job = cpp_compiler.plan(source)
            if config.compile_threads <= 1 or cpp_compiler.loaded(job.key) is not None \
                    or cpp_compiler.is_built(job):
                result.set_result(cpp_compiler.compile_job(job))
                return result
        except Exception as e:
            result.set_exception(e)
            return result
        with _in_flight_lock:
            if (running := _in_flight.get(job.key)) is not None:
                return running
            _in_flight[job.key] = result
        try:
            pending = cpp_compiler.begin_build(job)
            worker = _submit_to_pool(pending.command)
        except Exception as e:
            _settle(result, job.key, exception=e)
            return result

        def finish(done: Future[subprocess.CompletedProcess[str]]) -> None:
            # Runs on the executor's thread once the worker has answered.
            try:
                error = done.exception()
                if isinstance(error, BrokenProcessPool):
                    # A worker died (killed for memory, say) and took the pool down with it:
                    # this kernel is compiled here instead; later ones get a new pool.
                    pending.temp_path.unlink(missing_ok=True)
                    cpp_compiler.build(job)
                else:
                    cpp_compiler.finish_build(pending, error or done.result())
                _settle(result, job.key, value=cpp_compiler.load(job))
            except BaseException as e:
                pending.temp_path.unlink(missing_ok=True)
                _settle(result, job.key, exception=e)

        worker.add_done_callback(finish)
        return result

    def compile_many(self, sources: Iterable[str]) -> list[CompiledLibrary]:
        """Compile all of ``sources`` side by side; the libraries come back in order."""
        futures = [self.submit(source) for source in sources]
        return [f.result() for f in futures]


def _submit_to_pool(command: list[str]) -> Future[subprocess.CompletedProcess[str]]:
    """Hand one compiler run to the pool. A pool whose worker died (killed for memory, say)
    refuses all later work, so it is replaced once rather than failing every compile after."""
    def run() -> Future[subprocess.CompletedProcess[str]]:
        return _Pool.get().submit(subprocess.run, command, capture_output=True, text=True)

    try:
        return run()
    except BrokenProcessPool:
        log.warning("kiln: a compile worker died; starting a new pool")
        _Pool.shutdown()
        return run()


def _settle(result: Future[CompiledLibrary], key: str, *, value: CompiledLibrary | None = None,
            exception: BaseException | None = None) -> None:
    with _in_flight_lock:
        _in_flight.pop(key, None)
    if exception is not None:
        result.set_exception(exception)
    else:
        result.set_result(value)
