"""Calling compiled forward and backward graphs as the original function would behave.

The graphs are pure: they return the new values of mutated inputs instead of mutating, and
outputs that alias inputs or other outputs come back as tensors of their own. The runtime
puts eager's behaviour back around them:

- training: an ``autograd.Function`` whose forward runs the forward graph and saves its saved
  values, and whose backward runs the backward graph (tangents made contiguous). Its outputs
  that need no gradient are marked non-differentiable. A backward run with ``create_graph``
  returns gradients whose own backward raises (double backward is not supported).
- mutations: each mutated input gets its new value with ``copy_``, under ``no_grad`` when the
  program mutated it under ``no_grad`` (so a parameter updated in place keeps working), and
  visibly to autograd otherwise (so eager's errors, like an in-place update of a leaf that
  requires grad, are raised as eager raises them).
- aliases: an output that is an input is that input object; an output that is a view of an
  input or of another output is rebuilt as a view of it (``as_strided``), so later in-place
  updates and gradients flow as in eager. A view of a tensor made inside the function is
  rebuilt from that tensor, which the forward returns as an extra output (a view created
  inside an autograd.Function could not be updated in place).
- grad mode: set to what the program left (``torch.set_grad_enabled(False)`` inside it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from kiln.aot.metadata import Alias, AotMetadata, InputInfo
from kiln.aot.trace import differentiable_outputs

DOUBLE_BACKWARD_ERROR = ("kiln.compile with aot_autograd does not currently support double "
                         "backward")


def call_compiled(compiled: Callable[..., Any], args: list[Any]) -> list[Any]:
    """Call a compiled graph, boxed (one list argument) or not."""
    if getattr(compiled, "_boxed_call", False):
        return list(compiled(args))
    return list(compiled(*args))


def apply_mutation(target: torch.Tensor, new_value: torch.Tensor, info: InputInfo) -> None:
    if info.mutations_under_no_grad:
        with torch.no_grad():
            target.copy_(new_value)
    else:
        target.copy_(new_value)


def _alias_of(carrier: torch.Tensor, base: torch.Tensor, base_value: torch.Tensor | None
              ) -> torch.Tensor:
    """``carrier`` (a view the graph returned) as a view of ``base``. When the graph's view
    lives in ``base``'s storage its geometry applies as is; when it is a view of a new value
    the graph computed for ``base`` (a mutated input), offsets are taken relative to that
    value, whose layout ``base`` shares. A view with another dtype (``x.view(torch.int32)``)
    is taken of ``base`` reinterpreted in that dtype."""
    if carrier.dtype != base.dtype:
        try:
            base = base.view(carrier.dtype)
            if base_value is not None:
                base_value = base_value.view(carrier.dtype)
        except RuntimeError:
            return carrier
    if carrier.untyped_storage().data_ptr() == base.untyped_storage().data_ptr():
        return base.as_strided(carrier.size(), carrier.stride(), carrier.storage_offset())
    if base_value is not None and base_value.stride() == base.stride() and \
            carrier.untyped_storage().data_ptr() == base_value.untyped_storage().data_ptr():
        offset = base.storage_offset() + carrier.storage_offset() - base_value.storage_offset()
        return base.as_strided(carrier.size(), carrier.stride(), offset)
    return carrier  # no way to rebuild the alias: the value is right, the aliasing is lost


def finish_outputs(meta: AotMetadata, args: Sequence[Any], graph_outs: Sequence[Any],
                   new_values: dict[int, Any], bases: Sequence[Any] = ()) -> list[Any]:
    """The user-visible outputs: graph outputs, with aliases rebuilt from what they alias
    (outputs first, then the aliases of outputs, whatever their order). An alias the program
    made without autograd (``x.detach()``, a view under ``no_grad``) is detached. Views of
    intermediates are rebuilt from ``bases`` when given (else the graph's view stands)."""
    final = list(graph_outs)
    for j, info in enumerate(meta.outputs):
        if info.alias is Alias.IS_INPUT:
            final[j] = args[info.base]
        elif info.alias is Alias.VIEW_OF_INPUT:
            final[j] = _alias_of(graph_outs[j], args[info.base], new_values.get(info.base))
        elif info.alias is Alias.VIEW_OF_INTERMEDIATE and bases:
            final[j] = _alias_of(graph_outs[j], bases[info.base], None)
    for j, info in enumerate(meta.outputs):
        if info.alias is Alias.IS_OUTPUT:
            final[j] = final[info.base]
        elif info.alias is Alias.VIEW_OF_OUTPUT:
            final[j] = _alias_of(graph_outs[j], final[info.base], None)
    for j, info in enumerate(meta.outputs):
        out = final[j]
        if info.regenerated and isinstance(out, torch.Tensor) and out.requires_grad and \
                not info.requires_grad:
            final[j] = out.detach()
    return final


def _mutate_inputs(meta: AotMetadata, args: Sequence[Any], new_values: Sequence[Any],
                   new_views: Sequence[Any] = ()) -> dict[int, Any]:
    """Inputs get their new shape and strides (``as_strided_`` to the geometry of the view
    the graph returned), then their new values (``copy_``)."""
    for i, view in zip(meta.metadata_mutations, new_views):
        args[i].as_strided_(view.size(), view.stride(), view.storage_offset())
    by_input = dict(zip(meta.mutated_inputs, new_values))
    for i, value in by_input.items():
        apply_mutation(args[i], value, meta.inputs[i])
    return by_input


def _restore_grad_mode(meta: AotMetadata) -> None:
    if torch.is_grad_enabled() != meta.grad_enabled_after:
        torch._C._set_grad_enabled(meta.grad_enabled_after)


def make_inference_runtime(compiled: Callable[..., Any], meta: AotMetadata
                           ) -> Callable[..., list[Any]]:
    """The runtime of a graph compiled without autograd (no input needs a gradient)."""
    num_outputs = len(meta.outputs)

    num_mutated_end = num_outputs + len(meta.mutated_inputs)
    num_views_start = meta.num_forward_outputs - len(meta.metadata_mutations)
    def call_without_grad(args: tuple[Any, ...]) -> list[Any]:
        # no output needs a gradient (that is why this graph has no backward): run it
        # without recording, as torch does, or outputs of inputs that require grad would
        # claim to require it too
        torch._C._set_grad_enabled(False)
        try:
            return call_compiled(compiled, list(args))
        finally:
            torch._C._set_grad_enabled(meta.grad_enabled_after)

    if not meta.mutated_inputs and not meta.metadata_mutations and \
            not any(o.regenerated for o in meta.outputs):
        # nothing to put back around the graph (the common case): its outputs are the result
        def run_plain(*args: Any) -> list[Any]:
            return call_without_grad(args)

        run_plain._kiln_aot_meta = meta  # type: ignore[attr-defined]
        return run_plain

    def run(*args: Any) -> list[Any]:
        grad_enabled = torch.is_grad_enabled()
        outs = call_without_grad(args)
        torch._C._set_grad_enabled(grad_enabled)  # mutations are applied as the call saw it
        new_values = _mutate_inputs(meta, args, outs[num_outputs:num_mutated_end],
                                    outs[num_views_start:meta.num_forward_outputs])
        result = finish_outputs(meta, args, outs[:num_outputs], new_values)
        _restore_grad_mode(meta)
        return result

    run._kiln_aot_meta = meta  # type: ignore[attr-defined]
    return run


class _ViewCarriers:
    """Graph outputs the runtime rebuilds as aliases, handed out of the autograd.Function
    beside its outputs (a Function returning views of its inputs would tie them to it)."""

    def __init__(self) -> None:
        self.values: dict[int, Any] = {}


class _NoDoubleBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, *grads: Any) -> Any:
        return grads

    @staticmethod
    def backward(ctx: Any, *grads: Any) -> Any:
        raise RuntimeError(DOUBLE_BACKWARD_ERROR)


def make_training_runtime(compiled_fw: Callable[..., Any], compiled_bw: Callable[..., Any],
                          meta: AotMetadata, num_saved: int, num_saved_tensors: int,
                          enable_grad: bool = False) -> Callable[..., list[Any]]:
    """The runtime of a forward/backward pair: an autograd.Function around the graphs.
    ``enable_grad``: the function was compiled under ``no_grad`` and turns grad mode on
    inside (``torch.enable_grad()``), so the autograd.Function must record in grad mode."""
    num_outputs = len(meta.outputs)
    num_mutated_end = num_outputs + len(meta.mutated_inputs)
    num_fwd = meta.num_forward_outputs
    tangent_positions = differentiable_outputs(meta)
    differentiable = set(tangent_positions)
    num_views_start = num_fwd - len(meta.metadata_mutations)
    # graph outputs the runtime takes past the autograd.Function: outputs it rebuilds as
    # aliases, and the views giving inputs their new geometry
    carried = [j for j, info in enumerate(meta.outputs) if info.regenerated] + \
        list(range(num_views_start, num_fwd))
    plain = not meta.mutated_inputs and not carried and num_fwd == num_outputs

    class CompiledFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, carriers: _ViewCarriers, *args: Any) -> Any:
            outs = call_compiled(compiled_fw, list(args))
            saved = outs[num_fwd:]
            ctx.save_for_backward(*saved[:num_saved_tensors])
            ctx.saved_symbols = saved[num_saved_tensors:]
            fwd = outs[:num_fwd]
            for j in carried:
                carriers.values[j] = fwd[j]
                fwd[j] = None
            ctx.mark_non_differentiable(*[v for p, v in enumerate(fwd)
                                          if p not in differentiable
                                          and isinstance(v, torch.Tensor)])
            return tuple(fwd)

        @staticmethod
        def backward(ctx: Any, *grads: Any) -> Any:
            tangents = [_contiguous(grads[p]) for p in tangent_positions]
            bw_args = [*ctx.saved_tensors, *ctx.saved_symbols, *tangents]
            del tangents, grads
            # the backward graph frees each saved value after its last use, which only
            # frees memory if nothing else holds it: not ctx (unless the graph is retained)
            # and not this frame (the boxed call takes the one list)
            ctx.maybe_clear_saved_tensors()
            input_grads = call_compiled(compiled_bw, bw_args)
            if torch.is_grad_enabled() and any(isinstance(g, torch.Tensor)
                                               for g in input_grads):
                input_grads = list(_NoDoubleBackward.apply(*input_grads))
            return (None, *input_grads)

    def run(*args: Any) -> list[Any]:
        carriers = _ViewCarriers()
        if enable_grad:
            with torch.enable_grad():
                outs = list(CompiledFunction.apply(carriers, *args))
        else:
            outs = list(CompiledFunction.apply(carriers, *args))
        if plain:  # nothing to put back around the graph (the common case)
            _restore_grad_mode(meta)
            return outs
        for j, carrier in carriers.values.items():
            outs[j] = carrier
        new_values = _mutate_inputs(meta, args, outs[num_outputs:num_mutated_end],
                                    outs[num_views_start:num_fwd])
        result = finish_outputs(meta, args, outs[:num_outputs], new_values,
                                outs[num_mutated_end:num_views_start])
        _restore_grad_mode(meta)
        return result

    run._kiln_aot_meta = meta  # type: ignore[attr-defined]
    return run


def _contiguous(grad: Any) -> Any:
    return grad.contiguous() if isinstance(grad, torch.Tensor) else grad


__all__ = ["DOUBLE_BACKWARD_ERROR", "call_compiled", "make_inference_runtime",
           "make_training_runtime", "finish_outputs", "apply_mutation"]
