"""Compiling one frame: interpreter -> FX graph + guards -> backend -> entry code.

:func:`compile_frame` is the capture pipeline for one call of one function. It hands the
cache a :class:`CompiledFrame`: the guard set (what the entry assumed), the entry's code (a
function of the frame's arguments), and what was compiled. When the frame cannot be captured
it still returns an entry, one that runs the function eagerly, guarded by what the partial
trace read (the same inputs take the same path to the same unsupported construct), so the
failed trace is not repeated on every call. Under ``fullgraph=True`` it raises instead.
"""

from __future__ import annotations

import logging
import time
import traceback
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from kiln import config, logs
from kiln.capture import persist
from kiln.capture.eager_calls import calls_through
from kiln.capture.frame_code import FrameSignature, make_eager_runner, make_entry
from kiln.capture.graph_break import BreakCodegen, BreakRequest, why_not_resumable
from kiln.capture.guards import GuardBuilder, GuardSet
from kiln.capture.interpreter import InstructionTranslator, UserRaise
from kiln.capture.output_graph import OutputGraph
from kiln.capture.reconstruct import ReturnValueCodegen
from kiln.capture.resume import ResumePoint
from kiln.capture.shapes import Dynamism, FrameState, specialized_marks
from kiln.capture.sources import AttrSource, LocalSource
from kiln.capture.variables.base import LazyVariable
from kiln.capture.variables.functions import ClosureCellVariable
from kiln.capture.variables.tensor import TensorVariable
from kiln.counters import counters
from kiln.exc import (
    BackendCompilerFailed,
    ConstraintViolationError,
    InternalKilnError,
    TorchRuntimeError,
    Unsupported,
    format_user_stack,
)

log = logging.getLogger("kiln.capture")


@dataclass
class CompiledFrame:
    guard_set: GuardSet
    run: Callable[..., Any]
    graph: torch.fx.GraphModule | None
    fallback_reason: str | None = None
    compile_seconds: float = 0.0
    break_reason: str | None = None
    # where the break or the unsupported construct is in the user's code
    break_stack: list[Any] = field(default_factory=list)
    # for kiln.export: (source, static, tensor) per graph input, and the return structure
    graph_inputs: list[tuple[Any, bool, Any]] = field(default_factory=list)
    return_structure: Any = None
    # what another process needs to rebuild this entry without tracing (persist.py), when
    # the hooks asked for it and the frame can be persisted
    persisted: Any = None


@dataclass
class FrameHooks:
    """What the compiled wrapper lends the compile of one of its frames."""

    backend: Callable[..., Any]
    backend_name: str
    fullgraph: bool
    # the kiln-compiled function of a resume point (graph_break.py)
    resume: Callable[[ResumePoint], Callable[..., Any]]
    # what a native call at a break calls for a callable: its compiled wrapper if it is user
    # code, so frames called from a break are compiled too
    native: Callable[[Any], Any]
    # which sizes are symbolic (shapes.py): the code object's frame state and `dynamic=`
    frame_state: FrameState | None = None
    dynamic: bool | None = None
    # whether to record the entry for the persistent frame cache (frame_store.py)
    persist: bool = False


def compile_frame(fn: types.FunctionType, args: tuple[Any, ...], hooks: FrameHooks,
                  compile_id: str) -> CompiledFrame:
    start = time.perf_counter()
    counters["frames"]["total"] += 1
    try:
        frame = _compile(fn, args, hooks, compile_id, break_at=None)
    except BreakRequest as request:
        frame = _compile(fn, args, hooks, compile_id, break_at=request)
    frame.compile_seconds = time.perf_counter() - start
    return frame


def _compile(fn: types.FunctionType, args: tuple[Any, ...], hooks: FrameHooks, compile_id: str,
             break_at: BreakRequest | None) -> CompiledFrame:
    code = fn.__code__
    sig = FrameSignature.of(code)
    guards = GuardBuilder(fn.__globals__)
    guards.add_global_state()
    output = OutputGraph(guards, Dynamism(hooks.frame_state, hooks.dynamic))
    symbolic_locals: dict[str, Any] = {}
    for name, value in zip(sig.params, args):
        if name in code.co_cellvars and isinstance(value, types.CellType) and \
                code.co_name.startswith("kiln_resume_in_"):
            # a cell the frame before the break passed on (graph_break.py)
            symbolic_locals[name] = ClosureCellVariable(
                value, AttrSource(LocalSource(name), "cell_contents"), LocalSource(name))
        else:
            symbolic_locals[name] = LazyVariable(value, LocalSource(name))
    cells = [ClosureCellVariable(cell, LocalSource(name, freevar_index=i))
             for i, (name, cell) in enumerate(zip(code.co_freevars, fn.__closure__ or ()))]
    # one tracker per cell object, however the trace reaches it (a function defined before a
    # break holds the same cell as the frame)
    for vt in [*cells, *(v for v in symbolic_locals.values()
                         if isinstance(v, ClosureCellVariable))]:
        output.cells[id(vt.cell)] = vt
    tx = InstructionTranslator(code=code, f_globals=fn.__globals__,
                               symbolic_locals=symbolic_locals, output=output, closure=cells)
    tx.break_at = break_at.index if break_at is not None else None
    grad_mode = torch.is_grad_enabled()
    try:
        returned = tx.run()
        structure = None
        if tx.stopped_at_break:
            codegen = ReturnValueCodegen(tx, guards, inputs_from_sources=True)
            reads, run_break = BreakCodegen(tx, codegen, hooks.resume, hooks.native).render(
                tx.current)
            body = [*reads, *_replay(output, codegen), *run_break]
        else:
            # as torch.compile: a frame that computes nothing has no graph, unless under
            # fullgraph=True it returns one bare tensor
            codegen = ReturnValueCodegen(tx, guards, inputs_from_sources=(
                output.count_calls() == 0 and not (
                    hooks.fullgraph and isinstance(returned, TensorVariable))))
            result = codegen.expr(returned)
            body = [f"___result = {result}", *_replay(output, codegen), "return ___result"]
            structure = _export_structure(codegen, returned) if hooks.fullgraph else None
        _guard_mutated_objects_distinct(output)
    except (Unsupported, UserRaise, TorchRuntimeError) as e:
        error = _as_unsupported(e, tx)
        if hooks.fullgraph:
            raise error from (e if error is not e else None)
        if break_at is None and not tx.returned and tx.depth == 0:
            index = tx.ip - 1
            why_not = why_not_resumable(code, index, tx.stack)
            if why_not is None:
                raise BreakRequest(index, error) from None
            reason = f"{error.reason} ({why_not})"
        else:
            reason = error.reason
        return _fallback(fn, sig, guards, reason, error, hooks, output)
    except ConstraintViolationError:
        raise  # the user's marks contradict the program: not something to fall back from
    except Exception as e:
        if config.raise_internal_errors:
            raise
        log.error("kiln: internal error while compiling %s (%s:%s); running it eagerly. "
                  "Please report this.\n%s", code.co_name, code.co_filename,
                  code.co_firstlineno, traceback.format_exc())
        if hooks.fullgraph:
            raise InternalKilnError(f"internal error while compiling {code.co_name}: {e}") from e
        return _fallback(fn, sig, guards, f"internal error: {e}", None)
    finally:
        torch._C._set_grad_enabled(grad_mode)
    _check_marked_dims(output)

    gm = output.make_graph_module(codegen.outputs)
    prologue = list(codegen.preamble)
    if output.count_calls() > 0 or codegen.outputs:
        try:
            compiled = _call_backend(hooks.backend, hooks.backend_name, gm,
                                     [i.backend_fake() for i in output.inputs])
        except BackendCompilerFailed as e:
            if not config.suppress_errors:
                raise
            log.error("kiln: %s; running %s eagerly (config.suppress_errors)", e,
                      code.co_qualname)
            return _fallback(fn, sig, guards, f"backend failed: {e.inner_exception}", None,
                             output=output)
        graph_name = guards.ns.const(compiled, "graph")
        inputs = ", ".join(guards.bind(i.source, i.example, "p") if i.static
                           else guards.expr(i.source) for i in output.inputs)
        prologue.insert(0, f"___out = {graph_name}({inputs})")
        guards.graph_call = (graph_name, inputs)
        counters["stats"]["unique_graphs"] += 1
        if logs.enabled("graph_code"):
            logs.log_artifact("graph_code", "TRACED GRAPH %s %s\n%s", compile_id, code.co_name,
                              gm.print_readable(print_output=False))
    else:
        gm = None
    if break_at is not None:
        _report_break(fn, break_at)
    # after the backend, as torch: what it assumed about symbolic sizes (AOT's trace may
    # specialize one) is guarded too
    guards.add_symbolic_guards(output.shape_env, output.symbol_sources)
    guard_set = guards.build(list(sig.params))
    run = make_entry(sig.params, [*prologue, *body], guards.ns.values,
                     f"{compile_id} {code.co_qualname}")
    persisted = None
    if hooks.persist:
        if break_at is not None:
            log.info("kiln frame cache: %s is not persisted: it has a graph break",
                     code.co_qualname)
        else:
            persisted = persist.record(fn, guards, guard_set, [*prologue, *body],
                                       output.traced_codes, code.co_qualname)
    counters["frames"]["ok"] += 1
    if logs.enabled("guards"):
        logs.log_artifact("guards", "GUARDS %s %s:\n%s", compile_id, code.co_name,
                          "\n".join(f"  {t}" for t in guard_set.describe()))
    return CompiledFrame(guard_set, run, gm,
                         break_reason=break_at.error.reason if break_at is not None else None,
                         break_stack=list(break_at.error.user_stack) if break_at else [],
                         graph_inputs=[(i.source, i.static, i.example) for i in output.inputs],
                         return_structure=structure if break_at is None else None,
                         persisted=persisted)


def _check_marked_dims(output: OutputGraph) -> None:
    """kiln.mark_dynamic forbids specializing the marked sizes: say which the trace fixed."""
    problems = specialized_marks(
        [(i.source.name(), i.example, i.fake) for i in output.inputs
         if isinstance(i.example, torch.Tensor) and not i.static], output.shape_env)
    if problems:
        names = ", ".join(p.split(" ", 1)[0] for p in problems)
        raise ConstraintViolationError(
            f"Constraints violated ({names})!\n" + "".join(f"  - {p}.\n" for p in problems)
            + "kiln.mark_dynamic marked them dynamic, which forbids specializing them: use "
            "kiln.maybe_mark_dynamic to allow it, or remove the mark.")


def _export_structure(codegen: ReturnValueCodegen, returned: Any) -> Any:
    """The return value's structure for kiln.export, or None where it has none."""
    try:
        return codegen.structure(returned)
    except Unsupported:
        return None


def _replay(output: OutputGraph, codegen: ReturnValueCodegen) -> list[str]:
    return output.side_effects.replay_lines(codegen)


def _report_break(fn: types.FunctionType, request: BreakRequest) -> None:
    error = request.error
    counters["graph_break"][error.reason] += 1
    logs.log_artifact("graph_breaks", "Graph break in user code at %s\nGraph Break Reason: "
                      "%s\nUser code traceback:\n%s", error.location, error.reason,
                      format_user_stack(error.user_stack))


def _guard_mutated_objects_distinct(output: OutputGraph) -> None:
    """A mutated outside object must not be reachable under another source at run time than
    at compile time (the trace assumed the two were distinct)."""
    mutated = [vt for vt in output.side_effects.mutated_objects() if vt.source is not None]
    others = [vt for vt in output.mutable_objects.values() if vt.source is not None]
    for a in mutated:
        for b in others:
            if a is not b:
                output.guards.add_distinct(a.source, b.source)


def _as_unsupported(e: Exception, tx: InstructionTranslator) -> Unsupported:
    if isinstance(e, Unsupported):
        return e
    if isinstance(e, UserRaise):
        exc = e.exc
        return Unsupported(f"the traced code raises {type(exc).__name__}: {exc}",
                           hint="the function runs eagerly, where it raises for real",
                           user_stack=tx.user_stack())
    return Unsupported(str(e), user_stack=tx.user_stack())


def _fallback(fn: types.FunctionType, sig: FrameSignature, guards: GuardBuilder, reason: str,
              error: Unsupported | None, hooks: FrameHooks | None = None,
              output: OutputGraph | None = None) -> CompiledFrame:
    counters["unimplemented"][reason] += 1
    if output is not None:  # what the partial trace assumed about symbolic sizes holds too
        guards.add_symbolic_guards(output.shape_env, output.symbol_sources)
    where = f" at {error.location}" if error is not None else ""
    log.info("kiln runs %s eagerly: %s%s", fn.__qualname__, reason, where)
    logs.log_artifact("graph_breaks", "Graph break (frame runs eagerly) in %s%s\n  reason: %s",
                      fn.__qualname__, where, reason)
    guard_set = guards.build(list(sig.params))
    runner = fn
    if error is not None and hooks is not None:
        try:  # the frame runs eagerly, what it calls is compiled (eager_calls.py)
            runner = calls_through(fn, hooks.native)
        except Exception:
            log.debug("kiln: cannot route the calls of %s through kiln", fn.__qualname__,
                      exc_info=True)
    return CompiledFrame(guard_set, make_eager_runner(runner), None, fallback_reason=reason,
                         break_stack=list(error.user_stack) if error is not None else [])


def _call_backend(backend: Callable[..., Any], backend_name: str, gm: torch.fx.GraphModule,
                  example_inputs: list[Any]) -> Callable[..., Any]:
    try:
        compiled = backend(gm, example_inputs)
    except Exception as e:
        raise BackendCompilerFailed(backend_name, e) from e
    if not callable(compiled):
        raise BackendCompilerFailed(backend_name, TypeError(
            f"the backend returned {type(compiled).__name__}, not a callable"))
    return compiled
