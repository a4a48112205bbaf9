"""Tensors: an FX node plus its fake value (shape, dtype, device, requires_grad...).

Metadata (``x.shape``, ``x.dtype``, ``x.size(0)``, ``x.is_contiguous()``) is read from the
fake value and becomes a compile-time constant; that is sound because every input tensor is
guarded on exactly that metadata (TENSOR_MATCH). Everything else becomes a graph node.
Reading tensor *contents* into Python (``.item()``, ``bool(x)``, ``if x.sum() > 0:``) cannot
be captured: it raises :class:`kiln.exc.Unsupported` (a graph break once those land).
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.fx

from kiln.capture.sources import Source
from kiln.capture.variables.base import VariableTracker
from kiln.capture.variables.constant import ConstantVariable

if TYPE_CHECKING:
    from kiln.capture.interpreter import InstructionTranslator

# Attributes whose value follows from guarded metadata.
CONSTANT_ATTRIBUTES = frozenset({
    "dtype", "device", "layout", "ndim", "is_cuda", "is_cpu", "is_meta", "is_sparse",
    "is_quantized", "is_mkldnn", "is_nested", "requires_grad", "is_leaf", "itemsize", "nbytes",
    "is_mps", "is_xpu", "is_sparse_csr", "is_complex_dtype",
})
# Attributes that are new tensors: one node each.
TENSOR_ATTRIBUTES = frozenset({"T", "mT", "H", "mH", "real", "imag", "data"})
# Methods whose result follows from guarded metadata.
METADATA_METHODS = frozenset({
    "size", "stride", "dim", "ndimension", "numel", "nelement", "element_size",
    "is_contiguous", "is_floating_point", "is_complex", "is_signed", "get_device",
    "storage_offset", "__len__", "is_inference", "has_names", "is_set_to",
})
# Methods that read tensor contents (or memory) into Python.
DATA_DEPENDENT_METHODS = frozenset({
    "item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__complex__",
    "__array__", "__contains__", "__format__", "__repr__", "__str__", "data_ptr",
    "untyped_storage", "storage", "_storage", "__reduce_ex__", "__deepcopy__",
})
# Methods that act on autograd or the program outside the graph.
UNSUPPORTED_METHODS = frozenset({
    "backward", "register_hook", "register_post_accumulate_grad_hook", "retain_grad",
    "share_memory_", "pin_memory", "record_stream", "set_", "resize_", "__setstate__",
})


def is_inplace_method(name: str) -> bool:
    return name.endswith("_") and not name.endswith("__")


class TensorVariable(VariableTracker):
    def __init__(self, node: torch.fx.Node, example: torch.Tensor, *,
                 source: Source | None = None, class_type: type = torch.Tensor) -> None:
        super().__init__(source=source)
        self.node = node
        self.example = example
        self.class_type = class_type
        # torch.compile names a node after the local it is first stored to (``y = x + 1``
        # gives node ``y``); inputs and attributes keep their source names.
        self.name_set = node.op in ("placeholder", "get_attr")

    def set_name_hint(self, name: str) -> None:
        if not self.name_set:
            self.node._rename(name)
            self.name_set = True

    def python_type(self) -> type:
        return self.class_type

    def describe(self) -> str:
        where = f" {self.source}" if self.source else f" (node {self.node.name})"
        return f"tensor{where}"

    def __repr__(self) -> str:
        return f"TensorVariable({self.node.name}, {tuple(self.example.shape)}, " \
               f"{self.example.dtype})"

    # --- Python protocol ----------------------------------------------------------------
    def truth(self, tx: InstructionTranslator) -> bool:
        tx.unsupported(
            f"data-dependent branching on {self.describe()}: its truth value depends on its "
            "contents", hint="use torch.where, or move the branch out of the compiled function")

    def has_len(self) -> bool:
        return True

    def unpack(self, tx: InstructionTranslator) -> list[VariableTracker]:
        if self.example.dim() == 0:
            tx.raise_user_exception(TypeError("iteration over a 0-d tensor"))
        length = int(self.example.shape[0])  # iterating fixes the length (guarded)
        return [tx.output.call_op(tx, "call_function", operator.getitem,
                                  [self, ConstantVariable(i)], {}) for i in range(length)]

    # --- attributes ---------------------------------------------------------------------
    def getattr(self, tx: InstructionTranslator, name: str) -> VariableTracker:

        if name == "shape":
            return self.size_variable(tx)
        if name in CONSTANT_ATTRIBUTES:
            return ConstantVariable(getattr(self.example, name))
        if name in TENSOR_ATTRIBUTES:
            return tx.output.call_op(tx, "call_function", getattr,
                                     [self, ConstantVariable(name)], {})
        if name in ("grad", "grad_fn", "_base", "_version"):
            tx.unsupported(f"reading {self.describe()}.{name}")
        if name == "__class__":
            from kiln.capture.variables.builder import wrap_constant_result

            return wrap_constant_result(tx, self.class_type)
        attr = getattr(torch.Tensor, name, None)
        if attr is None:
            tx.raise_user_exception(AttributeError(f"'Tensor' object has no attribute {name!r}"))
        if callable(attr):
            return TensorMethodVariable(self, name)
        tx.unsupported(f"reading {self.describe()}.{name}")

    def setattr(self, tx: InstructionTranslator, name: str, value: VariableTracker) -> None:
        tx.unsupported(f"setting {self.describe()}.{name}")

    # --- sizes, which may be symbolic -------------------------------------------------------
    def _dim_value(self, tx: InstructionTranslator, method: str, dim: int) -> VariableTracker:
        from kiln.capture.variables.sym import wrap_symbolic

        value = getattr(self.example, method)(dim)
        return wrap_symbolic(tx, value, lambda tx: tx.output.graph.create_node(
            "call_method", method, (self.node, dim)))

    def size_variable(self, tx: InstructionTranslator) -> VariableTracker:
        from kiln.capture.variables.containers import SizeVariable

        return SizeVariable([self._dim_value(tx, "size", d) for d in range(self.example.dim())])

    def symbolic_metadata(self, tx: InstructionTranslator, name: str,
                          args: list[Any]) -> VariableTracker:
        """``size()``, ``size(d)``, ``stride(d)``, ``numel()``: symbolic where the shape is."""
        from kiln.capture.variables.containers import TupleVariable
        from kiln.capture.variables.sym import wrap_symbolic

        if name == "size":
            if not args:
                return self.size_variable(tx)
            return self._dim_value(tx, "size", args[0])
        if name == "stride":
            if not args:
                return TupleVariable([self._dim_value(tx, "stride", d)
                                      for d in range(self.example.dim())])
            return self._dim_value(tx, "stride", args[0])
        if name == "__len__":
            return self._dim_value(tx, "size", 0)
        value = self.example.numel()
        return wrap_symbolic(tx, value, lambda tx: tx.output.graph.create_node(
            "call_method", "numel", (self.node,)))

    # --- methods ------------------------------------------------------------------------
    def call_method(self, tx: InstructionTranslator, name: str, args: list[VariableTracker],
                    kwargs: dict[str, VariableTracker]) -> VariableTracker:
        from kiln.capture.variables.builder import wrap_constant_result

        if name in METADATA_METHODS:
            consts = [tx.constant_arg(a, f"Tensor.{name} arguments") for a in args]
            kw = {k: tx.constant_arg(v, f"Tensor.{name} arguments") for k, v in kwargs.items()}
            if name in ("size", "stride", "numel", "nelement", "__len__") and not kw:
                return self.symbolic_metadata(tx, name, consts)
            return wrap_constant_result(tx, getattr(self.example, name)(*consts, **kw))
        if name == "new_tensor" and len(args) == 1:
            from kiln.capture.variables.sym import tensor_of_symbols

            built = tensor_of_symbols(tx, args[0], kwargs, like=self.example)
            if built is not None:
                return built
        if name in DATA_DEPENDENT_METHODS:
            tx.unsupported(f"Tensor.{name}() reads the contents of {self.describe()} into "
                           "Python", hint="keep the value as a tensor inside compiled code")
        if name in UNSUPPORTED_METHODS:
            tx.unsupported(f"Tensor.{name}() inside a compiled function")
        if name == "requires_grad_":
            # a tensor that starts requiring grad inside the graph would be an output of the
            # compiled autograd.Function, not the leaf the program made (torch breaks too)
            flag = [tx.constant_arg(a, "Tensor.requires_grad_ arguments")
                    for a in [*args, *kwargs.values()]]
            if bool(flag[0] if flag else True) != self.example.requires_grad:
                tx.unsupported("Tensor.requires_grad_", hint="set requires_grad outside the "
                               "compiled function")
            return self
        if name == "type" and not args and not kwargs:
            return ConstantVariable(self.example.type())
        if name == "__getitem__":
            return tx.output.call_op(tx, "call_function", operator.getitem, [self, *args], {})
        if name == "__setitem__":
            tx.output.call_op(tx, "call_function", operator.setitem, [self, *args], {})
            return ConstantVariable(None)
        if name == "__iter__":
            from kiln.capture.variables.containers import ListIteratorVariable

            return ListIteratorVariable(self.unpack(tx))
        if name.startswith("__") and name.endswith("__"):
            from kiln.capture.variables.operators import DUNDER_TO_OPERATOR

            op = DUNDER_TO_OPERATOR.get(name)
            if op is not None:
                return tx.output.call_op(tx, "call_function", op, [self, *args], kwargs)
        if getattr(torch.Tensor, name, None) is None:
            tx.raise_user_exception(AttributeError(f"'Tensor' object has no attribute {name!r}"))
        result = tx.output.call_op(tx, "call_method", name, [self, *args], kwargs)
        if is_inplace_method(name) and isinstance(result, TensorVariable):
            return self  # ``x.add_(1) is x``, as in eager
        return result


class TensorMethodVariable(VariableTracker):
    """A bound method of a tensor, not yet called (``f = x.add``)."""

    def __init__(self, tensor: TensorVariable, name: str) -> None:
        super().__init__()
        self.tensor = tensor
        self.name = name

    def python_type(self) -> type:
        return type(torch.Tensor.add.__get__(torch.empty(0)))

    def describe(self) -> str:
        return f"method {self.name} of {self.tensor.describe()}"

    def call(self, tx: InstructionTranslator, args: list[VariableTracker],
             kwargs: dict[str, VariableTracker]) -> VariableTracker:
        return self.tensor.call_method(tx, self.name, args, kwargs)

    def as_function_call(self) -> tuple[Any, VariableTracker]:
        return getattr(torch.Tensor, self.name), self.tensor
