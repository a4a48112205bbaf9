"""What a function does to its inputs and how its outputs relate to them: the facts the
traced graphs cannot show once functionalized, and the runtime needs to behave as eager.

``collect_metadata`` runs the function once on fresh fake copies of its (flat) inputs under
functionalization and records, per input, whether its data or metadata was mutated (and
whether only under ``no_grad``), and per output whether it requires grad and whether it is an
input, a view of an input, another output, or a view of another output. It also records the
grad mode the function leaves behind (``torch.set_grad_enabled(False)`` inside).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._dispatch.python import enable_python_dispatcher

from kiln.aot.functional import (
    from_functional,
    functionalization,
    input_views,
    is_view,
    mutation_state,
    storage_of,
    to_functional,
)


class Alias(enum.Enum):
    NONE = "none"                  # a new tensor (or not a tensor)
    IS_INPUT = "is_input"          # the input object itself
    VIEW_OF_INPUT = "view_of_input"
    IS_OUTPUT = "is_output"        # the same object as an earlier output
    VIEW_OF_OUTPUT = "view_of_output"
    # a view of a tensor made inside the function that is not itself returned: the tensor
    # (the "intermediate base") becomes an extra output, and the view is rebuilt from it
    VIEW_OF_INTERMEDIATE = "view_of_intermediate"


@dataclass(frozen=True)
class InputInfo:
    is_tensor: bool
    requires_grad: bool
    mutates_data: bool = False
    mutates_metadata: bool = False
    mutations_under_no_grad: bool = True  # (vacuously, when not mutated)
    new_value_requires_grad: bool = False  # the mutated value (a graph output) needs grad

    @property
    def mutated(self) -> bool:
        return self.mutates_data or self.mutates_metadata


@dataclass(frozen=True)
class OutputInfo:
    is_tensor: bool
    requires_grad: bool
    alias: Alias = Alias.NONE
    base: int | None = None  # the input, output or intermediate base index it aliases

    @property
    def regenerated(self) -> bool:
        """Made by the runtime from what it aliases rather than taken from the graph."""
        return self.alias is not Alias.NONE


@dataclass(frozen=True)
class AotMetadata:
    inputs: tuple[InputInfo, ...]
    outputs: tuple[OutputInfo, ...]
    grad_enabled_after: bool
    # requires_grad of each intermediate base, in the order of their first view among outputs
    intermediate_bases: tuple[bool, ...] = ()
    # fake values of the outputs, of the mutated inputs' new values, then of the intermediate
    # bases (tangent shapes)
    examples: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    @property
    def mutated_inputs(self) -> list[int]:
        """Indices of inputs whose data the function mutates (in order): their new values
        are extra graph outputs, copied into the inputs after each call."""
        return [i for i, info in enumerate(self.inputs) if info.mutates_data]

    @property
    def num_forward_outputs(self) -> int:
        """How many values the forward returns before what it saves: outputs, mutated
        inputs' new values, intermediate bases, the new views of inputs whose metadata
        (shape, strides) the function changed (``x.t_()``), for their geometry."""
        return len(self.outputs) + len(self.mutated_inputs) + len(self.intermediate_bases) + \
            len(self.metadata_mutations)

    @property
    def metadata_mutations(self) -> list[int]:
        return [i for i, info in enumerate(self.inputs) if info.mutates_metadata]


def fresh_fake(value: Any) -> Any:
    """A new leaf tensor like the fake ``value`` (same sizes, strides, dtype, device,
    requires_grad), so that running on it disturbs nothing the caller holds."""
    if not isinstance(value, torch.Tensor):
        return value
    fresh = torch.empty_strided(value.size(), value.stride(), dtype=value.dtype,
                                device=value.device)
    return fresh.requires_grad_(value.requires_grad)


def collect_metadata(fn: Callable[..., Sequence[Any]], fake_args: Sequence[Any],
                     fake_mode: Any) -> AotMetadata:
    """Run ``fn`` (flat inputs -> flat outputs) once on fresh copies of ``fake_args``."""
    grad_before = torch.is_grad_enabled()
    with fake_mode:
        leaves = [fresh_fake(a) for a in fake_args]
    try:
        # the python dispatcher, as in the trace: torch's Python kernels of composite ops
        # (recurrent layers) handle symbolic sizes where their C++ kernels cannot
        with fake_mode, enable_python_dispatcher(), functionalization():
            wrapped = [to_functional(leaf) for leaf in leaves]
            histories = [type(w.grad_fn) if isinstance(w, torch.Tensor) else None
                         for w in wrapped]
            views = input_views(wrapped)
            outs = list(fn(*views))
            grad_after = torch.is_grad_enabled()
    finally:
        torch._C._set_grad_enabled(grad_before)
    inputs = []
    for arg, w, view, history in zip(fake_args, wrapped, views, histories):
        if not isinstance(arg, torch.Tensor):
            inputs.append(InputInfo(False, False))
            continue
        data, meta, no_grad = mutation_state(w, view)
        # an in-place op autograd sees through the view gives the input (the view's base) a
        # new history (CopySlices); one it does not see (through x.detach() or x.data) leaves
        # its history as it was: eager hides such a mutation from autograd
        no_grad = no_grad or bool(data and view.requires_grad and type(w.grad_fn) is history)
        # a mutation made under no_grad is hidden from autograd: its new value needs no grad
        inputs.append(InputInfo(True, arg.requires_grad, data, meta, no_grad,
                                bool(data and view.requires_grad and not no_grad)))
    bases: list[torch.Tensor] = []
    outputs = [_output_info(j, out, outs, wrapped, views, bases) for j, out in enumerate(outs)]
    mutated = [i for i, info in enumerate(inputs) if info.mutates_data]
    examples = [from_functional(o) for o in outs] + [from_functional(views[i]) for i in mutated]
    examples += [from_functional(b) for b in bases]
    return AotMetadata(tuple(inputs), tuple(outputs), grad_after,
                       tuple(b.requires_grad for b in bases), tuple(examples))


def intermediate_bases(outs: Sequence[Any], meta: AotMetadata) -> list[torch.Tensor]:
    """The intermediate bases of ``outs`` (the function's outputs), in ``meta``'s order."""
    bases: list[Any] = [None] * len(meta.intermediate_bases)
    for out, info in zip(outs, meta.outputs):
        if info.alias is Alias.VIEW_OF_INTERMEDIATE:
            bases[info.base] = out._base
    return bases


def _output_info(j: int, out: Any, outs: list[Any], wrapped: list[Any],
                 views: list[Any], bases: list[torch.Tensor]) -> OutputInfo:
    if not isinstance(out, torch.Tensor):
        return OutputInfo(False, False)
    requires_grad = out.requires_grad
    for i, view in enumerate(views):
        if out is view:
            return OutputInfo(True, requires_grad, Alias.IS_INPUT, i)
    storage = storage_of(out)
    for i, w in enumerate(wrapped):
        if isinstance(w, torch.Tensor) and storage_of(w) == storage:
            return OutputInfo(True, requires_grad, Alias.VIEW_OF_INPUT, i)
    for k in range(j):
        if outs[k] is out:
            return OutputInfo(True, requires_grad, Alias.IS_OUTPUT, k)
    if is_view(out):
        for k, other in enumerate(outs):
            if k != j and isinstance(other, torch.Tensor) and not is_view(other) and \
                    storage_of(other) == storage:
                return OutputInfo(True, requires_grad, Alias.VIEW_OF_OUTPUT, k)
    if out._base is not None and requires_grad:
        # returned from an autograd.Function, a view of a tensor made inside it could not
        # be updated in place: its base is returned instead and the view made outside
        # (without autograd, as torch does, the view is an ordinary output)
        for k, base in enumerate(bases):
            if base is out._base:
                return OutputInfo(True, requires_grad, Alias.VIEW_OF_INTERMEDIATE, k)
        bases.append(out._base)
        return OutputInfo(True, requires_grad, Alias.VIEW_OF_INTERMEDIATE, len(bases) - 1)
    return OutputInfo(True, requires_grad)


__all__ = ["Alias", "InputInfo", "OutputInfo", "AotMetadata", "collect_metadata",
           "fresh_fake", "intermediate_bases"]
