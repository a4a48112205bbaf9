"""kiln's exceptions, with torch.compile's names.

Every error raised while compiling user code says what went wrong, where in the user's code
(file:line, innermost last), and, where there is one, what to do about it.
"""

from __future__ import annotations

import shlex
import traceback
from collections.abc import Sequence


class KilnException(RuntimeError):
    """Base of kiln's errors (torch: ``TorchDynamoException``)."""


def format_user_stack(user_stack: Sequence[traceback.FrameSummary]) -> str:
    if not user_stack:
        return ""
    lines = ["from user code:"]
    for frame in user_stack:
        lines.append(f'   File "{frame.filename}", line {frame.lineno}, in {frame.name}')
        if frame.line:
            lines.append(f"    {frame.line.strip()}")
    return "\n".join(lines)


class Unsupported(KilnException):
    """A construct kiln cannot capture into a graph.

    Outside ``fullgraph=True`` it is caught and the frame runs eagerly (logged); with
    ``fullgraph=True`` it reaches the user, naming the file:line of the construct.
    """

    def __init__(self, reason: str, *, hint: str | None = None,
                 user_stack: Sequence[traceback.FrameSummary] = ()) -> None:
        self.reason = reason
        self.hint = hint
        self.user_stack = list(user_stack)
        super().__init__(reason)

    def attach_user_stack(self, user_stack: Sequence[traceback.FrameSummary]) -> None:
        if not self.user_stack:
            self.user_stack = list(user_stack)

    @property
    def location(self) -> str:
        if not self.user_stack:
            return "<unknown>"
        frame = self.user_stack[-1]
        return f"{frame.filename}:{frame.lineno}"

    def __str__(self) -> str:
        parts = [self.reason]
        if self.hint:
            parts.append(f"  Hint: {self.hint}")
        stack = format_user_stack(self.user_stack)
        if stack:
            parts.append("\n" + stack)
        return "\n".join(parts)


class UserError(KilnException):
    """The user called a kiln API wrongly."""


class ConstraintViolationError(UserError):
    """A size ``kiln.mark_dynamic`` marked dynamic cannot be: the program fixes it to one
    value, or the call's size is outside the marked range."""


class TorchRuntimeError(KilnException):
    """An operation failed on fake tensors while tracing (the eager run would fail too)."""


class InternalKilnError(KilnException):
    """A bug in kiln. Please report it with the user code that triggered it."""


class BackendCompilerFailed(KilnException):
    def __init__(self, backend_name: str, inner: BaseException) -> None:
        self.backend_name = backend_name
        self.inner_exception = inner
        super().__init__(
            f"backend={backend_name!r} raised:\n{type(inner).__name__}: {inner}\n\n"
            "Set kiln.config.suppress_errors = True to fall back to eager instead.")


class InvalidBackend(KilnException):
    def __init__(self, name: str, known: Sequence[str] = ()) -> None:
        super().__init__(
            f"Invalid backend: {name!r}, see `kiln.list_backends()` for available backends"
            + (f" ({', '.join(known)})" if known else ""))


class RecompileError(KilnException):
    """Raised on a recompile when ``kiln.config.error_on_recompile`` is set."""


class FailOnRecompileLimitHit(Exception):
    """Raised at ``cache_size_limit`` under ``fullgraph=True`` or ``fail_on_cache_limit_hit``."""


class ResetRequired(KilnException):
    pass


class CUDACompileError(KilnException):
    """nvcc failed (torch: ``torch._inductor.exc.CUDACompileError``); ``cmd`` is the command
    as a list of arguments, ``output`` what the compiler printed."""

    def __init__(self, cmd: Sequence[str], output: str | bytes | None) -> None:
        self.cmd = list(cmd)
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        self.output = (output or "").strip()
        super().__init__(
            f"kiln: CUDA compile failed\n  command: {shlex.join(self.cmd)}\n"
            f"  output:\n{self.output}")

    def __reduce__(self) -> tuple[type, tuple[list[str], str]]:  # picklable across workers
        return type(self), (self.cmd, self.output)
