"""The symbolic bytecode interpreter.

An :class:`InstructionTranslator` executes one code object's instructions over trackers
instead of values: its stack and locals hold :class:`VariableTracker` objects, tensor
operations add nodes to the shared :class:`OutputGraph`, and everything read from outside
the frame is guarded. Calls to user functions start a nested translator over the callee
(inlining); ``RETURN_VALUE`` of the root frame ends the trace with the tracker of the
returned value.

The per-opcode handlers live in :mod:`kiln.capture.instruction_handlers`; this module holds
the machine: its state, the run loop, and the services trackers call back into (``build``,
``inline_call``, ``unsupported``...).
"""

from __future__ import annotations

import builtins
import inspect
import traceback
import types
from typing import Any, NoReturn

from kiln import config
from kiln.capture.instruction_handlers import InstructionHandlers
from kiln.capture.instructions import Instruction, decode
from kiln.capture.output_graph import OutputGraph
from kiln.capture.sources import GlobalSource, Source
from kiln.capture.variables.base import LazyVariable, NotConstant, VariableTracker
from kiln.capture.variables.constant import ConstantVariable
from kiln.capture.variables.containers import ListIteratorVariable
from kiln.capture.variables.functions import (
    BaseFunctionVariable,
    ClosureCellVariable,
    NewCellVariable,
)
from kiln.exc import Unsupported


class UserRaise(Exception):
    """The traced program raised ``exc`` (at compile time, on known values)."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(exc)
        self.exc = exc


class _Budget:
    def __init__(self, limit: int) -> None:
        self.left = limit


class InstructionTranslator(InstructionHandlers):
    def __init__(self, *, code: types.CodeType, f_globals: dict[str, Any],
                 symbolic_locals: dict[str, VariableTracker], output: OutputGraph,
                 closure: list[VariableTracker] = (), parent: InstructionTranslator | None = None,
                 root_globals: dict[str, Any] | None = None) -> None:
        self.code = code
        self.f_globals = f_globals
        self.root_globals = root_globals if root_globals is not None else f_globals
        self.output = output
        self.parent = parent
        self.depth = 0 if parent is None else parent.depth + 1
        self.budget = parent.budget if parent is not None else _Budget(
            config.max_traced_instructions)
        self.instructions: list[Instruction] = decode(code)
        self.symbolic_locals: dict[str, VariableTracker] = dict(symbolic_locals)
        for name, cell in zip(code.co_freevars, closure):
            self.symbolic_locals[name] = cell
        self.stack: list[VariableTracker] = []
        self.ip = 0
        self.current: Instruction | None = None
        self.kw_names: tuple[str, ...] = ()
        self.returned = False
        self.return_value: VariableTracker | None = None
        # graph breaks: the root translator stops before this instruction (graph_break.py)
        self.break_at: int | None = None
        self.stopped_at_break = False
        self.yields: list[VariableTracker] | None = None

    # --- the run loop -----------------------------------------------------------------------
    def run(self) -> VariableTracker | None:
        """Interpret until the frame returns (its value) or reaches ``break_at`` (None)."""
        instructions = self.instructions
        budget = self.budget
        while not self.returned:
            if self.ip == self.break_at:
                self.current = instructions[self.ip]
                self.ip += 1
                self.stopped_at_break = True
                return None
            if self.ip >= len(instructions):
                self.unsupported("fell off the end of the code object")
            inst = instructions[self.ip]
            self.ip += 1
            self.current = inst
            budget.left -= 1
            if budget.left < 0:
                self.unsupported(f"more than {config.max_traced_instructions} instructions "
                                 "interpreted (an unrolled loop too long to capture?)")
            handler = getattr(self, inst.opname, None)
            if handler is None:
                self.unsupported(f"bytecode instruction {inst.opname}")
            handler(inst)
        return self.return_value

    # --- stack helpers ----------------------------------------------------------------------
    def push(self, vt: VariableTracker) -> None:
        self.stack.append(vt)

    def pop(self) -> VariableTracker:
        """The top of the stack, made a tracker (and guarded) if it was still lazy: values
        are guarded when an instruction uses them, not when they are merely moved."""
        return self.realize(self.stack.pop())

    def peek(self, depth: int = 1) -> VariableTracker:
        vt = self.stack[-depth]
        if isinstance(vt, LazyVariable):
            vt = self.stack[-depth] = self.realize(vt)
        return vt

    def popn(self, n: int) -> list[VariableTracker]:
        if n == 0:
            return []
        items = self.stack[-n:]
        del self.stack[-n:]
        return [self.realize(vt) for vt in items]

    def jump(self, inst: Instruction) -> None:
        assert inst.target is not None
        self.ip = inst.target

    # --- services for trackers --------------------------------------------------------------
    def user_stack(self) -> list[traceback.FrameSummary]:
        frames = []
        tx: InstructionTranslator | None = self
        while tx is not None:
            lineno = tx.current.lineno if tx.current is not None else tx.code.co_firstlineno
            frames.append(traceback.FrameSummary(tx.code.co_filename, lineno, tx.code.co_name))
            tx = tx.parent
        return list(reversed(frames))

    def unsupported(self, msg: str, *, hint: str | None = None) -> NoReturn:
        raise Unsupported(msg, hint=hint, user_stack=self.user_stack())

    def raise_user_exception(self, exc: BaseException) -> NoReturn:
        raise UserRaise(exc)

    def build(self, value: Any, source: Source | None) -> VariableTracker:
        from kiln.capture.variables.builder import build

        if source is not None:
            cached = self.output.source_cache.get(source)
            if cached is not None:
                return cached
            vt = build(self, value, source)
            self.output.source_cache[source] = vt
            return vt
        return build(self, value, None)

    def realize(self, vt: VariableTracker) -> VariableTracker:
        if isinstance(vt, LazyVariable):
            return self.build(vt.value, vt.source)
        return vt

    def constant_arg(self, vt: VariableTracker | None, what: str) -> Any:
        if vt is None:
            return None
        try:
            return vt.as_constant()
        except NotConstant:
            self.unsupported(f"{what} must be known at compile time, got {vt.describe()}")

    def unpack_iterable(self, vt: VariableTracker) -> list[VariableTracker]:
        return vt.unpack(self)

    def getattr_or_default(self, obj: VariableTracker, name: str,
                           default: VariableTracker) -> VariableTracker:
        try:
            return obj.getattr(self, name)
        except UserRaise as e:
            if isinstance(e.exc, AttributeError):
                return default
            raise

    def closure_cell(self, cell: types.CellType, source: Source | None, fn: Any,
                     index: int) -> VariableTracker:
        cached = self.output.cells.get(id(cell))
        if cached is None:
            cached = ClosureCellVariable(cell, source)
            self.output.cells[id(cell)] = cached
            self.output.keepalive(cell)
        return cached

    def load_cell(self, cell: VariableTracker, name: str) -> VariableTracker:
        if isinstance(cell, NewCellVariable):
            if cell.contents is None:
                self.raise_user_exception(NameError(
                    f"cannot access free variable {name!r} where it is not associated with a "
                    "value in enclosing scope"))
            cell.contents = self.realize(cell.contents)
            return cell.contents
        if isinstance(cell, ClosureCellVariable):
            if cell.loaded is None:
                try:
                    value = cell.cell.cell_contents
                except ValueError:
                    self.raise_user_exception(NameError(f"free variable {name!r} is empty"))
                cell.loaded = self.build(value, cell.source)
            return cell.loaded
        self.unsupported(f"reading free variable {name!r} held by {cell.describe()}")

    def global_source(self, name: str) -> GlobalSource:
        f_globals = self.f_globals
        if f_globals is self.root_globals:
            return GlobalSource(name)
        return GlobalSource(name, module_globals=f_globals,
                            module_name=f_globals.get("__name__", "?"))

    def load_global(self, name: str) -> VariableTracker:
        f_globals = self.f_globals
        pending = self.output.side_effects.load_source(self.global_source(name))
        if pending is not None:
            return pending
        if name in f_globals:
            if f_globals is not self.root_globals and _is_library_module_name(
                    f_globals.get("__name__")):
                # torch's own modules do not rebind their globals: no guard needed
                return self.build(f_globals[name], None)
            return self.build(f_globals[name], self.global_source(name))
        builtins_dict = f_globals.get("__builtins__", builtins.__dict__)
        if isinstance(builtins_dict, types.ModuleType):
            builtins_dict = builtins_dict.__dict__
        if name in builtins_dict:
            if f_globals is self.root_globals:
                self.output.guards.add_not_shadowed(name)
            return self.build(builtins_dict[name], None)
        self.raise_user_exception(NameError(f"name {name!r} is not defined"))

    def zero_arg_super(self) -> VariableTracker:
        from kiln.capture.variables.user_objects import SuperVariable

        code = self.code
        if "__class__" not in code.co_freevars or code.co_argcount == 0:
            self.unsupported("super() outside a method")
        cls_vt = self.load_cell(self.symbolic_locals["__class__"], "__class__")
        first = code.co_varnames[0]
        obj = self.symbolic_locals.get(first)
        if isinstance(obj, (NewCellVariable, ClosureCellVariable)):
            obj = self.load_cell(obj, first)
        if obj is None:
            self.unsupported("super() with an unbound first argument")
        return SuperVariable(self.constant_arg(cls_vt, "super's class"), self.realize(obj))

    # --- calls ------------------------------------------------------------------------------
    def inline_call(self, fn: BaseFunctionVariable, args: list[VariableTracker],
                    kwargs: dict[str, VariableTracker]) -> VariableTracker:
        code = fn.code()
        if self.depth >= config.max_inline_depth:
            self.unsupported(f"calls nested deeper than {config.max_inline_depth} "
                             f"(recursion in {code.co_name}?)")
        flags = code.co_flags
        if flags & (inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR |
                    inspect.CO_ITERABLE_COROUTINE):
            self.unsupported(f"calling async function {code.co_name}")
        bound = fn.bind(self, args, kwargs)
        self.output.traced_codes.add(code)
        sub = InstructionTranslator(code=code, f_globals=fn.fn_globals(), symbolic_locals=bound,
                                    output=self.output, closure=fn.closure_cells(self),
                                    parent=self, root_globals=self.root_globals)
        if flags & inspect.CO_GENERATOR:
            # Run the generator to completion and iterate over what it yielded.
            sub.yields = []
            sub.run()
            return ListIteratorVariable(sub.yields)
        return sub.run()

    def call_function(self, fn: VariableTracker, args: list[VariableTracker],
                      kwargs: dict[str, VariableTracker]) -> VariableTracker:
        fn = self.realize(fn)
        return fn.call(self, [self.realize(a) for a in args],
                       {k: self.realize(v) for k, v in kwargs.items()})


def _is_library_module_name(name: Any) -> bool:
    return isinstance(name, str) and (name == "torch" or name.startswith("torch."))


def as_constant_or_none(vt: VariableTracker) -> Any:
    try:
        return vt.as_constant()
    except NotConstant:
        return None


__all__ = ["InstructionTranslator", "UserRaise", "ConstantVariable"]
