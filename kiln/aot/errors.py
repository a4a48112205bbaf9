"""What kiln.aot raises when it cannot compile a program."""

from __future__ import annotations


class AotUnsupported(RuntimeError):
    """A program AOT autograd cannot compile yet (the backend may run it without AOT)."""


__all__ = ["AotUnsupported"]
