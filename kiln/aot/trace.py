"""Tracing a function to an aten graph without mutation: the inference graph, and the joint
forward-backward graph the partitioner splits.

Both are ``make_fx`` traces of a wrapper around the user's function that runs it under
functionalization (functional.py) on views of its inputs. The wrapper's outputs are, in
order: every output of the function, then the new value of every input whose data it
mutates, then the intermediate bases (tensors made inside whose views are outputs), then the
inputs whose shape or strides it changed in place, as the views they became. The
joint wrapper then asks autograd for the gradients of the differentiable ones
(``torch.autograd.grad`` with one tangent input per differentiable output) with respect to
the inputs that require grad, and returns them after the forward outputs, one per input
(None where there is none).

Graph conventions (what partition.py and runtime.py rely on): placeholders ``primals_1..n``
(the flat inputs, SymInts included) and, in the joint graph, ``tangents_1..m``; a flat output
list; ``gm.meta["num_fwd_outputs"]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx
import torch.fx.traceback as fx_traceback
from torch._dispatch.python import enable_python_dispatcher
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from kiln.aot.errors import AotUnsupported
from kiln.aot.functional import from_functional, functionalization, input_views, to_functional
from kiln.aot.metadata import AotMetadata, intermediate_bases
from kiln.aot.stack_traces import setup_stacktrace_preservation_hooks


def differentiable_outputs(meta: AotMetadata) -> list[int]:
    """Positions, among the wrapper's forward outputs, that get a tangent: outputs the
    function made (not aliases, which the runtime rebuilds) that require grad, then the
    mutated inputs' new values that require grad."""
    positions = [j for j, out in enumerate(meta.outputs)
                 if out.is_tensor and out.requires_grad and not out.regenerated]
    base = len(meta.outputs)
    positions += [base + k for k, i in enumerate(meta.mutated_inputs)
                  if meta.inputs[i].new_value_requires_grad]
    base += len(meta.mutated_inputs)
    positions += [base + k for k, rg in enumerate(meta.intermediate_bases) if rg]
    return positions


def fresh_inputs(meta: AotMetadata) -> set[int]:
    """Inputs the traced program runs on copies of: mutated ones that need a gradient."""
    return {i for i in meta.mutated_inputs
            if meta.inputs[i].requires_grad and torch.is_grad_enabled()}


def _forward_outputs(fn: Callable[..., Sequence[Any]], meta: AotMetadata,
                     views: list[Any]) -> list[Any]:
    outs = list(fn(*views))
    return outs + [views[i] for i in meta.mutated_inputs] + intermediate_bases(outs, meta) + \
        [views[i] for i in meta.metadata_mutations]


def inference_function(fn: Callable[..., Sequence[Any]], meta: AotMetadata
                       ) -> Callable[[list[Any]], list[Any]]:
    def forward(primals: list[Any]) -> list[Any]:
        with functionalization():
            wrapped = [to_functional(p) for p in primals]
            outs = _forward_outputs(fn, meta, input_views(wrapped, fresh_inputs(meta)))
        return [from_functional(o) for o in outs]

    return forward


def joint_function(fn: Callable[..., Sequence[Any]], meta: AotMetadata,
                   no_tangents: bool = False) -> Callable[[list[Any], list[Any]], list[Any]]:
    """The joint function; with ``no_tangents`` (a scalar loss) autograd seeds the backward
    with ones itself and the graph takes no tangent inputs."""
    positions = differentiable_outputs(meta)

    def joint(primals: list[Any], tangents: list[Any]) -> list[Any]:
        with functionalization():
            wrapped = [to_functional(p) for p in primals]
            wrapped_tangents: list[Any] = [to_functional(t) for t in tangents]
            if no_tangents:
                wrapped_tangents = [None] * len(positions)
            outs = _forward_outputs(fn, meta, input_views(wrapped, fresh_inputs(meta)))
            wanted = [k for k, w in enumerate(wrapped)
                      if isinstance(w, torch.Tensor) and w.requires_grad]
            pairs = [(outs[p], t) for p, t in zip(positions, wrapped_tangents)
                     if outs[p].requires_grad]
            grads: Sequence[Any] = ()
            if pairs and wanted:
                # backward nodes carry the stack trace of the forward op they differentiate
                setup_stacktrace_preservation_hooks([o.grad_fn for o, _ in pairs])
                grads = torch.autograd.grad([o for o, _ in pairs], [wrapped[k] for k in wanted],
                                            [t for _, t in pairs], allow_unused=True)
        per_input: list[Any] = [None] * len(primals)
        for k, g in zip(wanted, grads):
            per_input[k] = g
        return [from_functional(o) for o in outs] + [from_functional(g) for g in per_input]

    return joint


def tangent_like(value: torch.Tensor) -> torch.Tensor:
    """The fake tangent of a differentiable output: contiguous (the runtime makes the real
    ones contiguous too)."""
    return torch.empty(value.shape, dtype=value.dtype, device=value.device)


def trace(fn: Callable[..., Any], args: Sequence[Any], fake_mode: Any,
          decompositions: dict[Any, Callable[..., Any]] | None = None,
          num_fwd_outputs: int | None = None) -> torch.fx.GraphModule:
    """``make_fx`` of ``fn(*args)`` on fake ``args``, with flat inputs and outputs."""
    grad_mode = torch.is_grad_enabled()
    try:
        with fake_mode, enable_python_dispatcher(), fx_traceback.preserve_node_meta():
            gm = make_fx(fn, decomposition_table=decompositions or {})(*args)
    finally:
        torch._C._set_grad_enabled(grad_mode)  # the function may change it
    _refuse_fake_constants(gm)
    _drop_identity_views(gm.graph)
    _stack_traces_by_sequence_number(gm.graph)
    gm.graph._codegen = torch.fx.graph.CodeGen()  # flat signature, flat output list
    gm.graph.eliminate_dead_code()
    gm.recompile()
    if num_fwd_outputs is not None:
        gm.meta["num_fwd_outputs"] = num_fwd_outputs
    return gm


def _refuse_fake_constants(gm: torch.fx.GraphModule) -> None:
    """A tensor the function made from nothing but fake values and kept as a constant (an
    ``nn.Parameter`` created inside it) has no real value to run with."""
    for node in gm.graph.nodes:
        if node.op == "get_attr" and isinstance(getattr(gm, node.target, None),
                                                FakeTensor):
            raise AotUnsupported(
                "the function makes a tensor that the trace keeps as a constant but only "
                "knows as a fake value (an nn.Parameter created inside the function?): "
                "create it outside and pass it in, or compile with kiln.compile, which "
                "captures it")


def _same_size(value: Any, size: Any) -> bool:
    if isinstance(value, torch.fx.Node):
        value = value.meta.get("val")
    return bool(statically_known_true(value == size)) if isinstance(
        value, (int, torch.SymInt)) else False


def _drop_identity_views(graph: torch.fx.Graph) -> None:
    """``view(x, x's own shape)`` is ``x`` in a graph without mutation. The views the
    program ran on instead of its inputs (``input_views``) trace as such, and so do their
    gradients: each would cost a call on every run."""
    for node in list(graph.nodes):
        if node.target is not torch.ops.aten.view.default:
            continue
        source = node.args[0]
        shape = getattr(source.meta.get("val"), "shape", None)
        if shape is not None and len(node.args[1]) == len(shape) and \
                all(_same_size(a, s) for a, s in zip(node.args[1], shape)):
            node.replace_all_uses_with(source)
            graph.erase_node(node)


def _stack_traces_by_sequence_number(graph: torch.fx.Graph) -> None:
    """A backward node shares its autograd sequence number with the forward operation it
    differentiates: give it that operation's stack trace (the user's line)."""
    by_seq_nr: dict[int, str] = {}
    for node in graph.nodes:
        trace_text, seq_nr = node.meta.get("stack_trace"), node.meta.get("seq_nr")
        if trace_text and seq_nr is not None:
            by_seq_nr.setdefault(seq_nr, trace_text)
    for node in graph.nodes:
        if not node.meta.get("stack_trace") and node.meta.get("seq_nr") in by_seq_nr:
            node.meta["stack_trace"] = by_seq_nr[node.meta["seq_nr"]]


__all__ = ["differentiable_outputs", "inference_function", "joint_function", "tangent_like",
           "trace"]
