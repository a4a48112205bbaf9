"""kiln.aot.python_runner: aten graphs run as plain Python functions give the GraphModule's
results, free their inputs, and take every kind of argument an aten graph holds."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.fx.experimental.proxy_tensor import make_fx

from kiln.aot import aot_function
from kiln.aot.python_runner import boxed_python, python_function


def _aten_graph(fn, *args, mode="real"):
    return make_fx(fn, tracing_mode=mode)(*args)


def test_same_results_as_the_graph_module():
    def fn(x, w):
        y = torch.nn.functional.layer_norm(x, (4,)) @ w
        z = y.to(torch.float64).sum(dim=-1, keepdim=True)
        return [y.transpose(0, 1).contiguous(), z, torch.zeros(2, dtype=torch.int64), None]

    x, w = torch.randn(3, 4), torch.randn(4, 4)
    gm = _aten_graph(fn, x, w)
    run = python_function(gm)
    assert run._boxed_call
    expected = gm(x, w)
    actual = run([x, w])
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        if e is None:
            assert a is None
        else:
            torch.testing.assert_close(a, e)
            assert a.dtype == e.dtype and a.stride() == e.stride()
    # ops are called through their C++ entry points, not OpOverload.__call__
    assert "torch.ops" not in run._kiln_source


def test_inputs_list_is_cleared_and_values_dropped_after_last_use():
    def fn(x):
        a = x.sin()
        b = a.cos()
        return [b * 2]

    gm = _aten_graph(fn, torch.randn(3))
    run = python_function(gm)
    args = [torch.randn(3)]
    run(args)
    assert args == []
    source = run._kiln_source
    assert "= None" in source  # x, a and b are dropped once used


def test_tensor_constants():
    const = torch.arange(3.0)

    def fn(x):
        return [x * const]

    gm = _aten_graph(fn, torch.randn(5, 3))
    assert any(n.op == "get_attr" for n in gm.graph.nodes)
    x = torch.randn(5, 3)
    torch.testing.assert_close(python_function(gm)([x])[0], x * const)


def test_symbolic_sizes():
    def fn(x):
        return [x.view(-1) + x.shape[0] * x.shape[1]]

    gm = _aten_graph(fn, torch.randn(5, 3), mode="symbolic")
    run = python_function(gm)
    for rows in (5, 7):
        x = torch.randn(rows, 3)
        torch.testing.assert_close(run([x])[0], x.view(-1) + rows * 3)


def test_unhandled_graphs_run_the_graph_module():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            return self.lin(x)

    gm = torch.fx.symbolic_trace(M())  # call_module nodes
    run = python_function(gm)
    x = torch.randn(1, 2)
    torch.testing.assert_close(run([x]), gm(x))


def test_as_aot_compilers_forward_and_backward():
    def fn(x, w):
        return (x @ w).relu().sum()

    x, w = torch.randn(3, 4, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    compiled = aot_function(fn, boxed_python)
    out = compiled(x, w)
    out.backward()
    gx, gw = x.grad, w.grad
    x.grad = w.grad = None
    fn(x, w).backward()
    torch.testing.assert_close(out, fn(x, w))
    torch.testing.assert_close(gx, x.grad)
    torch.testing.assert_close(gw, w.grad)
