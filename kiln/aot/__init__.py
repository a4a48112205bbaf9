"""kiln's AOT autograd: a function traced ahead of time into a forward graph and a backward
graph with no mutation or aliasing in them, each compiled by a backend's compiler, and run
under a runtime that restores eager's mutation, aliasing and grad-mode behaviour.

The API follows torch's ``functorch.compile`` / ``torch._functorch.aot_autograd``:
``aot_function``, ``aot_module``, ``aot_module_simplified``, ``aot_export_joint_simple``,
``nop``, ``make_boxed_func``, ``default_partition``, ``min_cut_rematerialization_partition``.
See docs/architecture.md ("AOT autograd") for the stages.
"""

from kiln.aot.api import (
    AotUnsupported,
    aot_export_function,
    aot_export_joint_simple,
    aot_function,
    aot_module,
    aot_module_simplified,
    boxed_nop,
    create_functional_call,
    make_boxed_compiler,
    make_boxed_func,
    nop,
)
from kiln.aot.partition import default_partition
from kiln.aot.partition_mincut import min_cut_rematerialization_partition
from kiln.aot.runtime import DOUBLE_BACKWARD_ERROR
from kiln.aot.stack_traces import setup_stacktrace_preservation_hooks

__all__ = [
    "AotUnsupported",
    "DOUBLE_BACKWARD_ERROR",
    "aot_export_function",
    "aot_export_joint_simple",
    "aot_function",
    "aot_module",
    "aot_module_simplified",
    "boxed_nop",
    "create_functional_call",
    "default_partition",
    "make_boxed_compiler",
    "make_boxed_func",
    "min_cut_rematerialization_partition",
    "nop",
    "setup_stacktrace_preservation_hooks",
]
