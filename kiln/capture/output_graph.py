"""The FX graph being built while a frame is interpreted.

The interpreter adds one node per tensor operation (torch-level targets: ``torch.add``,
``operator.add``, the ``relu`` method...). Each node's fake result is computed right away by
running the same operation on fake tensors, so later operations know shapes and dtypes, and
is stored in ``node.meta["example_value"]``.

Graph inputs are placeholders, one per distinct tensor read from outside the frame (two
sources holding the same tensor share one placeholder and are guarded ``a is b``). Module
parameters and buffers are inputs too, as in torch.compile; they are *static* (see
GraphInput): replacing one is caught by the module-structure guard (guards.py).
"""

from __future__ import annotations

import contextlib
import operator
import re
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
from torch._dispatch.python import enable_python_dispatcher
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedFakeTensorException,
    UnsupportedOperatorException,
)
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from kiln.capture.fake_rules import fake_rule
from kiln.capture.guards import GuardBuilder
from kiln.capture.shapes import Dynamism, dense_order, new_shape_env, symbolic_fake
from kiln.capture.side_effects import SideEffects
from kiln.capture.sources import SizeSource, Source, source_to_identifier
from kiln.capture.variables.base import NotConstant, VariableTracker
from kiln.exc import TorchRuntimeError

if TYPE_CHECKING:
    from kiln.capture.interpreter import InstructionTranslator
    from kiln.capture.variables.tensor import TensorVariable


def _geometry(value: Any) -> tuple[Any, ...] | None:
    if not isinstance(value, torch.Tensor):
        return None
    return (tuple(value.shape), tuple(value.stride()), value.storage_offset())


class GraphInput:
    """One placeholder: where its value comes from and what it was at compile time.

    A *static* input is a parameter or buffer reached through an identity-guarded module:
    the entry passes the very tensor it saw (valid while the module-structure guard holds)
    instead of re-reading it through ``Module.__getattr__`` on every call, and no
    TENSOR_MATCH guard is needed for it."""

    def __init__(self, node: torch.fx.Node, source: Source, example: torch.Tensor,
                 fake: torch.Tensor, static: bool) -> None:
        self.node = node
        self.source = source
        self.example = example
        self.fake = fake
        self.static = static
        self._geometry = _geometry(fake)

    def backend_fake(self) -> Any:
        """The fake value as the graph receives it. Capture runs the program on ``fake``
        itself, so a metadata mutation of an input (``x.unsqueeze_(0)``) changed it; the
        graph starts from the input as it was, and the backend gets a fake of that shape."""
        if self._geometry is None or _geometry(self.fake) == self._geometry:
            return self.fake
        shape, stride, offset = self._geometry
        fake = self.fake
        with fake.fake_mode:
            fresh = torch.empty_strided(shape, stride, dtype=fake.dtype, device=fake.device)
            if offset:
                fresh = torch.empty(offset + fresh.untyped_storage().nbytes()
                                    // fresh.element_size(), dtype=fake.dtype,
                                    device=fake.device).as_strided(shape, stride, offset)
        return fresh.requires_grad_(fake.requires_grad)


class OutputGraph:
    def __init__(self, guards: GuardBuilder, dynamism: Dynamism | None = None) -> None:
        self.graph = torch.fx.Graph()
        self.guards = guards
        self.shape_env = new_shape_env()
        self.fake_mode = FakeTensorMode(shape_env=self.shape_env, allow_non_fake_inputs=False)
        # an op that reads a fake tensor's data pointer fails, as under torch.compile
        self.fake_mode._allow_unsafe_data_ptr_access = False
        self.dynamism = dynamism or Dynamism()
        # every source whose value a size symbol stands for (the first one is the symbol's
        # graph input; the others are guarded equal to it: duck sizing)
        self.symbol_sources: dict[Any, list[Source]] = {}
        self.symbol_values: dict[Any, torch.SymInt] = {}  # a SymInt of each symbol
        self._symbol_inputs: dict[Any, torch.fx.Node] = {}
        self.inputs: list[GraphInput] = []
        self._input_by_id: dict[int, TensorVariable] = {}
        self.attrs: dict[str, Any] = {}
        self._last_placeholder: torch.fx.Node | None = None
        # Trackers already built per source (a global read twice is one tracker).
        self.source_cache: dict[Source, VariableTracker] = {}
        # Trackers of closure cells, by id of the cell.
        self.cells: dict[int, VariableTracker] = {}
        # Submodules called as call_module nodes (inline_inbuilt_nn_modules=False).
        self.submodules: dict[str, Any] = {}
        # Mutations of outside objects, replayed after the graph (side_effects.py).
        self.side_effects = SideEffects()
        # Trackers of mutable outside objects (lists, dicts, user objects, modules) by id of
        # the object: one tracker per object, whatever the source it was reached through.
        self.mutable_objects: dict[int, VariableTracker] = {}
        # The objects read during the trace; they must stay alive while it runs.
        self._keepalive: list[Any] = []
        # The module calls being inlined, outermost first: (key, source name, class), for
        # the nodes' ``nn_module_stack`` and ``source_fn_stack`` metadata (as torch's)
        self.module_stack: list[tuple[str, str, type]] = []
        # the code objects inlined into the trace (a persisted entry checks their files)
        self.traced_codes: set[Any] = set()

    @contextlib.contextmanager
    def inside_module(self, source: Source | None, cls: type) -> Any:
        """Nodes made while a module's forward is inlined belong to that module call."""
        name = source.name() if source is not None else cls.__name__
        self.module_stack.append((re.sub(r"[^a-zA-Z0-9_]", "_", name), name, cls))
        try:
            yield
        finally:
            self.module_stack.pop()

    def _module_metadata(self, node: torch.fx.Node, target: Any) -> None:
        if self.module_stack:
            key, _, cls = self.module_stack[-1]
            node.meta["source_fn_stack"] = [(key[0].lower() + key[1:], cls)]
            node.meta["nn_module_stack"] = {k: (name, c) for k, name, c in self.module_stack}
        else:
            node.meta["source_fn_stack"] = [(node.name, target)]

    def keepalive(self, obj: Any) -> None:
        self._keepalive.append(obj)

    # --- inputs -------------------------------------------------------------------------
    def fakeify(self, tensor: torch.Tensor, source: Source | None = None,
                static: bool = False) -> torch.Tensor:
        """The fake of an input tensor; its sizes are symbols where dynamism says so."""
        if source is None or static:
            return self.fake_mode.from_tensor(tensor, static_shapes=True)
        dynamic = self.dynamism.tensor_dims(source, tensor)
        if all(d is None for d in dynamic) or tensor.is_sparse or dense_order(tensor) is None:
            return self.fake_mode.from_tensor(tensor, static_shapes=True)
        fake, symbols = symbolic_fake(self.fake_mode, tensor, dynamic,
                                      lambda dim: SizeSource(source, dim).name())
        for sym, dim in symbols.items():
            self.symbol_sources.setdefault(sym, []).append(SizeSource(source, dim))
            self.symbol_values.setdefault(sym, fake.shape[dim])
        for dim, size in enumerate(fake.shape):  # duck sizing: shared symbols, more sources
            if isinstance(size, torch.SymInt):
                sym = size.node.expr
                if sym in self.symbol_sources and SizeSource(source, dim) not in \
                        self.symbol_sources[sym]:
                    self.symbol_sources[sym].append(SizeSource(source, dim))
        return fake

    def symbol_input(self, sym: Any) -> torch.fx.Node:
        """The placeholder of size symbol ``sym`` (made on first use): the entry passes the
        value from the symbol's first source."""
        node = self._symbol_inputs.get(sym)
        if node is None:
            source = self.symbol_sources[sym][0]
            value = self.symbol_values[sym]
            node = self._placeholder(source_to_identifier(source), value)
            self.inputs.append(GraphInput(node, source, None, value, False))
            self._symbol_inputs[sym] = node
        return node

    def _placeholder(self, name: str, example: Any) -> torch.fx.Node:
        if self._last_placeholder is None:
            first = next(iter(self.graph.nodes), None)
            ctx = (self.graph.inserting_before(first) if first is not None
                   else contextlib.nullcontext())
        else:
            ctx = self.graph.inserting_after(self._last_placeholder)
        with ctx:
            node = self.graph.placeholder(name)
        self._last_placeholder = node
        node.meta["example_value"] = example
        return node

    def existing_input(self, tensor: torch.Tensor) -> TensorVariable | None:
        """The tracker of ``tensor`` if the graph already takes it as an input."""
        return self._input_by_id.get(id(tensor))

    def add_tensor_input(self, tensor: torch.Tensor, source: Source, *,
                         static: bool = False) -> TensorVariable:
        """A placeholder for ``tensor`` read from ``source`` (shared with an earlier source
        holding the very same tensor, guarded ``new is earlier``)."""
        from kiln.capture.variables.tensor import TensorVariable

        existing = self._input_by_id.get(id(tensor))
        if existing is not None:
            if existing.source != source and not static:
                self.guards.add_alias(existing.source, source)
            return TensorVariable(existing.node, existing.example, source=source,
                                  class_type=type(tensor))
        fake = self.fakeify(tensor, source, static=static)
        node = self._placeholder(source_to_identifier(source), fake)
        node.meta["grapharg_source"] = source.name()
        node.meta["static_input"] = static
        self.inputs.append(GraphInput(node, source, tensor, fake, static))
        self._keepalive.append(tensor)
        vt = TensorVariable(node, fake, source=source, class_type=type(tensor))
        self._input_by_id[id(tensor)] = vt
        if not static:
            self.guards.add_tensor_match(source, tensor, dynamic=[
                isinstance(s, torch.SymInt) for s in fake.shape])
        return vt

    def input_of(self, node: torch.fx.Node) -> GraphInput:
        return next(i for i in self.inputs if i.node is node)

    def add_module_tensor(self, tensor: torch.Tensor, source: Source) -> TensorVariable:
        """A parameter or buffer reached through a module (or a tensor constant of a
        library): a static graph input."""
        return self.add_tensor_input(tensor, source, static=True)

    # --- operations ---------------------------------------------------------------------
    def call_op(self, tx: InstructionTranslator, kind: str, target: Any,
                args: list[VariableTracker], kwargs: dict[str, VariableTracker],
                *, result_type: Callable[..., Any] | None = None) -> VariableTracker:
        """Add ``kind``/``target`` (``call_function`` or ``call_method``) applied to trackers,
        compute its fake result, and return a tracker for the result."""
        node_args, fake_args = _unwrap_all(tx, args)
        node_kwargs, fake_kwargs = _unwrap_all(tx, kwargs)
        fake_result = self.run_fake(tx, kind, target, fake_args, fake_kwargs)
        node = self.graph.create_node(kind, target, tuple(node_args), dict(node_kwargs))
        node.meta["stack_trace"] = "".join(traceback.format_list(tx.user_stack()))
        node.meta["example_value"] = fake_result
        self._module_metadata(node, target)
        return self.wrap_result(tx, node, fake_result)

    def run_fake(self, tx: InstructionTranslator, kind: str, target: Any, args: Any,
                 kwargs: Any) -> Any:
        try:
            with self.fake_mode, self._dispatcher():
                if kind == "call_function" and self.symbol_sources:
                    by_rule = fake_rule(target, args, kwargs)
                    if by_rule is not None:
                        return by_rule
                if kind == "call_method":
                    return getattr(args[0], target)(*args[1:], **kwargs)
                return target(*args, **kwargs)
        except (DataDependentOutputException, DynamicOutputShapeException) as e:
            tx.unsupported(f"{_op_name(kind, target)} has a data-dependent output ({e})",
                           hint="kiln cannot trace values that depend on tensor contents yet")
        except (UnsupportedFakeTensorException, UnsupportedOperatorException) as e:
            tx.unsupported(f"{_op_name(kind, target)} cannot run on fake tensors: {e}")
        except NotImplementedError as e:
            tx.unsupported(f"{_op_name(kind, target)} is not implemented for fake tensors: {e}")
        except Exception as e:
            raise TorchRuntimeError(
                f"{_op_name(kind, target)} failed while tracing: {type(e).__name__}: {e}"
            ) from e

    def _dispatcher(self) -> Any:
        """Ops traced with symbolic sizes run through the Python dispatcher, so that ops
        whose C++ kernels need concrete sizes (``lstm``...) use their Python decompositions
        (as torch.compile does); a trace without symbols keeps the faster C++ path."""
        if self.symbol_sources:
            return enable_python_dispatcher()
        return contextlib.nullcontext()

    def wrap_result(self, tx: InstructionTranslator, node: torch.fx.Node,
                    fake: Any) -> VariableTracker:
        from kiln.capture.variables.constant import ConstantVariable
        from kiln.capture.variables.containers import (
            ListVariable,
            NamedTupleVariable,
            TupleVariable,
        )
        from kiln.capture.variables.tensor import TensorVariable

        if isinstance(fake, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            if free_unbacked_symbols(fake):
                tx.unsupported(f"{node.target} returns a value that depends on tensor contents")
            from kiln.capture.variables.sym import wrap_symbolic

            # made again where the value is used (an unused size computation leaves no node)
            kind, target, args, kwargs = node.op, node.target, node.args, node.kwargs
            self.graph.erase_node(node)
            return wrap_symbolic(tx, fake, lambda tx: self.graph.create_node(
                kind, target, args, kwargs))
        if not _contains_tensor(fake):
            # A result that is not a tensor: a Python value that follows from guarded
            # metadata (the node is dropped), or the None of an operation kept for its
            # effect (``x[0] = 1``).
            if not _is_impure(node):
                self.graph.erase_node(node)
            from kiln.capture.variables.builder import wrap_constant_result

            return wrap_constant_result(tx, fake)
        if isinstance(fake, torch.Tensor):
            if free_unbacked_symbols(fake):
                tx.unsupported(f"{node.target} produces a tensor whose shape depends on tensor "
                               "contents")
            return TensorVariable(node, fake)
        if isinstance(fake, (tuple, list)):
            items = []
            for i, item in enumerate(fake):
                if isinstance(item, torch.Tensor) or isinstance(item, (tuple, list)):
                    sub = self.graph.create_node("call_function", operator.getitem, (node, i))
                    sub.meta["example_value"] = item
                    sub.meta["stack_trace"] = node.meta.get("stack_trace")
                    items.append(self.wrap_result(tx, sub, item))
                elif item is None or isinstance(item, (int, float, bool)):
                    items.append(ConstantVariable(item))
                else:
                    tx.unsupported(f"{node.target} returned a {type(item).__name__}")
            if isinstance(fake, tuple) and type(fake) is not tuple:
                return NamedTupleVariable(items, type(fake))
            if isinstance(fake, list):
                return ListVariable(items, mutable_local=True)
            return TupleVariable(items)
        tx.unsupported(f"{node.target} returned a {type(fake).__name__}")

    def register_submodule(self, module: Any, source: Source) -> str:
        """A name under which ``call_module`` nodes reach ``module``."""
        for name, existing in self.submodules.items():
            if existing is module:
                return name
        name = source_to_identifier(source)
        self.submodules[name] = module
        self.attrs[name] = module
        return name

    def call_module(self, tx: InstructionTranslator, name: str, module: Any,
                    args: list[VariableTracker],
                    kwargs: dict[str, VariableTracker]) -> VariableTracker:
        node_args, fake_args = _unwrap_all(tx, args)
        node_kwargs, fake_kwargs = _unwrap_all(tx, kwargs)
        try:
            with self.fake_mode, _allow_real_params(self.fake_mode):
                fake_result = module(*fake_args, **fake_kwargs)
        except Exception as e:
            tx.unsupported(f"module {type(module).__name__} cannot run on fake tensors: {e}")
        node = self.graph.create_node("call_module", name, tuple(node_args), dict(node_kwargs))
        node.meta["stack_trace"] = "".join(traceback.format_list(tx.user_stack()))
        node.meta["example_value"] = fake_result
        return self.wrap_result(tx, node, fake_result)

    # --- finishing ----------------------------------------------------------------------
    def count_calls(self) -> int:
        return sum(1 for n in self.graph.nodes if n.op.startswith("call"))

    def remove_dead_nodes(self) -> None:
        """Drop what the program never used, as torch.compile does: results of ``getitem``
        on a multi-output op, and inputs read only for their metadata (their guards stay).
        Computations the program did and discarded stay in the graph."""
        for node in reversed(list(self.graph.nodes)):
            if node.users:
                continue
            if node.op == "call_function" and node.target is operator.getitem:
                self.graph.erase_node(node)
            elif node.op == "placeholder":
                self.graph.erase_node(node)
        live = {n for n in self.graph.nodes if n.op == "placeholder"}
        self.inputs = [i for i in self.inputs if i.node in live]

    def make_graph_module(self, output_nodes: list[torch.fx.Node]) -> torch.fx.GraphModule:
        self.graph.output(tuple(output_nodes))
        self.remove_dead_nodes()
        return torch.fx.GraphModule(self.attrs, self.graph, class_name="GraphModule")


_IMPURE_FUNCTIONS = frozenset({operator.setitem, torch._C._set_grad_enabled})


def _target_name(node: torch.fx.Node) -> str:
    target = node.target
    return target if isinstance(target, str) else getattr(target, "__name__", "")


def _is_impure(node: torch.fx.Node) -> bool:
    if node.target in _IMPURE_FUNCTIONS:
        return True
    name = _target_name(node)
    if name.endswith("_") and not name.endswith("__"):
        return True  # in-place
    if "out" in node.kwargs or node.kwargs.get("inplace") is True:
        return True
    return False


@contextlib.contextmanager
def _allow_real_params(mode: FakeTensorMode):
    """Let a module's real parameters meet fake inputs (they are converted on the fly)."""
    previous = mode.allow_non_fake_inputs
    mode.allow_non_fake_inputs = True
    try:
        yield
    finally:
        mode.allow_non_fake_inputs = previous


def _contains_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_contains_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_tensor(v) for v in value.values())
    return False


def _op_name(kind: str, target: Any) -> str:
    if kind == "call_method":
        return f"Tensor.{target}"
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    if module.startswith("torch._C"):
        module = "torch"
    return f"{module}.{name}" if module and module != "builtins" else name


def _unwrap_all(tx: InstructionTranslator, values: Any) -> tuple[Any, Any]:
    """Trackers -> (FX node arguments, fake values), recursively through containers."""
    if isinstance(values, dict):
        nodes, fakes = {}, {}
        for k, v in values.items():
            nodes[k], fakes[k] = unwrap(tx, v)
        return nodes, fakes
    pairs = [unwrap(tx, v) for v in values]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def unwrap(tx: InstructionTranslator, vt: VariableTracker) -> tuple[Any, Any]:
    from kiln.capture.variables.containers import BaseListVariable, ConstDictVariable, SizeVariable
    from kiln.capture.variables.sym import SliceVariable, SymNodeVariable
    from kiln.capture.variables.tensor import TensorVariable

    if isinstance(vt, TensorVariable):
        return vt.node, vt.example
    if isinstance(vt, SymNodeVariable):
        return vt.as_node(tx), vt.value
    if isinstance(vt, SliceVariable):
        parts = [unwrap(tx, p) for p in vt.parts]
        return slice(*(p[0] for p in parts)), slice(*(p[1] for p in parts))
    if isinstance(vt, SizeVariable):
        nodes, values = _unwrap_all(tx, vt.items)
        return tuple(nodes), torch.Size(values)
    if isinstance(vt, BaseListVariable):
        nodes, fakes = _unwrap_all(tx, vt.items)
        kind = tuple if issubclass(vt.container_type, tuple) else list
        return kind(nodes), kind(fakes)
    if isinstance(vt, ConstDictVariable):
        nodes, fakes = _unwrap_all(tx, vt.items)
        return nodes, fakes
    try:
        value = vt.as_constant()
    except NotConstant:
        tx.unsupported(f"passing {vt.describe()} to a tensor operation")
    return value, value
