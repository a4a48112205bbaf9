"""kiln.aot.synthetic_base: inputs sharing memory with a mutated input are compiled as views
of one base, so a mutation through one shows through the others, with gradients as eager's;
calls with another aliasing structure run eagerly."""

from __future__ import annotations

import torch

import kiln
from kiln.aot import aot_function, nop


def add_then_read(a, b):
    a.add_(1)
    return b * 2


def _views(leaf):
    base = leaf * 1  # a non-leaf, so its views may be mutated with autograd on
    return base, base[:4], base[2:]


def _counting_nop():
    calls = []

    def compiler(gm, example_inputs):
        def run(*args):
            calls.append(len(args))
            return gm(*args)
        return run
    return compiler, calls


def test_overlapping_views_mutated_with_gradients():
    compiler, calls = _counting_nop()
    compiled = aot_function(add_then_read, compiler)
    for step in range(2):
        leaf = torch.randn(6, requires_grad=True)
        ref_leaf = leaf.detach().clone().requires_grad_()
        base, a, b = _views(leaf)
        ref_base, ref_a, ref_b = _views(ref_leaf)
        out, expected = compiled(a, b), add_then_read(ref_a, ref_b)
        torch.testing.assert_close(out, expected)
        torch.testing.assert_close(base, ref_base)  # the mutation reached the real base
        weights = torch.arange(4.0)
        (out * weights).sum().backward()
        (expected * weights).sum().backward()
        torch.testing.assert_close(leaf.grad, ref_leaf.grad, msg=f"step {step}")
    assert calls == [1, 2, 1, 2]  # compiled graphs ran: forward (the base), backward


def test_other_aliasing_structures_run_eagerly():
    compiled = aot_function(add_then_read, nop)
    base = torch.randn(6)
    compiled(base[:4], base[2:])  # compiled for views of one base at offsets 0 and 2
    for a_slice, b_slice in [(slice(0, 4), slice(1, 5)), (slice(2, 6), slice(0, 4))]:
        base, ref = torch.randn(6), None
        ref = base.clone()
        expected = add_then_read(ref[a_slice], ref[b_slice])
        torch.testing.assert_close(compiled(base[a_slice], base[b_slice]), expected)
        torch.testing.assert_close(base, ref)
    a, b = torch.randn(4), torch.randn(4)  # no aliasing at all
    torch.testing.assert_close(compiled(a.clone(), b), add_then_read(a.clone(), b))


def test_kiln_compile_runs_them_through_aot():
    compiled = kiln.compile(add_then_read, backend="aot_eager")
    base = torch.randn(6)
    ref = base.clone()
    torch.testing.assert_close(compiled(base[:4], base[2:]), add_then_read(ref[:4], ref[2:]))
    torch.testing.assert_close(base, ref)
    assert kiln.counters["aot_autograd"]["ok"] == 1
    assert kiln.counters["aot_autograd"]["not_ok"] == 0
