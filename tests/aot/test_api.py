"""kiln.aot's entry points: aot_function / aot_module / aot_module_simplified, the compilers
and boxed calling convention, aot_export_joint_simple, deduplication, the double-backward
error, dynamic shapes through the aot_eager backend."""

import unittest

import pytest
import torch
import torch.nn as nn

import kiln
import kiln.aot
from kiln.aot import aot_function, aot_module, aot_module_simplified, make_boxed_func, nop


def _grads(fn, *args):
    out = fn(*args)
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    return out, torch.autograd.grad(out.sum(), leaves)


def recording(graphs):
    def compiler(gm, example_inputs):
        graphs.append(gm)
        return gm
    return compiler


def test_aot_function_forward_and_backward_graphs():
    def f(x, w):
        return (x @ w).tanh() * 2

    graphs = []
    compiled = aot_function(f, recording(graphs))
    x, w = torch.randn(3, 4), torch.randn(4, 5, requires_grad=True)
    out, grads = _grads(compiled, x, w)
    expected, expected_grads = _grads(f, x, w)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grads, expected_grads)
    forward, backward = graphs
    assert [n.name for n in forward.graph.nodes if n.op == "placeholder"] == \
        ["primals_1", "primals_2"]
    assert any(n.name.startswith("tangents") for n in backward.graph.nodes)
    assert all(n.target is not torch.ops.aten.add_.Tensor for g in graphs for n in g.graph.nodes)


def test_inference_when_nothing_needs_a_gradient():
    graphs = []
    compiled = aot_function(lambda x: x.sin() + 1, recording(graphs))
    with torch.no_grad():
        x = torch.randn(3, requires_grad=True)
        torch.testing.assert_close(compiled(x), x.sin() + 1)
    assert len(graphs) == 1  # one graph, no backward


def test_input_mutation_is_functionalized_and_applied():
    def f(x, y):
        x.mul_(2)
        return x + y

    graphs = []
    compiled = aot_function(f, recording(graphs))
    x, y = torch.ones(3), torch.randn(3, requires_grad=True)
    out = compiled(x, y)
    torch.testing.assert_close(x, torch.full((3,), 2.0))
    torch.testing.assert_close(out, 2 + y)
    assert all(not str(n.target).endswith("_.Tensor") for g in graphs for n in g.graph.nodes)


def test_aliased_outputs_stay_aliased():
    def f(x):
        return x.view(-1), x.t(), x * 2

    compiled = aot_function(f, nop)
    x = torch.randn(2, 3, requires_grad=True)
    flat, transposed, doubled = compiled(x)
    assert flat._base is x or flat.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    assert transposed.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
    torch.testing.assert_close(transposed, x.t())
    (flat.sum() + transposed.sum() + doubled.sum()).backward()
    torch.testing.assert_close(x.grad, torch.full((2, 3), 4.0))


def test_boxed_compilers_and_nop():
    calls = []

    def boxed(gm, example_inputs):
        def run(args):
            calls.append(len(args))
            return gm(*args)
        return make_boxed_func(lambda *a: run(list(a)))

    compiled = aot_function(lambda x: x.cos(), boxed)
    x = torch.randn(4, requires_grad=True)
    torch.testing.assert_close(compiled(x), x.cos())
    assert calls == [1]
    assert kiln.aot.nop.__name__ == "nop"


def test_aot_module_lifts_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 2))
    compiled = aot_module(model, nop)
    x = torch.randn(5, 4)
    out = compiled(x)
    torch.testing.assert_close(out, model(x))
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    torch.testing.assert_close(grads, [p.grad for p in model.parameters()])


def test_aot_module_simplified_on_a_graph_module_with_params():
    torch.manual_seed(0)
    gm = torch.fx.symbolic_trace(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    x = torch.randn(2, 3, requires_grad=True)
    forward = aot_module_simplified(gm, [x], nop)
    out = forward(x)
    torch.testing.assert_close(out, gm(x))
    out.sum().backward()
    assert all(p.grad is not None for p in gm.parameters()) and x.grad is not None


def test_duplicate_inputs_are_passed_once():
    def f(a, b):
        return a * b + a

    graphs = []
    compiled = aot_function(f, recording(graphs))
    x = torch.randn(3, requires_grad=True)
    out = compiled(x, x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(out, x * x + x)
    torch.testing.assert_close(grad, 2 * x + 1)
    assert len([n for n in graphs[0].graph.nodes if n.op == "placeholder"]) == 1


def test_debug_assert_checks_the_duplicates():
    with kiln.config.patch(debug_assert=True):
        compiled = aot_function(lambda a, b: a + b, nop)
        x = torch.randn(3)
        compiled(x, x)
        with pytest.raises(AssertionError, match="was the same tensor as input 0"):
            compiled(x, torch.randn(3))


def test_double_backward_raises():
    compiled = kiln.compile(lambda x: x.sin().exp(), backend="aot_eager")
    x = torch.tensor(1.0, requires_grad=True)
    (gx,) = torch.autograd.grad(compiled(x), x, create_graph=True)
    with pytest.raises(RuntimeError, match=kiln.aot.DOUBLE_BACKWARD_ERROR):
        torch.autograd.grad(gx, x)


def test_grad_mode_left_by_the_function():
    def f(x):
        y = x * 2
        torch.set_grad_enabled(False)
        return y

    compiled = aot_function(f, nop)
    try:
        out = compiled(torch.randn(2, requires_grad=True))
        assert not torch.is_grad_enabled()
        assert out.requires_grad
    finally:
        torch.set_grad_enabled(True)


def test_aot_export_joint_simple():
    def f(x, w):
        return (x @ w,)

    x, w = torch.randn(2, 3), torch.randn(3, 4, requires_grad=True)
    forward = kiln.aot.aot_export_joint_simple(f, [x, w], trace_joint=False)
    torch.testing.assert_close(forward(x, w)[0], x @ w)
    joint = kiln.aot.aot_export_joint_simple(f, [x, w], trace_joint=True)
    assert any(n.name.startswith("tangents") for n in joint.graph.nodes)
    with pytest.raises(kiln.aot.AotUnsupported, match="input mutations"):
        kiln.aot.aot_export_joint_simple(lambda x: (x.add_(1),), [x], trace_joint=False)


def test_aot_eager_with_dynamic_shapes():
    def f(x, w):
        n = x.size(0)
        return (x @ w).relu().sum(0) / n

    counter = kiln.testing.CompileCounterWithBackend("aot_eager")
    compiled = kiln.compile(f, backend=counter)
    w = torch.randn(4, 5, requires_grad=True)
    for n in (3, 5, 7, 9):
        x = torch.randn(n, 4, requires_grad=True)
        out, grads = _grads(compiled, x, w)
        expected, expected_grads = _grads(f, x, w)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(grads, expected_grads)
    assert counter.frame_count == 2


def test_unsupported_graphs_run_without_aot():
    def f(x):
        x.unsqueeze_(0)  # shape and values of an input that needs gradients change in place
        with torch.no_grad():
            x.mul_(2)
        return x + 1

    def make():
        leaf = torch.randn(2, 3, requires_grad=True)
        return leaf, leaf * 1

    with pytest.raises(kiln.aot.AotUnsupported, match="shape or strides"):
        aot_function(f, nop)(make()[1])
    (leaf, x), (ref_leaf, expected_x) = make(), make()
    with torch.no_grad():
        ref_leaf.copy_(leaf)
    expected_x = ref_leaf * 1
    with unittest.TestCase().assertLogs("kiln", "WARNING") as logs:
        out = kiln.compile(f, backend="aot_eager")(x)
    torch.testing.assert_close(out, f(expected_x))
    torch.testing.assert_close(x, expected_x)
    assert x.shape == (1, 2, 3)
    assert "without AOT autograd" in logs.output[0]
    assert kiln.counters["aot_autograd"]["not_ok"] == 1


def test_metadata_mutation_of_an_input():
    """x.t_() inside: the input takes the new geometry after the call (as_strided_), with
    and without autograd, as eager leaves it."""
    def f(x):
        x.t_()
        return x + 1

    for requires_grad in (False, True):
        leaf = torch.randn(2, 3, requires_grad=requires_grad)
        x, ref_x = leaf * 1, leaf.detach() * 1
        compiled = aot_function(f, nop)
        out = compiled(x)
        expected = f(ref_x)
        torch.testing.assert_close(out, expected)
        assert x.shape == ref_x.shape == (3, 2) and x.stride() == ref_x.stride()
        if requires_grad:
            out.sum().backward()
            torch.testing.assert_close(leaf.grad, torch.ones(2, 3))


def test_custom_autograd_function_is_one_node_traced_by_aot():
    class Cube(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x ** 3

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 3 * x * x * grad

    def f(x):
        return Cube.apply(x.sin()).cos()

    counter = kiln.testing.CompileCounterWithBackend("aot_eager")
    x = torch.randn(5, requires_grad=True)
    out, grads = _grads(kiln.compile(f, backend=counter), x)
    expected, expected_grads = _grads(f, x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grads, expected_grads)
    assert counter.frame_count == 1


def test_saved_tensors_released_after_backward_as_eager():
    """The backward lets go of the saved values (each is freed after its last use in the
    backward graph): a second backward without retain_graph fails as eager's does, and
    with retain_graph it works."""
    def fn(x):
        return (x.sin() * x.cos()).sum()

    compiled = aot_function(fn, nop)
    x = torch.randn(4, requires_grad=True)
    out = compiled(x)
    out.backward()
    with pytest.raises(RuntimeError, match="second time"):
        out.backward()
    out = compiled(x)
    out.backward(retain_graph=True)
    out.backward()
    torch.testing.assert_close(x.grad, 3 * torch.cos(2 * x))


def test_inference_graph_outputs_do_not_require_grad():
    """A graph whose outputs need no gradient (made under no_grad inside) runs without
    recording: its outputs do not require grad even though its input does, as in eager."""
    def f(x):
        with torch.no_grad():
            y = x * 2
        return y

    x = torch.randn(3, requires_grad=True)
    out = aot_function(f, nop)(x)
    assert not out.requires_grad and out.grad_fn is None
    assert torch.is_grad_enabled()
    out = kiln.compile(f, backend="aot_eager")(x)
    assert not out.requires_grad


def test_graph_holding_a_fake_constant_is_refused():
    """A traced graph that kept a tensor known only as a fake value as a constant cannot
    run: trace refuses it with AotUnsupported instead of handing back FakeTensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from kiln.aot.trace import _refuse_fake_constants

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(torch.ops.aten.mul.Tensor,
                                     (x, graph.get_attr("const"))))
    root = torch.nn.Module()
    with FakeTensorMode():
        root.const = torch.ones(3)
    with pytest.raises(kiln.aot.AotUnsupported, match="fake value"):
        _refuse_fake_constants(torch.fx.GraphModule(root, graph))
    root.const = torch.ones(3)
    _refuse_fake_constants(torch.fx.GraphModule(root, graph))  # a real constant is fine
