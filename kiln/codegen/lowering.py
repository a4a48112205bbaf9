"""Lowering: an aten graph (decomposed to the core set) → kiln's loop IR (ir.py).

:class:`GraphLowering` interprets the graph node by node. Each aten op with a lowering
(the tables in lowerings.py) becomes IR: pointwise ops lazy :class:`~kiln.codegen.ir.Pointwise`
values whose consumers inline them, reductions :class:`~kiln.codegen.ir.ComputedBuffer`\\ s,
views index arithmetic on their producer. Every other op (matmul and friends on purpose, and
whatever has no lowering) becomes an :class:`~kiln.codegen.ir.ExternCall` of the aten op on
realized inputs: every graph lowers.

Realized tensors take the layout (sizes, strides, offset) of the node's fake tensor, the
layout eager gives it: views of them are then exactly the fake tensors' views, extern calls
get the inputs they were traced with, and outputs have eager's strides (the AOT runtime
rebuilds aliases with those).

The result, :class:`LoweredGraph`, is what the scheduler takes: the steps in graph order, the
inputs and outputs, the size symbols and where the wrapper reads each from.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from collections.abc import Callable
from typing import Any

import sympy
import torch
import torch.fx

from kiln.codegen import ir
from kiln.codegen.ir import (
    Buffer,
    ComputedBuffer,
    ExternCall,
    ExternOutput,
    InputBuffer,
    Layout,
    Pointwise,
    Reduction,
    TensorIR,
)

log = logging.getLogger("kiln.codegen")
aten = torch.ops.aten

SUPPORTED_DTYPES = frozenset({
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int8, torch.uint8,
    torch.int16, torch.int32, torch.int64, torch.bool,
})


class NoLowering(Exception):
    """This call of an op is not lowered (an unsupported dtype, argument or form): it runs
    as an aten call instead."""


Lowering = Callable[..., Any]
LOWERINGS: dict[Any, Lowering] = {}
EXTERN_TARGETS: set[Any] = set()


def register(*targets: Any) -> Callable[[Lowering], Lowering]:
    """Register a lowering for aten packets or overloads: ``fn(ctx, node, *args, **kwargs)``
    with FX nodes replaced by their IR (TensorIR, sympy expressions for SymInts)."""
    def wrap(fn: Lowering) -> Lowering:
        for t in targets:
            LOWERINGS[t] = fn
        return fn
    return wrap


def lowering_for(target: Any) -> Lowering | None:
    if target in LOWERINGS:
        return LOWERINGS[target]
    packet = getattr(target, "overloadpacket", None)
    return LOWERINGS.get(packet)


@dataclasses.dataclass
class LoweredGraph:
    """The IR of one graph: ``steps`` (ComputedBuffers and ExternCalls) in an order that
    respects their dependencies, ``inputs`` one per placeholder (an InputBuffer, a sympy
    symbol, or None for values the graph does not read as tensors), ``outputs`` (Buffers,
    sympy expressions, None or Python constants), and ``symbols``: for each size symbol, the
    wrapper expression that reads it off the inputs (``"arg0.size(1)"``)."""

    steps: list[ComputedBuffer | ExternCall]
    inputs: list[Any]
    outputs: list[Any]
    symbols: dict[sympy.Symbol, str]
    device: torch.device
    constants: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def meta_of(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


# A chain of pointwise nodes longer than this is stored to memory on the way: its loaders
# and emitted expressions nest once per node (200 chained adds exceeded Python's recursion
# limit), and an expression that deep is no faster inlined than read back once.
MAX_INLINE_DEPTH = 48


class GraphLowering:
    """Lowers one aten GraphModule (see the module docstring)."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.gm = gm
        self.steps: list[ComputedBuffer | ExternCall] = []
        self.env: dict[torch.fx.Node, Any] = {}
        self.symbols: dict[sympy.Symbol, str] = {}
        self.fake_offsets: dict[str, Any] = {}  # storage name -> fake storage offset of its 0
        self._counter = 0
        self.node: torch.fx.Node | None = None
        self.extern_count = 0
        self.fallback_ops: list[str] = []
        self.constants: dict[str, torch.Tensor] = {}

    # --- names and buffers ---------------------------------------------------------------------

    def name(self, prefix: str = "buf") -> str:
        self._counter += 1
        return f"{prefix}{self._counter - 1}"

    def realize(self, value: Any, meta: Any = None) -> Buffer:
        """``value`` in memory: a Pointwise computed into a new buffer with ``meta``'s layout
        (its own node's when not given, else contiguous)."""
        if isinstance(value, Buffer):
            return value
        if not isinstance(value, Pointwise):
            raise TypeError(f"cannot realize {value!r}")
        cached = getattr(value, "realized", None)
        if cached is not None:
            return cached
        meta = meta if meta is not None else value.meta
        name = self.name()
        if isinstance(meta, torch.Tensor) and \
                [ir.sym(s) for s in meta.shape] == list(value.size):
            # eager's layout, whatever it is (an expanded meta stores each value several
            # times, harmlessly): views and aten calls made of it then see what they saw
            # when traced
            layout = Layout.of(meta, ir.sym(meta.storage_offset()))
            self.fake_offsets[name] = meta.storage_offset()
        else:
            layout = Layout.contiguous(value.size)
        buf = ComputedBuffer(name, layout, value.dtype, value)
        self.steps.append(buf)
        value.realized = buf  # type: ignore[attr-defined]
        return buf

    def reduction(self, body: Reduction, meta: Any) -> ComputedBuffer:
        name = self.name()
        self.fake_offsets[name] = meta.storage_offset()
        buf = ComputedBuffer(name, Layout.of(meta, ir.sym(meta.storage_offset())), body.dtype,
                             body)
        self.steps.append(buf)
        return buf

    def view_of(self, base: Buffer, meta: torch.Tensor) -> Buffer:
        """``base``'s storage seen with the layout of fake tensor ``meta`` (a view of the
        fake tensor ``base`` was made from)."""
        origin = self.fake_offsets.get(base.storage.name, 0)
        return base.view(Layout.of(meta, ir.sym(origin)))

    # --- the graph -------------------------------------------------------------------------------

    def run(self) -> LoweredGraph:
        inputs: list[Any] = []
        device = None
        for node in self.gm.graph.nodes:
            self.node = node
            val = meta_of(node)
            if isinstance(val, torch.Tensor) and device is None and node.op == "placeholder":
                device = val.device
            if node.op == "placeholder":
                self.env[node] = self._placeholder(node, len(inputs))
                inputs.append(self.env[node])
            elif node.op == "call_function":
                self.env[node] = self._call(node)
            elif node.op == "get_attr":
                self.env[node] = self._constant(node)
            elif node.op == "output":
                result = node.args[0]
                flat = result if isinstance(result, (list, tuple)) else [result]
                outputs = [self._output(v) for v in flat]
        return LoweredGraph(self.steps, inputs, outputs, self.symbols,
                            device or torch.device("cpu"), self.constants)

    def _constant(self, node: torch.fx.Node) -> Any:
        """A tensor the graph holds (a lifted constant): a buffer the wrapper reads from a
        global."""
        value: Any = self.gm
        for part in str(node.target).split("."):
            value = getattr(value, part)
        if not isinstance(value, torch.Tensor):
            return value
        name = self.name("const")
        self.constants[name] = value
        buf = ExternOutput(name, value.dtype, Layout.of(value, ir.sym(value.storage_offset())))
        self.fake_offsets[name] = value.storage_offset()
        return buf

    def _placeholder(self, node: torch.fx.Node, position: int) -> Any:
        val = meta_of(node)
        arg = f"arg{position}"
        if isinstance(val, torch.SymInt):
            expr = ir.sym(val)
            if isinstance(expr, sympy.Symbol):
                self.symbols.setdefault(expr, arg)
            return expr
        if not isinstance(val, torch.Tensor):
            return val
        for d, (size, stride) in enumerate(zip(val.shape, val.stride())):
            for what, s in (("size", size), ("stride", stride)):
                e = ir.sym(s)
                if isinstance(e, sympy.Symbol):
                    self.symbols.setdefault(e, f"{arg}.{what}({d})")
        buf = InputBuffer(arg, val.dtype, Layout.of(val, ir.sym(val.storage_offset())),
                          position)
        self.fake_offsets[buf.name] = val.storage_offset()
        return buf

    def _lower_value(self, a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self._lower_value(x) for x in a)
        if isinstance(a, torch.SymInt):
            return ir.sym(a)
        return a

    def _call(self, node: torch.fx.Node) -> Any:
        val = meta_of(node)
        target = node.target
        if target is operator.getitem:
            return self.env[node.args[0]][node.args[1]]
        if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return sympy.sympify(val.node.expr)
        if isinstance(val, (int, float, bool)) and not isinstance(target, torch._ops.OpOverload):
            return val
        args = self._lower_value(node.args)
        kwargs = {k: self._lower_value(v) for k, v in node.kwargs.items()}
        lowering = lowering_for(target)
        if lowering is not None and target not in EXTERN_TARGETS and self._dtypes_supported(node):
            try:
                result = lowering(self, node, *args, **kwargs)
            except NoLowering as e:
                log.debug("kiln: %s runs as an aten call: %s", target, e)
            else:
                return self._record(node, result)
        return self.extern(node, target, args, kwargs)

    def _dtypes_supported(self, node: torch.fx.Node) -> bool:
        vals = [meta_of(node)] + [meta_of(a) for a in node.all_input_nodes]
        for v in vals:
            for t in (v if isinstance(v, (list, tuple)) else [v]):
                if isinstance(t, torch.Tensor) and (t.dtype not in SUPPORTED_DTYPES or
                                                    t.device.type != "cpu"):
                    return False
        return True

    def _record(self, node: torch.fx.Node, result: Any) -> Any:
        if not isinstance(result, Pointwise):
            return result
        if result.meta is None:
            result.meta = meta_of(node)
        result.depth = 1 + max((getattr(self.env.get(n), "depth", 0)
                                for n in node.all_input_nodes), default=0)
        if result.depth > MAX_INLINE_DEPTH or self._should_realize(node, result):
            return self.realize(result)
        return result

    def _should_realize(self, node: torch.fx.Node, value: Pointwise) -> bool:
        """Pointwise values are inlined into each consumer; one read many times is kept in
        memory instead when it is in memory anyway (a graph output) or when recomputing it
        would cost more than the reads (a large body: transcendental functions count ten)."""
        users = len(node.users)
        if users <= 1:
            return False
        if any(u.op == "output" for u in node.users):
            return True
        body = ir.walk(value.inner([sympy.Symbol(f"i{d}") for d in range(value.ndim)]))
        cost = sum(10 if v.op in ir.EXPENSIVE_OPS else 1 for v in body)
        n_loads = sum(v.op == "load" for v in body)
        return cost * (users - 1) > 60 or n_loads > 8

    def extern(self, node: torch.fx.Node, target: Any, args: Any, kwargs: Any) -> Any:
        """``target`` called by the wrapper on realized inputs; outputs with the node's
        layouts."""
        kind = "extern" if target in EXTERN_TARGETS or \
            getattr(target, "overloadpacket", None) in EXTERN_TARGETS else "fallback"
        if kind == "extern":
            self.extern_count += 1
        else:
            self.fallback_ops.append(str(target))

        def realize_all(a: Any, meta: Any) -> Any:
            if isinstance(a, TensorIR):
                return self.realize(a, meta)
            if isinstance(a, (list, tuple)):
                metas = meta if isinstance(meta, (list, tuple)) else [None] * len(a)
                return type(a)(realize_all(x, m) for x, m in zip(a, metas))
            return a

        metas = self._lower_metas(node.args)
        args = realize_all(args, metas)
        kwargs = {k: realize_all(v, self._lower_metas(node.kwargs[k])) for k, v in
                  kwargs.items()}
        call = ExternCall(target, tuple(args), kwargs, None, kind)
        call.outputs = self._extern_outputs(meta_of(node))
        self.steps.append(call)
        return call.outputs

    def _lower_metas(self, a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            return meta_of(a)
        if isinstance(a, (list, tuple)):
            return [self._lower_metas(x) for x in a]
        return None

    def _extern_outputs(self, val: Any) -> Any:
        if isinstance(val, torch.Tensor):
            name = self.name()
            out = ExternOutput(name, val.dtype, Layout.of(val, ir.sym(val.storage_offset())))
            self.fake_offsets[name] = val.storage_offset()
            return out
        if isinstance(val, (list, tuple)):
            return type(val)(self._extern_outputs(v) for v in val)
        if isinstance(val, torch.SymInt):
            return ir.sym(val)
        return val

    def _output(self, value: Any) -> Any:
        if isinstance(value, torch.fx.Node):
            v = self.env[value]
            if isinstance(v, TensorIR):
                return self.realize(v, meta_of(value))
            return v
        return value


def lower(gm: torch.fx.GraphModule) -> tuple[LoweredGraph, GraphLowering]:
    """``gm`` as kiln IR."""
    from kiln.codegen import lowerings, lowerings_reductions  # noqa: F401  (registers them)

    lowering = GraphLowering(gm)
    return lowering.run(), lowering
