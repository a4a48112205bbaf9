"""C++ kernels: one ``extern "C"`` function per scheduled kernel (scheduler.py).

Two loop shapes:

* **rows** (the general one): the outer dims of the kernel's space are an OpenMP-parallel
  loop nest; for each outer point the members run in order as *stages*: a reduction loop
  (accumulators in registers, ``omp simd reduction``), scalar code for outer members, a
  pointwise loop storing full members. The innermost loop is contiguous in the common case,
  and ``#pragma omp simd`` lets the compiler vectorize it. Pointwise-only kernels are the
  case without reductions (inner loop: the last dim).
* **columns** (cpp_columns.py): a reduction over the leading dim of a 2-d space whose reads
  are contiguous along the kept dim (``x.sum(0)``), tiled across the kept dim.

Sums of floating-point values accumulate in double (float16/bfloat16/float32 inputs), other
reductions in the compute dtype; the reduction loops of the rows shape are in
cpp_reductions.py. Sizes are arguments (``int64_t s0``), so one kernel serves
every size of a symbolic graph; the thread count is an argument too (torch's, read by the
wrapper at each call).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import sympy
import torch

from kiln import config
from kiln.codegen import ir
from kiln.codegen.cpp_reductions import reduction_rows
from kiln.codegen.ir import Value
from kiln.codegen.printers import IndexPrinter
from kiln.codegen.scheduler import FULL, OUTER, REDUCTION, Kernel, Member, loop_var

CTYPES = {
    torch.float32: "float", torch.float64: "double", torch.float16: "_Float16",
    torch.bfloat16: "kiln_bf16", torch.int8: "int8_t", torch.uint8: "uint8_t",
    torch.int16: "int16_t", torch.int32: "int32_t", torch.int64: "int64_t",
    torch.bool: "bool",
}

SCRATCH_ROW_LIMIT = 16384  # elements of a row kept in cache between two loops over it


def ctype(dtype: torch.dtype) -> str:
    return CTYPES[dtype]


# --- scalar expressions ------------------------------------------------------------------------

def _float_fn(name: str, dtype: torch.dtype) -> str:
    if name == "erf" and dtype != torch.float64:
        return "kiln_erff"  # the prelude's rational erf: vectorizes without a libm call
    if name == "exp" and dtype != torch.float64:
        return "kiln_expf"  # the prelude's AVX-512 exp where there is one, else expf
    return name + ("f" if dtype != torch.float64 else "")


def constant(value: Any, dtype: torch.dtype) -> str:
    """A Python number as a C literal of ``dtype``. A float32 literal is the double rounded
    to float32 first, as eager converts a scalar (a decimal read straight as float could
    round to the other neighbour); the most negative int64 is written as an expression
    (its literal would not fit a signed type)."""
    if dtype == torch.bool:
        return "true" if value else "false"
    if dtype.is_floating_point:
        v = float(value)
        if dtype != torch.float64:
            v = torch.tensor(v, dtype=torch.float64).to(torch.float32).item()
        t = ctype(dtype)
        if math.isnan(v):
            return f"std::numeric_limits<{t}>::quiet_NaN()"
        if math.isinf(v):
            return f"{'-' if v < 0 else ''}std::numeric_limits<{t}>::infinity()"
        text = repr(v)
        if "e" not in text and "." not in text:
            text += ".0"
        return text + ("f" if dtype == torch.float32 else "")
    v = int(value)
    if v == -2**63:
        return f"(({ctype(dtype)})(-9223372036854775807LL - 1))"
    return f"(({ctype(dtype)}){v}{'LL' if abs(v) > 2**31 - 1 else ''})"


UNARY = {
    "neg": "(-{0})", "reciprocal": "(({t})1 / {0})", "relu": "({0} < 0 ? ({t})0 : {0})",
    "logical_not": "(!{0})", "bitwise_not": "(~{0})", "isnan": "({0} != {0})",
    "sign": "kiln_sign({0})",
}
FLOAT_UNARY = {"exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "sin", "cos",
               "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "erf", "erfc", "floor",
               "ceil", "trunc"}
BINARY = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})",
    "truediv": "({0} / {1})", "eq": "({0} == {1})", "ne": "({0} != {1})",
    "lt": "({0} < {1})", "le": "({0} <= {1})", "gt": "({0} > {1})", "ge": "({0} >= {1})",
    "logical_and": "((bool){0} & (bool){1})", "logical_or": "((bool){0} | (bool){1})",
    "logical_xor": "((bool){0} != (bool){1})", "bitwise_and": "({0} & {1})",
    "bitwise_or": "({0} | {1})", "bitwise_xor": "({0} ^ {1})",
    "maximum": "kiln_maximum({0}, {1})", "minimum": "kiln_minimum({0}, {1})",
    "clamp_min": "kiln_maximum({0}, {1})", "clamp_max": "kiln_minimum({0}, {1})",
    "remainder": "kiln_remainder({0}, {1})", "floordiv": "kiln_floordiv({0}, {1})",
    "powi": "kiln_powi({0}, {1})",
}
# Signed overflow is undefined in C++ and gcc folds on that assumption (``x + 1 > x`` becomes
# true), where eager wraps around: int32/int64 arithmetic is done on the unsigned type, whose
# overflow wraps, and converted back. (int8/int16 operands are promoted to int, which cannot
# overflow on add, sub or mul of two of them.)
WRAPPING = {torch.int32: "uint32_t", torch.int64: "uint64_t"}
WRAPPING_BINARY = {"add": "+", "sub": "-", "mul": "*"}


class BodyWriter:
    """Emits Values as C statements into ``lines``, each distinct expression once."""

    def __init__(self, kernel_writer: KernelWriter, indent: str,
                 in_inner_loop: bool = False) -> None:
        self.kw = kernel_writer
        self.indent = indent
        self.in_inner_loop = in_inner_loop
        self.invariant: set[str] = set()  # C names of values the inner loop does not change
        self.lines: list[str] = []
        # keyed by id(): the Value is kept too, so no freed Value's id is reused for
        # another (which would merge two different loads)
        self.memo: dict[int, tuple[Value, str]] = {}
        self.cse: dict[tuple[Any, ...], str] = {}
        self.stored: dict[tuple[str, str], str] = {}

    def line(self, text: str) -> None:
        self.lines.append(self.indent + text)

    def define(self, key: tuple[Any, ...], dtype: torch.dtype, expr: str) -> str:
        if key in self.cse:
            return self.cse[key]
        name = self.kw.tmp()
        self.line(f"const {ctype(dtype if dtype not in ir.LOW_PRECISION else torch.float32)} "
                  f"{name} = {expr};")
        self.cse[key] = name
        return name

    def emit(self, v: Value) -> str:
        if id(v) in self.memo:
            return self.memo[id(v)][1]
        name = self._emit(v)
        self.memo[id(v)] = (v, name)
        if self._is_invariant(v, name):
            self.invariant.add(name)
        return name

    def _is_invariant(self, v: Value, name: str) -> bool:
        """Whether ``v`` is the same at every step of the inner loop: a constant, a value of
        the row (a reduction's result, an outer member), or computed from those alone."""
        if v.op == "constant" or name in self.kw.row_values:
            return True
        if v.op in ("load", "index_expr"):
            return False
        return all(self.memo[id(a)][1] in self.invariant for a in v.args
                   if isinstance(a, Value))

    def _divide(self, v: Value, a: str, b: str) -> str:
        """``a / b``; inside an inner loop, a float divided by a value of the row is a
        multiplication by its reciprocal, which the compiler computes once per row (eager's
        softmax does the same): a vector division costs as much as several multiplications."""
        if self.in_inner_loop and v.dtype.is_floating_point and v.args[1].op != "constant" \
                and b in self.invariant and a not in self.invariant:
            return f"({a} * (({ctype(v.dtype)})1 / {b}))"
        return f"({a} / {b})"

    def _emit(self, v: Value) -> str:
        t = ctype(v.dtype)
        if v.op == "load":
            return self.kw.load(self, *v.args)
        if v.op == "constant":
            return constant(v.args[0], v.dtype)
        if v.op == "index_expr":
            expr = self.kw.index(v.args[0])
            return self.define(("index", expr, v.dtype), v.dtype, f"({t})({expr})")
        args = [self.emit(a) if isinstance(a, Value) else a for a in v.args]
        if v.op == "to_dtype":
            expr = f"({args[0]} != 0)" if v.dtype == torch.bool else f"({t})({args[0]})"
        elif v.op == "round_to":
            target = args[1]
            expr = (f"(float)(_Float16)({args[0]})" if target == torch.float16 else
                    f"kiln_bf16_to_float(kiln_float_to_bf16({args[0]}))")
        elif v.op == "where":
            expr = f"({args[0]} ? {args[1]} : {args[2]})"
        elif v.op in WRAPPING_BINARY and v.dtype in WRAPPING:
            u = WRAPPING[v.dtype]
            expr = f"(({t})(({u}){args[0]} {WRAPPING_BINARY[v.op]} ({u}){args[1]}))"
        elif v.op == "neg" and v.dtype in WRAPPING:
            expr = f"(({t})(-({WRAPPING[v.dtype]}){args[0]}))"
        elif v.op in UNARY:
            expr = UNARY[v.op].format(*args, t=t)
        elif v.op in FLOAT_UNARY:
            expr = f"{_float_fn(v.op, v.dtype)}({args[0]})"
        elif v.op == "rsqrt":
            expr = f"(({t})1 / {_float_fn('sqrt', v.dtype)}({args[0]}))"
        elif v.op == "sigmoid":
            expr = f"(({t})1 / (({t})1 + {_float_fn('exp', v.dtype)}(-{args[0]})))"
        elif v.op == "abs":
            if v.dtype.is_floating_point:
                expr = f"{_float_fn('fabs', v.dtype)}({args[0]})"
            elif v.dtype in WRAPPING:  # abs(INT_MIN) is INT_MIN in eager
                expr = f"({args[0]} < 0 ? ({t})(-({WRAPPING[v.dtype]}){args[0]}) : {args[0]})"
            else:
                expr = f"({args[0]} < 0 ? ({t})-{args[0]} : {args[0]})"
        elif v.op == "round":
            expr = f"{_float_fn('nearbyint', v.dtype)}({args[0]})"
        elif v.op == "isinf":
            expr = f"({_float_fn('fabs', v.args[0].dtype)}({args[0]}) == " \
                   f"std::numeric_limits<{ctype(v.args[0].dtype)}>::infinity())"
        elif v.op == "truediv":
            expr = self._divide(v, *args)
        elif v.op in BINARY:
            expr = BINARY[v.op].format(*args)
        elif v.op in ("fmod", "truncdiv") and not v.dtype.is_floating_point:
            expr = f"(({t})({args[0]} {'%' if v.op == 'fmod' else '/'} {args[1]}))"
        elif v.op in ("pow", "atan2", "fmod"):
            expr = f"{_float_fn(v.op, v.dtype)}({args[0]}, {args[1]})"
        elif v.op == "truncdiv":
            expr = f"{_float_fn('trunc', v.dtype)}({args[0]} / {args[1]})"
        else:
            raise NotImplementedError(f"kiln C++: no code for op {v.op!r}")
        return self.define((v.op, tuple(args), v.dtype), v.dtype, expr)


# --- kernels -----------------------------------------------------------------------------------

@dataclasses.dataclass
class KernelSource:
    """One generated kernel: its C++ source and the arguments the wrapper passes:
    ``pointers`` (storage names, read or written), ``sizes`` (sympy symbols), then the thread
    count."""

    name: str
    source: str
    pointers: list[str]
    sizes: list[sympy.Symbol]
    written: set[str]


class KernelWriter:
    def __init__(self, kernel: Kernel, dtypes: dict[str, torch.dtype]) -> None:
        self.kernel = kernel
        self.dtypes = dtypes  # storage name -> dtype
        self.printer = IndexPrinter()
        self.pointers: dict[str, None] = {}
        self.written: set[str] = set()
        self._tmp = 0
        self.members = {m.buffer.name: m for m in kernel.members}
        self.columns = self._use_columns()
        self.local_ref: dict[str, str] = {}  # member -> C expression of its current value
        self.row_values: set[str] = set()  # ... those of them that hold one value per row
        # (head lines, loop variables) of a parallel loop whose body generate() outlines
        self.outlined: tuple[int, list[str]] | None = None
        # (loop variable, constant): the outlined body is called with the constant where the
        # variable equals it, a copy the compiler compiles for that value (_outline)
        self.specialized: tuple[str, str] | None = None
        # values a reduction loop stores for a later member to read (_plan_scratch)
        self.scratch: dict[int, tuple[Value, Member]] = {}
        self.scratch_stored: dict[int, str] = {}  # ... and where each one went

    def tmp(self) -> str:
        self._tmp += 1
        return f"t{self._tmp - 1}"

    def index(self, e: Any) -> str:
        return self.printer(e)

    def pointer(self, name: str) -> str:
        self.pointers.setdefault(name)
        return f"p_{name}"

    def load(self, body: BodyWriter, name: str, offset: Any) -> str:
        member = self.members.get(name)
        if member is not None and member.kind in (REDUCTION, OUTER) and name in self.local_ref:
            return self.local_ref[name]
        off = self.index(offset)
        if (name, off) in body.stored:
            return body.stored[(name, off)]
        dtype = self.dtypes[name]
        raw = f"{self.pointer(name)}[{off}]"
        if dtype == torch.bfloat16:
            expr = f"kiln_bf16_to_float({raw})"
        elif dtype == torch.float16:
            expr = f"(float)({raw})"
        else:
            expr = raw
        return body.define(("load", name, off), ir.compute_dtype(dtype), expr)

    def store(self, body: BodyWriter, member: Member, value: str) -> None:
        name = member.buffer.name
        off = self.index(self.kernel.store_offset(member))
        dtype = member.buffer.dtype
        self.written.add(name)
        if dtype == torch.bfloat16:
            value = f"kiln_float_to_bf16({value})"
        elif dtype == torch.float16:
            value = f"(_Float16)({value})"
        elif dtype == torch.bool:
            value = f"(bool)({value})"
        body.line(f"{self.pointer(name)}[{off}] = {value};")
        # a later member of this kernel reads the stored value back as a load would: in
        # the compute dtype, rounded to the buffer's dtype
        if dtype == torch.bfloat16:
            value = body.define(("reload", value), torch.float32,
                                f"kiln_bf16_to_float({value})")
        elif dtype == torch.float16:
            value = body.define(("reload", value), torch.float32, f"(float)({value})")
        body.stored[(name, off)] = value

    # --- structure ----------------------------------------------------------------------------

    def _use_columns(self) -> bool:
        k = self.kernel
        if k.rdims != (0,) or len(k.dims) != 2:
            return False
        reductions = [m for m in k.members if m.kind == REDUCTION]
        if not reductions or any(m.buffer.body.reduction_type.startswith("arg")
                                 for m in reductions):
            return False
        x0, x1 = loop_var(0), loop_var(1)
        offsets = [off for m in reductions for _, off in ir.loads(k.value(m))]
        if not offsets:
            return False
        contiguous = sum(1 for off in offsets if sympy.expand(off.subs(x1, x1 + 1) - off) == 1
                         and sympy.expand(off.subs(x0, x0 + 1) - off) != 1)
        return contiguous * 2 >= len(offsets)

    def stages(self) -> list[tuple[str, list[Member]]]:
        """Consecutive members of one kind that can share a loop."""
        out: list[tuple[str, list[Member]]] = []
        for m in self.kernel.members:
            if out and out[-1][0] == m.kind and not self._reads_any(m, out[-1][1]):
                out[-1][1].append(m)
            else:
                out.append((m.kind, [m]))
        return out

    def _reads_any(self, m: Member, group: list[Member]) -> bool:
        if m.kind == FULL:
            return False
        names = {g.buffer.name for g in group}
        return any(name in names for name, _ in ir.loads(self.kernel.value(m)))

    def generate(self) -> KernelSource:
        k = self.kernel
        dims_c = [self.index(d) for d in k.dims]
        numel = ir.product(k.dims)
        if self.columns:
            from kiln.codegen.cpp_columns import column_loops  # it builds on this module

            body = column_loops(self, dims_c)
        else:
            body = self._rows(dims_c, numel)
        sizes = sorted(self.printer.symbols, key=lambda s: s.name)
        params = []
        for name in self.pointers:
            const = "" if name in self.written else "const "
            params.append(f"{const}{ctype(self.dtypes[name])}* __restrict p_{name}")
        params += [f"int64_t {s.name}" for s in sizes]
        prefix = ""
        if self.outlined is not None:
            prefix, body = self._outline(body, params, [f"p_{n}" for n in self.pointers]
                                         + [s.name for s in sizes])
        params.append("int kiln_threads")
        source = prefix + f'extern "C" void {k.name}({", ".join(params)}) {{\n' + \
            "\n".join(body) + "\n}\n"
        return KernelSource(k.name, source, list(self.pointers), sizes, set(self.written))

    def _outline(self, body: list[str], params: list[str],
                 args: list[str]) -> tuple[str, list[str]]:
        """Moves the body of the parallel loop into an always-inlined function of its own.

        OpenMP outlines a parallel region into a function that gets the pointers through a
        struct, and ``__restrict`` is lost on the way: gcc can no longer hoist a load that
        does not change along the inner loop (``p_sum[x0]``) above a store, and that inner
        loop stays scalar (softmax's backward ran 3.5x slower). The pointers are restrict
        parameters of the inlined function again, and the loop vectorizes.

        With ``specialized`` (a column tile's width), the last head line defines that loop
        variable and the body is called with the constant where the variable equals it:
        inlined there, its inner loops have a constant trip count, which gcc unrolls
        (var(0) ran 1.6x faster)."""
        n_head, loop_vars = self.outlined
        head, inner = body[:n_head], body[n_head:-1]  # (body[-1] closes the loop)
        name = f"{self.kernel.name}_body"
        all_params = [f"int64_t {v}" for v in loop_vars] + params
        function = (f"static inline __attribute__((always_inline)) void {name}("
                    f"{', '.join(all_params)}) {{\n"
                    + "\n".join(line.removeprefix("    ") for line in inner) + "\n}\n\n")
        call_args = loop_vars + args
        if self.specialized is None:
            head[-1] = head[-1].removesuffix(" {")
            indent = head[-1][:len(head[-1]) - len(head[-1].lstrip())] + "    "
            return function, head + [f"{indent}{name}({', '.join(call_args)});"]
        var, value = self.specialized
        indent = head[-1][:len(head[-1]) - len(head[-1].lstrip())]
        constant = [value if a == var else a for a in call_args]
        return function, head + [f"{indent}if ({var} == {value}) {name}({', '.join(constant)});",
                                 f"{indent}else {name}({', '.join(call_args)});", body[-1]]

    def _parallel_clause(self, numel: ir.Expr) -> str | None:
        threshold = config.cpp_parallel_threshold
        if numel.is_Integer:
            return "" if int(numel) >= threshold else None
        return f" if({self.index(numel)} >= {threshold})"

    # rows ---------------------------------------------------------------------------------------

    def _rows(self, dims_c: list[str], numel: ir.Expr) -> list[str]:
        k = self.kernel
        outer = k.outer_positions
        inner = list(k.rdims)
        if not k.rdims and k.dims:
            outer, inner = list(range(len(k.dims) - 1)), [len(k.dims) - 1]
        lines: list[str] = []
        clause = self._parallel_clause(numel)
        indent = "    "
        if outer:
            if clause is not None:
                collapse = f" collapse({len(outer)})" if len(outer) > 1 else ""
                lines.append(f"    #pragma omp parallel for{collapse} "
                             f"num_threads(kiln_threads){clause}")
                self.outlined = (1 + len(outer), [f"x{d}" for d in outer])
            for d in outer:
                lines.append(f"{indent}for (int64_t x{d} = 0; x{d} < {dims_c[d]}; x{d}++)")
            lines[-1] += " {"
            indent += "    "
        parallel_inner = clause if not outer else None
        stages = self.stages()
        self.scratch = self._plan_scratch(inner, stages) if outer else {}
        for kind, members in stages:
            if kind == OUTER:
                w = BodyWriter(self, indent)
                for m in members:
                    value = w.emit(k.value(m))
                    self.local_ref[m.buffer.name] = value
                    self.row_values.add(value)
                    if m.buffer.name not in k.local:
                        self.store(w, m, value)
                lines += w.lines
            elif kind == FULL:
                lines += self._inner_loop(indent, inner, dims_c, members, None, parallel_inner)
            else:
                lines += reduction_rows(self, indent, inner, dims_c, members, parallel_inner)
        if outer:
            lines.append("    }")
        return lines

    def _plan_scratch(self, inner: list[int], stages: list[tuple[str, list[Member]]]
                      ) -> dict[int, tuple[Value, Member]]:
        """Expensive values a reduction loop computes that a later pointwise member of the
        row computes again (softmax's ``exp(x - max)``: summed, then divided by the sum).
        The reduction loop stores each one where that member's output goes, and the member
        reads it back instead of calling libm again, as eager's softmax does. Only for rows
        small enough to stay in cache between the two loops, and outputs in the value's
        own dtype (no rounding in between)."""
        k = self.kernel
        row = ir.product([k.dims[d] for d in inner])
        if not (row.is_Integer and int(row) <= SCRATCH_ROW_LIMIT):
            return {}
        reduced: dict[int, Value] = {}
        plan: dict[int, tuple[Value, Member]] = {}
        for kind, members in stages:
            if kind == REDUCTION:
                reduced.update((id(v), v) for m in members for v in ir.walk(k.value(m))
                               if v.op in ir.EXPENSIVE_OPS)
            elif kind == FULL and reduced:
                for m in members:
                    if m.buffer.name in k.local or \
                            m.buffer.dtype not in (torch.float32, torch.float64):
                        continue
                    shared = [v for v in ir.walk(k.value(m)) if id(v) in reduced
                              and id(v) not in plan and v.dtype == m.buffer.dtype]
                    if shared:  # the last: the one computed from the others
                        plan[id(shared[-1])] = (shared[-1], m)
        return plan

    def _store_scratch(self, w: BodyWriter) -> None:
        """In a reduction loop: the planned values it computed, stored (see _plan_scratch)."""
        for key, (_, m) in self.scratch.items():
            if key in w.memo and key not in self.scratch_stored:
                off = self.index(self.kernel.store_offset(m))
                w.line(f"{self.pointer(m.buffer.name)}[{off}] = {w.memo[key][1]};")
                self.written.add(m.buffer.name)
                self.scratch_stored[key] = f"{self.pointer(m.buffer.name)}[{off}]"

    def _loop_header(self, indent: str, inner: list[int], dims_c: list[str],
                     pragma: str | None) -> tuple[list[str], str]:
        lines = []
        if pragma is not None:
            lines.append(f"{indent}{pragma}")
        for d in inner:
            lines.append(f"{indent}for (int64_t x{d} = 0; x{d} < {dims_c[d]}; x{d}++)")
        if inner:
            lines[-1] += " {"
            return lines, indent + "    "
        lines.append(indent + "{")
        return lines, indent + "    "

    def _inner_loop(self, indent: str, inner: list[int], dims_c: list[str],
                    members: list[Member], reduction: str | None,
                    parallel: str | None) -> list[str]:
        pragma = self._pragma(inner, reduction, parallel)
        lines, body_indent = self._loop_header(indent, inner, dims_c, pragma)
        w = BodyWriter(self, body_indent, in_inner_loop=bool(inner))
        for key, expr in self.scratch_stored.items():
            v, m = self.scratch[key]
            if m in members:  # read back what the reduction loop stored
                w.memo[key] = (v, w.define(("scratch", expr), v.dtype, expr))
        for m in members:
            self.store(w, m, w.emit(self.kernel.value(m)))
        return lines + w.lines + [indent + "}"]

    def _pragma(self, inner: list[int], reduction: str | None, parallel: str | None) -> str:
        red = f" {reduction}" if reduction else ""
        collapse = f" collapse({len(inner)})" if len(inner) > 1 and parallel is not None else ""
        if not inner:
            return None  # type: ignore[return-value]
        if parallel is not None:
            return f"#pragma omp parallel for simd{collapse}{red} " \
                   f"num_threads(kiln_threads){parallel}"
        return f"#pragma omp simd{red}"


def generate_kernel(kernel: Kernel, dtypes: dict[str, torch.dtype]) -> KernelSource:
    return KernelWriter(kernel, dtypes).generate()
