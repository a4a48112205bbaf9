"""capture/shapes.py on its own: the frame-state merge (torch's FrameStateSizeEntry rules),
which sizes a compile makes symbolic, and guard rendering."""

import sympy
import torch
from torch.fx.experimental.symbolic_shapes import DimDynamic

import kiln
from kiln.capture.shapes import Dynamism, FrameState, render
from kiln.capture.sources import LocalSource

DUCK, DYNAMIC = DimDynamic.DUCK, DimDynamic.DYNAMIC


def test_merge_marks_only_the_sizes_that_changed():
    state = FrameState()
    assert state.merge_tensor("L['x']", (2, 3)) == [False, False]
    assert state.merge_tensor("L['x']", (2, 3)) == [False, False]
    assert state.merge_tensor("L['x']", (4, 3)) == [True, False]
    assert state.merge_tensor("L['x']", (2, 3)) == [True, False]  # dynamic stays dynamic
    assert state.merge_tensor("L['x']", (2, 3, 4)) == [True, True, True]  # a rank change


def test_a_source_that_switches_kind_is_dynamic_as_a_whole():
    state = FrameState()
    assert state.merge_scalar("L['n']", 3) is False
    assert state.merge_scalar("L['n']", 3) is False
    assert state.merge_scalar("L['n']", 4) is True
    assert state.merge_tensor("L['n']", (5,)) == [True]
    other = FrameState()
    other.merge_tensor("L['y']", (5,))
    assert other.merge_scalar("L['y']", 5) is True


def test_dynamism_policy():
    """Changed or marked sizes get symbols of their own (DYNAMIC); under dynamic=True equal
    sizes share one (DUCK); None is static."""
    x = torch.randn(3, 4)
    source = LocalSource("x")
    assert Dynamism(dynamic=True).tensor_dims(source, x) == [DUCK, DUCK]
    assert Dynamism(dynamic=False).tensor_dims(source, x) == [None, None]
    automatic = Dynamism()
    assert automatic.tensor_dims(source, x) == [None, None]
    assert automatic.tensor_dims(source, torch.randn(5, 4)) == [DYNAMIC, None]
    with kiln.config.patch(automatic_dynamic_shapes=False):
        assert automatic.tensor_dims(source, torch.randn(6, 4)) == [None, None]
    param = torch.nn.Parameter(torch.randn(3, 4))
    assert Dynamism(dynamic=True).tensor_dims(source, param) == [None, None]
    marked = torch.randn(3, 4)
    kiln.mark_dynamic(marked, 1)
    assert Dynamism(dynamic=False).tensor_dims(source, marked) == [None, DYNAMIC]
    static = torch.randn(3, 4)
    kiln.mark_static(static, 0)
    assert Dynamism(dynamic=True).tensor_dims(source, static) == [None, DUCK]


def test_a_mark_makes_the_dim_dynamic_for_later_compiles():
    state = FrameState()
    dynamism = Dynamism(state)
    marked = torch.randn(3, 4)
    kiln.mark_dynamic(marked, 0)
    assert dynamism.tensor_dims(LocalSource("x"), marked) == [DYNAMIC, None]
    assert dynamism.tensor_dims(LocalSource("x"), torch.randn(3, 4)) == [DYNAMIC, None]


def test_int_policy():
    source = LocalSource("n")
    automatic = Dynamism()
    assert automatic.int_is_dynamic(source, 3) is False
    assert automatic.int_is_dynamic(source, 4) is True
    with kiln.config.patch(specialize_int=True):
        assert Dynamism(dynamic=True).int_is_dynamic(source, 4) is False


def test_render_uses_source_names():
    s0, s1 = sympy.symbols("s0 s1", integer=True, positive=True)
    names = {s0: "L['x'].size()[0]", s1: "L['n']"}
    assert render(sympy.Gt(s0, 5), names) == "L['x'].size()[0] > 5"
    assert render(sympy.Eq(s0 * s1, 12), names) == "L['x'].size()[0]*L['n'] == 12"
    assert render(sympy.Ne(s0 + 1, s1), names) == "L['x'].size()[0] + 1 != L['n']"


def test_rendered_guards_evaluate_like_sympy():
    """Each rendered expression, run as Python, gives sympy's value: operator precedence
    and torch's sympy functions are printed faithfully (a wrong bracket is a wrong guard)."""
    import itertools
    import math

    from torch.utils._sympy.functions import (
        CeilToInt,
        FloatTrueDiv,
        FloorDiv,
        FloorToInt,
        IntTrueDiv,
        Max,
        Min,
        Mod,
        PythonMod,
        RoundToInt,
        ToFloat,
        TruncToInt,
    )

    a, b = sympy.symbols("s0 s1", integer=True, positive=True)
    names = {a: "A", b: "B"}
    exprs = [
        sympy.Eq(FloorDiv(a + 1, 2), 3), sympy.Eq(FloorDiv(a + b - 1, b), 2),
        sympy.Ge(a - FloorDiv(a + 1, 2), 0), sympy.Eq(PythonMod(a * b + 1, 3), 1),
        sympy.Eq(Mod(a + 2, b), 0), sympy.Ne(a, Max(1, FloorDiv(a, 2))),
        sympy.Lt(Min(a, b) * 2, a + b), sympy.Gt(ToFloat(a) * 0.5, 1.0),
        sympy.Eq(TruncToInt(IntTrueDiv(a, 4)), 1), sympy.Eq(RoundToInt(FloatTrueDiv(
            ToFloat(a), 4.0)), 2), sympy.Le(FloorToInt(ToFloat(a) / 3), CeilToInt(
                ToFloat(b) / 3)), sympy.Eq((a + 1) ** 2, b * b + 2 * b + 1),
        sympy.And(sympy.Ge(a, 3), sympy.Le(a - b, 2)), sympy.Or(sympy.Eq(a, 4),
                                                                 sympy.Eq(b, 4)),
        sympy.Eq(-a + 2 * b - FloorDiv(a, 3), 5),
    ]
    for expr, (x, y) in itertools.product(exprs, [(2, 3), (4, 4), (5, 2), (9, 7)]):
        expected = bool(expr.xreplace({a: sympy.Integer(x), b: sympy.Integer(y)}))
        assert eval(render(expr, names), {"A": x, "B": y, "math": math}) == expected, (
            expr, render(expr, names), x, y)


def test_backend_specializing_a_size_is_guarded():
    """What the backend assumes about a symbolic size (here it reads it as an int, as an
    AOT trace that unrolls a loop would) is guarded, as torch guards after the backend:
    another size recompiles instead of running a graph made for the first."""
    seen = []

    def backend(gm, example_inputs):
        rows = int(example_inputs[0].shape[0])  # specializes the symbol
        seen.append(rows)

        def run(x):
            assert x.shape[0] == rows, "graph specialized for another size"
            return gm.forward(x)
        return run

    def fn(x):
        return x * 2

    compiled = kiln.compile(fn, backend=backend, dynamic=True)
    for rows in (3, 5, 3):
        x = torch.randn(rows, 2)
        torch.testing.assert_close(compiled(x), x * 2)
    assert seen == [3, 5]
