"""kiln/codegen/printers.py: torch's size functions as Python (evaluated here against
sympy's own evaluation) and as C++ (through dynamic graphs that compile and run)."""

from __future__ import annotations

import pytest
import sympy
import torch
import torch.utils._sympy.functions as symfn

import kiln
from kiln.codegen.printers import IndexPrinter, pyexpr
from kiln.counters import counters

s0, s1 = sympy.symbols("s0 s1", integer=True, positive=True)

EXPRESSIONS = [
    symfn.FloorDiv(s0 + 1, 2), symfn.FloorDiv(s0 * s1, 3), symfn.CleanDiv(s0 * 4, 2),
    symfn.ModularIndexing(s0 + 5, 2, 3), symfn.PythonMod(s0 - 7, 3), symfn.Mod(s0, 3),
    symfn.Max(1, s0 - 4), symfn.Min(s0, s1), symfn.PowByNatural(s0, 2),
    symfn.FloorToInt(symfn.ToFloat(s0) * 1.5), symfn.CeilToInt(symfn.ToFloat(s0) / 4),
    symfn.TruncToInt(symfn.FloatTrueDiv(s0, s1)), symfn.CeilDiv(s0, 4),
]


@pytest.mark.parametrize("e", EXPRESSIONS, ids=str)
def test_python_source_evaluates_as_sympy(e):
    source = pyexpr(e)
    for v0, v1 in ((1, 1), (5, 3), (12, 7), (100, 9)):
        want = e.subs({s0: v0, s1: v1})
        assert eval(source, {"s0": v0, "s1": v1}) == pytest.approx(float(want)), source


@pytest.mark.parametrize("e", EXPRESSIONS, ids=str)
def test_cpp_printer_knows_every_size_function(e):
    printer = IndexPrinter()
    assert printer(e)
    assert printer.symbols <= {s0, s1}


def test_unknown_function_is_not_implemented():
    with pytest.raises(NotImplementedError):
        pyexpr(sympy.Function("opaque")(s0))
    with pytest.raises(NotImplementedError):
        IndexPrinter()(sympy.Function("opaque")(s0))


DYNAMIC = {
    "stride2": lambda x: x[::2] * 2,
    "stride3_sum": lambda x: (x[1::3] + 1).sum(0),
    "view_half": lambda x: x.view(-1, 2).sum(-1),
    "reshape_t": lambda x: x.reshape(x.shape[0] // 2, -1).t() + 1,
    "chunk": lambda x: sum(c.sum() for c in x.chunk(3)),
    "halves": lambda x: x[: x.shape[0] // 2] - x[x.shape[0] // 2:][: x.shape[0] // 2],
}


@pytest.mark.parametrize("name", list(DYNAMIC))
def test_dynamic_graphs_with_size_functions_compile(name):
    # sizes such as (s0 + 1)//2 used to make the graph run op by op
    fn = DYNAMIC[name]
    counters.clear()
    compiled = kiln.compile(fn, dynamic=True)
    for n in (8, 12, 18):
        x = torch.randn(n, 6)
        torch.testing.assert_close(compiled(x), fn(x))
    assert counters["codegen"]["graphs_compiled"] == 1
    assert counters["codegen"]["graphs_run_by_aten"] == 0
