"""Running a function under functionalization: mutations and views become pure operations.

Functionalization (PyTorch's ``Functionalize`` dispatch key, driven from Python by
``FunctionalTensorMode`` with ``FunctionalTensor`` wrappers, as torch's AOT autograd drives
it) wraps each tensor so that an in-place operation on it, or on a view of it, is recorded
as a new value instead of a write. After the run each wrapper can say whether its tensor was
mutated (data or metadata), and whether every mutation happened under ``no_grad``;
unwrapping gives the tensor's final value as an out-of-place computation. Traced by
``make_fx``, the result is a graph with no mutation in it, with the same nodes torch's
would have (down to the ``detach`` autograd makes when it saves an output).

Views are kept: a view op stays a view op in the graph, so an output that is a view of an
input is a real view of it when the graph runs eagerly, and the inner tensors share storage
exactly where the program's tensors would (metadata.py reads aliasing off them). Wrappers
are made inside :func:`functionalization`, whose mode they belong to.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import torch
from torch._subclasses.functional_tensor import FunctionalTensor, FunctionalTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.overrides import TorchFunctionMode


def to_functional(value: Any) -> Any:
    """``value`` wrapped for functionalization (with its requires_grad); non-tensors as is.
    Called inside :func:`functionalization`."""
    if not isinstance(value, torch.Tensor):
        return value
    wrapped = FunctionalTensor.to_functional(value)
    fake_mode = getattr(value, "fake_mode", None)
    if fake_mode is not None and not getattr(fake_mode, "_allow_unsafe_data_ptr_access", True):
        torch._C._set_throw_on_mutable_data_ptr(wrapped.elem)  # as the fake it wraps
    return wrapped


def _inner(value: Any) -> Any:
    """The C++ functional wrapper inside a FunctionalTensor."""
    return value.elem if isinstance(value, FunctionalTensor) else value


def from_functional(value: Any) -> Any:
    """The current value inside a functional wrapper, with pending updates applied."""
    if not isinstance(value, FunctionalTensor):
        return value
    inner = value.elem
    torch._sync(inner)
    return torch._from_functional_tensor(inner)


def _batch_norm(x: Any, running_mean: Any, running_var: Any, weight: Any, bias: Any,
                training: bool, momentum: float, eps: float) -> Any:
    aten = torch.ops.aten
    if training:
        return aten._native_batch_norm_legit.default(
            x, weight, bias, running_mean, running_var, True, momentum, eps)[0]
    return aten._native_batch_norm_legit_no_training.default(
        x, weight, bias, running_mean, running_var, momentum, eps)[0]


def _functional_batch_norm(input: Any, running_mean: Any, running_var: Any, weight: Any = None,
                           bias: Any = None, training: bool = False, momentum: float = 0.1,
                           eps: float = 1e-5) -> Any:
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


class _Rerouted(TorchFunctionMode):
    """Calls whose usual aten op loses a mutation under functionalization, sent to an
    equivalent op that keeps it: ``native_batch_norm``'s update of the running statistics is
    applied but not recorded as a mutation, ``_native_batch_norm_legit``'s is."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is torch.nn.functional.batch_norm:
            bound = inspect.signature(_functional_batch_norm).bind(*args, **kwargs)
            if bound.arguments.get("running_mean") is not None and \
                    bound.arguments.get("running_var") is not None:
                return _functional_batch_norm(*bound.args, **bound.kwargs)
        if func is torch.batch_norm and not kwargs and len(args) == 9 and \
                args[3] is not None and args[4] is not None:
            x, weight, bias, mean, var, training, momentum, eps, _ = args
            return _batch_norm(x, mean, var, weight, bias, training, momentum, eps)
        return func(*args, **kwargs)


@contextlib.contextmanager
def functionalization() -> Iterator[None]:
    """Functionalize the operations run inside (on functional wrappers)."""
    with FunctionalTensorMode(), _Rerouted():
        yield


def input_views(wrapped: list[Any], fresh: set[int] | frozenset[int] = frozenset()
                ) -> list[Any]:
    """What the program runs on instead of each wrapped input: a view of it, so in-place
    operations on an input that is a leaf requiring grad are recorded by autograd instead of
    refused (whether they are allowed at all is decided when the mutation is applied to the
    real input after the call, as eager would). The inputs in ``fresh`` (mutated inputs that
    require grad) get a copy instead: autograd differentiates through an in-place update of
    a copy, not of a view of a leaf (torch's AOT autograd clones them too). The views are
    made with grad mode on, so a ``torch.enable_grad()`` region in a function called under
    ``no_grad`` differentiates through them to the inputs, as eager does."""
    with torch.enable_grad():  # connected to the inputs whatever the grad mode outside
        return [w.clone() if i in fresh else w.view(w.shape) if isinstance(w, torch.Tensor)
                else w for i, w in enumerate(wrapped)]


def mutation_state(wrapped: Any, view: Any) -> tuple[bool, bool, bool]:
    """(data mutated, metadata mutated, all mutations under no_grad or hidden from
    autograd) of a wrapped input the program ran on through ``view``. Both are asked: some
    mutations (batch norm's running statistics) are recorded on the view only, and a change
    of shape or strides (``x.t_()``) can only show on the view."""
    wrapped, view = _inner(wrapped), _inner(view)
    torch._sync(wrapped)
    torch._sync(view)
    data = torch._functionalize_has_data_mutation(wrapped) or \
        torch._functionalize_has_data_mutation(view)
    meta = torch._functionalize_has_metadata_mutation(wrapped) or \
        torch._functionalize_has_metadata_mutation(view)
    hidden = all(
        torch._functionalize_are_all_mutations_under_no_grad_or_inference_mode(t) or
        torch._functionalize_are_all_mutations_hidden_from_autograd(t)
        for t in (wrapped, view) if torch._functionalize_has_data_mutation(t))
    return data, meta, hidden


def storage_of(value: torch.Tensor) -> StorageWeakRef:
    """The storage a (possibly wrapped) tensor's current value lives in."""
    return StorageWeakRef(from_functional(value).untyped_storage())


def is_view(value: torch.Tensor) -> bool:
    """Whether a (possibly wrapped) tensor's current value is a view of another tensor."""
    return from_functional(value)._base is not None


__all__ = ["to_functional", "from_functional", "functionalization", "input_views",
           "mutation_state", "storage_of", "is_view"]
