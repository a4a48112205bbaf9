"""kiln's loop-level IR: what lowering builds from an aten graph and the scheduler fuses.

Two levels, both plain data:

* **Scalar expressions** (:class:`Value`): the body of a loop, one element's computation, as a
  small tree of ops (``load``, ``add``, ``exp``, ``where``, ``to_dtype``, ...). The ``ops``
  namespace builds them. A body is a Python function ``index -> Value`` (an *inner function*,
  as in torch.fx's interpreters and inductor): calling it with symbolic loop indices yields the
  tree for one element, which each backend (C++ here, Triton later) prints its own way.
  Index arithmetic is sympy, over loop variables and the graph's size symbols, so one kernel
  serves every size a symbolic graph takes.

* **Tensors** (:class:`TensorIR`): what each aten node of the graph lowers to.
  :class:`Pointwise` is a lazy elementwise computation (not yet in memory: consumers inline
  its inner function, which is how pointwise chains fuse); :class:`Buffer` is memory with a
  :class:`Layout` (an input, a computed buffer, the output of an extern call); a view of a
  buffer is a :class:`Buffer` with another layout on the same storage (index arithmetic, no
  copy). :class:`Reduction` bodies are always materialized, as a :class:`ComputedBuffer`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import sympy
import torch

Expr = sympy.Expr
Index = list[Expr]
ZERO = sympy.Integer(0)


# --- index arithmetic --------------------------------------------------------------------------

class FloorDiv(sympy.Function):
    """``a // b`` for non-negative integer index expressions (C's ``/`` on them)."""

    nargs = (2,)
    is_integer = True

    @classmethod
    def eval(cls, a: Expr, b: Expr) -> Expr | None:
        if b == 1:
            return a
        if a.is_Integer and b.is_Integer:
            return sympy.Integer(int(a) // int(b))
        if a == 0:
            return sympy.Integer(0)
        return None


class ModularIndexing(sympy.Function):
    """``a % b`` for non-negative integer index expressions."""

    nargs = (2,)
    is_integer = True

    @classmethod
    def eval(cls, a: Expr, b: Expr) -> Expr | None:
        if b == 1 or a == 0:
            return sympy.Integer(0)
        if a.is_Integer and b.is_Integer:
            return sympy.Integer(int(a) % int(b))
        return None


def sym(value: Any) -> Expr:
    """An int or SymInt (or sympy expression) as a sympy expression."""
    if isinstance(value, torch.SymInt):
        return sympy.sympify(value.node.expr)
    if isinstance(value, (int, bool)):
        return sympy.Integer(int(value))
    return sympy.sympify(value)


def product(values: Sequence[Expr]) -> Expr:
    return functools.reduce(lambda a, b: a * b, values, sympy.Integer(1))


def contiguous_strides(size: Sequence[Expr]) -> list[Expr]:
    strides, running = [], sympy.Integer(1)
    for s in reversed(size):
        strides.append(running)
        running = running * s
    return list(reversed(strides))


# --- scalar expressions ------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class Value:
    """One scalar computation: ``op`` applied to ``args`` (Values, sympy index expressions,
    Python numbers, dtypes or buffer names), holding a ``dtype`` (the C type it is computed
    in: float16/bfloat16 values are computed in float32)."""

    op: str
    args: tuple[Any, ...]
    dtype: torch.dtype

    def __repr__(self) -> str:
        return f"{self.op}({', '.join(map(repr, self.args))}):{str(self.dtype)[6:]}"


LOW_PRECISION = (torch.float16, torch.bfloat16)

# scalar ops that cost about ten simple ones (libm calls): worth storing rather than
# computing twice
EXPENSIVE_OPS = frozenset({
    "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sin", "cos", "tan", "asin",
    "acos", "atan", "sinh", "cosh", "tanh", "sigmoid", "erf", "erfc", "pow", "atan2",
})


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a value of ``dtype`` is computed in: float32 for float16 / bfloat16."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


class ops:
    """Builders of :class:`Value` trees. Arithmetic ops take operands already converted to a
    common dtype (lowering's type promotion does that)."""

    @staticmethod
    def load(name: str, offset: Expr, dtype: torch.dtype) -> Value:
        """Element ``offset`` of buffer ``name`` (stored as ``dtype``)."""
        return Value("load", (name, offset), compute_dtype(dtype))

    @staticmethod
    def constant(value: Any, dtype: torch.dtype) -> Value:
        return Value("constant", (value,), compute_dtype(dtype))

    @staticmethod
    def index_expr(expr: Expr, dtype: torch.dtype) -> Value:
        """An index expression (sizes, loop variables) as a value."""
        return Value("index_expr", (expr,), dtype)

    @staticmethod
    def to_dtype(x: Value, dtype: torch.dtype) -> Value:
        """Conversion as eager's ``.to(dtype)`` (float to float16 rounds)."""
        if x.dtype == dtype:
            return x
        return Value("to_dtype", (x, dtype), compute_dtype(dtype) if dtype not in
                     LOW_PRECISION else torch.float32)

    @staticmethod
    def round_to(x: Value, dtype: torch.dtype) -> Value:
        """``x`` rounded to ``dtype`` (float16/bfloat16) and computed on in float32."""
        return Value("round_to", (x, dtype), torch.float32)

    @staticmethod
    def op(name: str, *args: Value, dtype: torch.dtype | None = None) -> Value:
        """A pointwise op (see cpp.py's table) on operands of one dtype; ``dtype`` is the
        result's (bool for comparisons), default the operands'."""
        return Value(name, args, dtype or args[0].dtype)

    @staticmethod
    def where(cond: Value, a: Value, b: Value) -> Value:
        return Value("where", (cond, a, b), a.dtype)


def walk(value: Value) -> list[Value]:
    """Every Value in the tree under ``value`` (each once), operands before their users."""
    seen: dict[int, Value] = {}

    def visit(v: Value) -> None:
        if id(v) in seen:
            return
        for a in v.args:
            if isinstance(a, Value):
                visit(a)
        seen[id(v)] = v

    visit(value)
    return list(seen.values())


def loads(value: Value) -> list[tuple[str, Expr]]:
    """The (buffer, offset) pairs the tree reads."""
    return [v.args for v in walk(value) if v.op == "load"]


# --- tensors -----------------------------------------------------------------------------------

Loader = Callable[[Index], Value]


class TensorIR:
    """What an aten node lowers to: something with a dtype and size that can be read at an
    index (:meth:`loader`)."""

    dtype: torch.dtype
    size: list[Expr]

    def loader(self) -> Loader:
        raise NotImplementedError

    @property
    def ndim(self) -> int:
        return len(self.size)


@dataclasses.dataclass
class Layout:
    """Where a tensor's elements are in its storage: element ``i`` is at
    ``offset + sum(i[d] * stride[d])``."""

    size: list[Expr]
    stride: list[Expr]
    offset: Expr = sympy.Integer(0)

    def offset_of(self, index: Index) -> Expr:
        return self.offset + sum((i * s for i, s in zip(index, self.stride) if s != 0),
                                 sympy.Integer(0))

    @staticmethod
    def of(t: torch.Tensor, base_offset: Expr = ZERO) -> Layout:
        """The layout of fake tensor ``t`` (offset relative to ``base_offset``)."""
        return Layout([sym(s) for s in t.shape], [sym(s) for s in t.stride()],
                      sym(t.storage_offset()) - base_offset)

    @staticmethod
    def contiguous(size: Sequence[Expr]) -> Layout:
        return Layout(list(size), contiguous_strides(size))


class Buffer(TensorIR):
    """Memory: a graph input, a computed buffer or an extern call's output, or a view of one
    (``storage`` names the buffer that owns the memory, ``layout`` this tensor's elements in
    it)."""

    def __init__(self, name: str, dtype: torch.dtype, layout: Layout,
                 storage: Buffer | None = None) -> None:
        self.name = name
        self.dtype = dtype
        self.layout = layout
        self.storage = storage or self

    @property
    def size(self) -> list[Expr]:  # type: ignore[override]
        return self.layout.size

    def loader(self) -> Loader:
        name, layout, dtype = self.storage.name, self.layout, self.dtype
        return lambda index: ops.load(name, layout.offset_of(index), dtype)

    def is_view(self) -> bool:
        return self.storage is not self

    def view(self, layout: Layout) -> Buffer:
        """The same storage seen through ``layout``."""
        return Buffer(f"{self.storage.name}_view", self.dtype, layout, self.storage)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


class InputBuffer(Buffer):
    """Placeholder ``index`` of the graph."""

    def __init__(self, name: str, dtype: torch.dtype, layout: Layout, index: int) -> None:
        super().__init__(name, dtype, layout)
        self.index = index


@dataclasses.dataclass
class Pointwise(TensorIR):
    """Lazy elementwise computation: element ``index`` is ``inner(index)``."""

    dtype: torch.dtype
    size: list[Expr]
    inner: Loader
    meta: Any = None  # the fake tensor of the node it came from: its layout when realized
    depth: int = 1  # of the chain of inlined pointwise nodes it computes (lowering sets it)

    def loader(self) -> Loader:
        return self.inner


@dataclasses.dataclass
class Reduction:
    """A reduction body: ``reduction_type`` over the dims ``reduced`` of an iteration space
    ``full_size``, of values ``inner(full_index)``; the result at the remaining indices.
    ``acc_dtype`` is what it accumulates in.

    ``m2`` is the sum of squared deviations from the values' mean (Welford's M2: a variance
    is ``M2 / max(n - correction, 0)``). It is a reduction of its own so that a column
    reduction can compute it in one pass (cpp_columns.py); a row reduction computes it in
    two passes over the row, as a mean and then a sum of squares."""

    dtype: torch.dtype
    full_size: list[Expr]
    reduced: tuple[int, ...]
    reduction_type: str  # sum prod max min argmax argmin m2
    inner: Loader
    acc_dtype: torch.dtype
    keepdim: bool

    def output_index(self, full_index: Index) -> Index:
        if self.keepdim:
            return [sympy.Integer(0) if d in self.reduced else i
                    for d, i in enumerate(full_index)]
        return [i for d, i in enumerate(full_index) if d not in self.reduced]


class ComputedBuffer(Buffer):
    """A buffer a generated kernel writes: ``body`` (a :class:`Pointwise` over its size, or a
    :class:`Reduction`) stored through ``layout``."""

    def __init__(self, name: str, layout: Layout, dtype: torch.dtype,
                 body: Pointwise | Reduction) -> None:
        super().__init__(name, dtype, layout)
        self.body = body

    @property
    def full_size(self) -> list[Expr]:
        return self.body.full_size if isinstance(self.body, Reduction) else self.size

    @property
    def reduced(self) -> tuple[int, ...]:
        return self.body.reduced if isinstance(self.body, Reduction) else ()


class ExternOutput(Buffer):
    """A tensor an extern or fallback call returns (allocated by aten, not by kiln)."""


@dataclasses.dataclass
class ExternCall:
    """A call of an aten op on realized tensors: an extern kernel (matmul, convolution,
    attention) or the fallback for an op without a lowering. ``args``/``kwargs`` hold
    :class:`Buffer`s where the op takes tensors; ``outputs`` mirrors the op's result
    structure (Buffers, or None for values the graph never reads)."""

    op: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    outputs: Any
    kind: str  # "extern" or "fallback"

    def input_buffers(self) -> list[Buffer]:
        found: list[Buffer] = []

        def visit(a: Any) -> None:
            if isinstance(a, Buffer):
                found.append(a)
            elif isinstance(a, (list, tuple)):
                for x in a:
                    visit(x)

        visit(self.args)
        visit(list(self.kwargs.values()))
        return found

    def output_buffers(self) -> list[ExternOutput]:
        outs = self.outputs if isinstance(self.outputs, (list, tuple)) else [self.outputs]
        flat: list[ExternOutput] = []
        for o in outs:
            if isinstance(o, (list, tuple)):
                flat.extend(x for x in o if isinstance(x, ExternOutput))
            elif isinstance(o, ExternOutput):
                flat.append(o)
        return flat

