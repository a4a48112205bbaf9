"""Size and index expressions (sympy) as C++ and as Python source.

Two kinds of functions reach the printers: kiln's own index arithmetic (``ir.FloorDiv``,
``ir.ModularIndexing``: non-negative operands, plain C ``/`` and ``%`` in inner loops), and
the functions of torch's symbolic shapes (``torch.utils._sympy.functions``) that sizes of a
dynamic graph are made of: ``(s0 + 1)//2`` of ``x[::2]``, ``Max(1, s0)`` of a broadcast,
``FloorToInt(2.0*ToFloat(s0))`` of an interpolation. Their semantics are Python's (floor
division, a remainder with the divisor's sign), which the C side gets from the prelude's
``kiln_floordiv`` / ``kiln_remainder``. An expression of neither kind raises
NotImplementedError: compile_graph then runs the graph op by op.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sympy
import torch.utils._sympy.functions as symfn

from kiln.codegen import ir

LOOP_NAMES = {f"{p}{i}" for p in ("x", "r") for i in range(64)}


class IndexPrinter:
    """sympy index expressions as int64 C arithmetic; records the size symbols used."""

    def __init__(self) -> None:
        self.symbols: set[sympy.Symbol] = set()

    def __call__(self, e: Any) -> str:
        e = sympy.sympify(e)
        if e.is_Integer:
            return f"INT64_C({int(e)})" if abs(int(e)) > 2**31 - 1 else str(int(e))
        if e.is_Float or e.is_Rational:
            return repr(float(e))
        if e.is_Symbol:
            if e.name not in LOOP_NAMES:
                self.symbols.add(e)
            return e.name
        if e is sympy.true or e is sympy.false:
            return "true" if e is sympy.true else "false"
        a = e.args
        if isinstance(e, sympy.Add):
            return "(" + " + ".join(self(x) for x in a) + ")"
        if isinstance(e, sympy.Mul):
            return "(" + " * ".join(self(x) for x in a) + ")"
        if isinstance(e, ir.FloorDiv):
            return f"({self(a[0])} / {self(a[1])})"
        if isinstance(e, ir.ModularIndexing):
            return f"({self(a[0])} % {self(a[1])})"
        if isinstance(e, sympy.Pow) and e.exp.is_Integer and int(e.exp) > 0:
            return "(" + " * ".join([self(e.base)] * int(e.exp)) + ")"
        if isinstance(e, (sympy.Max, symfn.Max)):
            return self._fold("std::max<int64_t>", a)
        if isinstance(e, (sympy.Min, symfn.Min)):
            return self._fold("std::min<int64_t>", a)
        if isinstance(e, symfn.FloorDiv):
            return f"kiln_floordiv<int64_t>({self(a[0])}, {self(a[1])})"
        if isinstance(e, symfn.CleanDiv):
            return f"({self(a[0])} / {self(a[1])})"
        if isinstance(e, symfn.CeilDiv):
            return f"(-kiln_floordiv<int64_t>(-{self(a[0])}, {self(a[1])}))"
        if isinstance(e, symfn.ModularIndexing):
            return (f"kiln_remainder<int64_t>(kiln_floordiv<int64_t>({self(a[0])}, "
                    f"{self(a[1])}), {self(a[2])})")
        if isinstance(e, symfn.PythonMod):
            return f"kiln_remainder<int64_t>({self(a[0])}, {self(a[1])})"
        if isinstance(e, symfn.Mod):
            return f"({self(a[0])} % {self(a[1])})"
        if isinstance(e, symfn.PowByNatural):
            return f"((int64_t)std::pow((double){self(a[0])}, (double){self(a[1])}))"
        if isinstance(e, symfn.Identity):
            return self(a[0])
        if isinstance(e, sympy.Abs):
            return f"std::abs({self(a[0])})"
        if isinstance(e, symfn.Where):
            return f"({self(a[0])} ? {self(a[1])} : {self(a[2])})"
        if isinstance(e, symfn.ToFloat):
            return f"((double)({self(a[0])}))"
        if isinstance(e, (symfn.FloatTrueDiv, symfn.IntTrueDiv)):
            return f"((double)({self(a[0])}) / (double)({self(a[1])}))"
        if isinstance(e, symfn.FloorToInt):
            return f"((int64_t)std::floor({self(a[0])}))"
        if isinstance(e, symfn.CeilToInt):
            return f"((int64_t)std::ceil({self(a[0])}))"
        if isinstance(e, symfn.TruncToInt):
            return f"((int64_t)({self(a[0])}))"
        if isinstance(e, symfn.RoundToInt):
            return f"((int64_t)std::nearbyint({self(a[0])}))"
        if isinstance(e, sympy.core.relational.Relational):
            return f"({self(e.lhs)} {e.rel_op} {self(e.rhs)})"
        raise NotImplementedError(f"index expression {e} ({type(e).__name__})")

    def _fold(self, fn: str, args: Sequence[Any]) -> str:
        out = self(args[0])
        for a in args[1:]:
            out = f"{fn}({out}, {self(a)})"
        return out


def pyexpr(e: Any) -> str:
    """A sympy size expression as Python source (of the wrapper, which reads sizes)."""
    e = sympy.sympify(e)
    if e.is_Integer:
        return str(int(e))
    if e.is_Float or e.is_Rational:
        return repr(float(e))
    if e.is_Symbol:
        return e.name
    if e is sympy.true or e is sympy.false:
        return str(bool(e))
    a = [pyexpr(x) for x in e.args]
    if isinstance(e, sympy.Add):
        return "(" + " + ".join(a) + ")"
    if isinstance(e, sympy.Mul):
        return "(" + " * ".join(a) + ")"
    if isinstance(e, (ir.FloorDiv, symfn.FloorDiv, symfn.CleanDiv)):
        return f"({a[0]} // {a[1]})"
    if isinstance(e, ir.ModularIndexing):
        return f"({a[0]} % {a[1]})"
    if isinstance(e, symfn.ModularIndexing):
        return f"(({a[0]} // {a[1]}) % {a[2]})"
    if isinstance(e, symfn.CeilDiv):
        return f"(-((-{a[0]}) // {a[1]}))"
    if isinstance(e, (symfn.Mod, symfn.PythonMod)):
        return f"({a[0]} % {a[1]})"
    if isinstance(e, (sympy.Max, symfn.Max)):
        return "max(" + ", ".join(a) + ")"
    if isinstance(e, (sympy.Min, symfn.Min)):
        return "min(" + ", ".join(a) + ")"
    if isinstance(e, sympy.Pow) and e.exp.is_Integer:
        return f"({pyexpr(e.base)} ** {int(e.exp)})"
    if isinstance(e, symfn.PowByNatural):
        return f"({a[0]} ** {a[1]})"
    if isinstance(e, symfn.Identity):
        return a[0]
    if isinstance(e, sympy.Abs):
        return f"abs({a[0]})"
    if isinstance(e, symfn.Where):
        return f"({a[1]} if {a[0]} else {a[2]})"
    if isinstance(e, symfn.ToFloat):
        return f"float({a[0]})"
    if isinstance(e, (symfn.FloatTrueDiv, symfn.IntTrueDiv)):
        return f"({a[0]} / {a[1]})"
    if isinstance(e, symfn.FloorToInt):
        return f"int({a[0]} // 1)"
    if isinstance(e, symfn.CeilToInt):
        return f"(-int((-{a[0]}) // 1))"
    if isinstance(e, symfn.TruncToInt):
        return f"int({a[0]})"
    if isinstance(e, symfn.RoundToInt):
        return f"round({a[0]})"
    if isinstance(e, sympy.core.relational.Relational):
        return f"({pyexpr(e.lhs)} {e.rel_op} {pyexpr(e.rhs)})"
    raise NotImplementedError(f"size expression {e} ({type(e).__name__})")


__all__ = ["IndexPrinter", "LOOP_NAMES", "pyexpr"]
