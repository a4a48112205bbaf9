"""Guards: what a compiled entry assumed about its inputs, checked before each reuse.

While a frame is traced, every property of an outside value that the trace relied on is
recorded here as a guard *clause* (TENSOR_MATCH, TYPE_MATCH, ID_MATCH, EQUALS_MATCH, LENGTH,
DICT_KEYS, aliasing, global state, module structure). :meth:`GuardBuilder.build` renders them
into one Python function, checks ordered cheapest first, that the entry's dispatcher calls on
every call (the hot path). Only on a miss is each clause evaluated on its own to say *why*
(the slow path, :meth:`GuardSet.failure_reasons`), with torch.compile's texts:

    tensor 'L['a']' size mismatch at index 0. expected 3, actual 2
    expected type of 'L['b']' to be a tensor type, ' but found <class 'int'>
    len(L['x']) == 3

Modules are guarded by identity and, for everything reached through them (submodules,
parameters, buffers), by one *module-structure* clause: a global counter bumped whenever a
module, parameter or buffer is (re)registered anywhere or a parameter's requires_grad
changes (module_state.py). A hit costs one integer comparison however many parameters the
module has; only after the counter moved are the module's parts re-checked one by one.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
from torch.utils._sympy.value_ranges import bound_sympy

from kiln.capture import module_state
from kiln.capture.shapes import contiguous_order, dense_order, has_dense_layout, render
from kiln.capture.sources import ChainedSource, CodeNamespace, LocalSource, Source
from kiln.exc import InternalKilnError
from kiln.marks import DYNAMIC_DIMS

# Clause ranks: cheaper checks run first on the hot path.
RANK_GLOBAL_STATE = 0
RANK_OBJECT = 1
RANK_TENSOR = 2
RANK_SYMBOLIC = 3
RANK_ALIASING = 3
RANK_STRUCTURE = 4


@dataclass
class GuardClause:
    """One check. ``code`` is a boolean Python expression over the frame's arguments (and
    names of ``ns``); ``text`` is how users read it; ``explain`` turns the current value of
    ``source`` into the failure text where that is more precise than ``text``."""

    kind: str
    code: str
    text: str
    rank: int
    source: Source | None = None
    explain: Callable[[Any], str | None] | None = None
    value_code: str | None = None  # how to read ``source``'s value for ``explain``
    # what ``explain`` was made from, as plain data (persist.py rebuilds it in a new process)
    data: Any = None


@dataclass
class TensorSpec:
    """The metadata a TENSOR_MATCH guard fixes. A dynamic dimension's size is None (its
    symbol is guarded by the symbolic guards), and a tensor with one has its layout checked
    instead of its strides: dense, dimensions in ``stride_order`` (``strides`` is None)."""

    py_type: type
    dispatch_keys: Any
    dtype: torch.dtype
    device_index: int
    requires_grad: bool
    sizes: tuple[int | None, ...]
    strides: tuple[int, ...] | None
    stride_order: tuple[int, ...] | None = None

    @staticmethod
    def of(tensor: torch.Tensor, dynamic: list[bool] | None = None) -> TensorSpec:
        dynamic = dynamic or [False] * tensor.dim()
        sizes = tuple(None if d else s for s, d in zip(tensor.size(), dynamic))
        strides = None if any(dynamic) else tuple(tensor.stride())
        order = dense_order(tensor) if any(dynamic) else None
        return TensorSpec(type(tensor), torch._C._dispatch_keys(tensor), tensor.dtype,
                          tensor.get_device(), tensor.requires_grad, sizes, strides, order)

    def shape_code(self, x: str, ns: CodeNamespace) -> str:
        if self.strides is not None:
            return f"{x}.size() == {self.sizes!r} and {x}.stride() == {self.strides!r}"
        checks = [f"{x}.dim() == {len(self.sizes)}"]
        checks += [f"{x}.size()[{i}] == {s}" for i, s in enumerate(self.sizes) if s is not None]
        if self.stride_order == contiguous_order(len(self.sizes)):
            checks.append(f"{x}.is_contiguous()")
        else:
            checks.append(f"{ns.const(has_dense_layout, 'f')}({x}, {self.stride_order!r})")
        return " and ".join(checks)

    def failure(self, name: str, value: Any) -> str | None:
        """torch's TensorCheck order: type, dispatch keys, dtype, device index,
        requires_grad, rank, then per dimension the size and the stride."""
        if type(value) is not self.py_type:
            if not isinstance(value, torch.Tensor):
                return (f"expected type of '{name}' to be a tensor type, ' but found "
                        f"{type(value)}")
            return f"expected type of '{name}' to be {self.py_type}, but found {type(value)}"
        prefix = f"tensor '{name}' "
        keys = torch._C._dispatch_keys(value)
        if keys != self.dispatch_keys:
            return f"{prefix}dispatch key set mismatch. expected {self.dispatch_keys}, " \
                   f"actual {keys}"
        if value.dtype != self.dtype:
            return f"{prefix}dtype mismatch. expected {_dtype_name(self.dtype)}, " \
                   f"actual {_dtype_name(value.dtype)}"
        if value.get_device() != self.device_index:
            return f"{prefix}Tensor device index mismatch. Expected device index to be " \
                   f"{self.device_index}, actual {value.get_device()}"
        if value.requires_grad != self.requires_grad:
            return f"{prefix}requires_grad mismatch. expected requires_grad=" \
                   f"{int(self.requires_grad)}"
        if value.dim() != len(self.sizes):
            return f"{prefix}rank mismatch. expected {len(self.sizes)}, actual {value.dim()}"
        sizes, strides = value.size(), value.stride()
        for i in range(len(self.sizes)):
            if self.sizes[i] is not None and sizes[i] != self.sizes[i]:
                return f"{prefix}size mismatch at index {i}. expected {self.sizes[i]}, " \
                       f"actual {sizes[i]}"
            if self.strides is not None and strides[i] != self.strides[i]:
                return f"{prefix}stride mismatch at index {i}. expected {self.strides[i]}, " \
                       f"actual {strides[i]}"
        if self.strides is None and not has_dense_layout(value, self.stride_order):
            if self.stride_order == contiguous_order(value.dim()):
                return f"{prefix}stride mismatch. expected a contiguous tensor"
            return f"{prefix}stride mismatch. expected a dense tensor with dimensions " \
                   f"ordered {self.stride_order} (innermost first), actual strides " \
                   f"{tuple(value.stride())}"
        return None


def _dtype_name(dtype: torch.dtype) -> str:
    """c10's ScalarType names (Float, Half, BFloat16...)."""
    return _SCALAR_TYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


_SCALAR_TYPE_NAMES = {
    torch.float32: "Float", torch.float64: "Double", torch.float16: "Half",
    torch.bfloat16: "BFloat16", torch.int64: "Long", torch.int32: "Int", torch.int16: "Short",
    torch.int8: "Char", torch.uint8: "Byte", torch.bool: "Bool", torch.complex64: "ComplexFloat",
    torch.complex128: "ComplexDouble", torch.complex32: "ComplexHalf",
}


def global_state_explain(data: tuple[bool, torch.dtype]) -> Callable[[Any], str]:
    """The GLOBAL_STATE failure text for the ``(grad mode, default dtype)`` guarded."""
    grad, dtype = data

    def explain(_: Any) -> str:
        changed = []
        if torch.is_grad_enabled() != grad:
            changed.append("grad_mode")
        if torch.get_default_dtype() != dtype:
            changed.append("default_dtype")
        return "GLOBAL_STATE changed: " + "".join(c + " " for c in changed)

    return explain


def tensor_explain(data: tuple[TensorSpec, str]) -> Callable[[Any], str | None]:
    """The TENSOR_MATCH failure text for ``(spec, source name)``."""
    spec, name = data
    return lambda value: spec.failure(name, value)


@dataclass
class StructuralItem:
    """Something reached through an identity-guarded module: re-checked only when the
    module-state counter moved."""

    source: Source
    obj_ref: Callable[[], Any]
    requires_grad: bool | None = None


class GuardBuilder:
    """Collects guard clauses during one frame compile (deduplicated by kind and source)."""

    def __init__(self, fn_globals: dict[str, Any]) -> None:
        self.fn_globals = fn_globals
        self.clauses: dict[tuple[str, Any], GuardClause] = {}
        self.ns = CodeNamespace()
        self.ns.values["___G"] = fn_globals
        # objects whose death invalidates the entry, with the source each was read from
        self.id_matched: list[tuple[Source, Any]] = []
        self.structural: dict[Source, StructuralItem] = {}
        # (module, name): a class attribute the entry used through the module; an instance
        # attribute of that name would shadow it (checked with the structure)
        self.unshadowed: dict[tuple[int, str], tuple[Callable[[], Any], str,
                                                     Source | None]] = {}
        self.interned: dict[Source, str] = {}
        # names of ``ns`` bound to an object read through a source: the expression that reads
        # it again (a new process rebinds them so: kiln/capture/persist.py)
        self.const_exprs: dict[str, str] = {}
        # (ns name of the compiled graph, its arguments as code), once the backend ran
        self.graph_call: tuple[str, str] | None = None
        self.tensor_sources: list[Source] = []
        self.aliases: list[tuple[Source, Source]] = []

    # --- rendering sources ----------------------------------------------------------------
    def expr(self, source: Source) -> str:
        """``source`` as an expression in generated code; parts reached through an
        identity-guarded module use the module object held by the entry."""
        if source in self.interned:
            return self.interned[source]
        if isinstance(source, ChainedSource):
            return source.wrap(self.expr(source.base))
        return source.expr(self.ns)

    def bind(self, source: Source, value: Any, hint: str) -> str:
        """A name of ``ns`` for ``value``, read from ``source`` (remembered for persist.py)."""
        expr = self.expr(source)
        name = self.ns.const(value, hint)
        self.const_exprs.setdefault(name, expr)
        return name

    def _add(self, key: tuple[str, Any], clause: GuardClause) -> None:
        self.clauses.setdefault(key, clause)

    # --- guard kinds ----------------------------------------------------------------------
    def add_global_state(self) -> None:
        grad = torch.is_grad_enabled()
        dtype = torch.get_default_dtype()
        code = (f"{self.ns.const(torch._C.is_grad_enabled, 'f')}() is {grad} and "
                f"{self.ns.const(torch.get_default_dtype, 'f')}() is "
                f"{self.ns.const(dtype, 'd')}")
        self._add(("GLOBAL_STATE", None),
                  GuardClause("GLOBAL_STATE", code, "GLOBAL_STATE", RANK_GLOBAL_STATE,
                              explain=global_state_explain((grad, dtype)), data=(grad, dtype)))

    def add_type_match(self, source: Source, value: Any) -> None:
        t = type(value)
        code = f"type({self.expr(source)}) is {self.ns.const(t, 't')}"
        text = f"___check_type_id({source.name()}, {id(t)})"
        self._add(("TYPE_MATCH", source), GuardClause("TYPE_MATCH", code, text, RANK_OBJECT,
                                                      source))

    def add_id_match(self, source: Source, value: Any) -> None:
        expr = self.expr(source)
        try:
            weakref.ref(value)
            self.id_matched.append((source, value))
            code = f"id({expr}) == {id(value)}"
        except TypeError:
            code = f"{expr} is {self.ns.const(value, 'o')}"
        text = f"___check_obj_id({source.name()}, {id(value)})"
        self._add(("ID_MATCH", source), GuardClause("ID_MATCH", code, text, RANK_OBJECT, source))

    def add_code_match(self, source: Source, fn: Any) -> None:
        """A function with the same code (``fn.__code__ is code``)."""
        self.add_type_match(source, fn)
        code_name = self.ns.const(fn.__code__, 'code')
        self.const_exprs.setdefault(code_name, f"{self.expr(source)}.__code__")
        code = f"{self.expr(source)}.__code__ is {code_name}"
        self._add(("CODE_MATCH", source), GuardClause(
            "FUNCTION_MATCH", code, f"___check_code({source.name()}.__code__, {id(fn.__code__)})",
            RANK_OBJECT, source))

    def add_constant_match(self, source: Source, value: Any) -> None:
        """CONSTANT_MATCH: identity for None and bools, type and equality otherwise."""
        expr = self.expr(source)
        if value is None or isinstance(value, bool):
            code = f"{expr} is {value}"
            self._add(("EQUALS", source), GuardClause("EQUALS_MATCH", code,
                                                      f"{source.name()} is {value}",
                                                      RANK_OBJECT, source))
            return
        self.add_type_match(source, value)
        if isinstance(value, float) and math.isnan(value):
            code = f"{self.ns.const(math.isnan, 'f')}({expr})"
            text = f"__math_isnan({source.name()})"
        elif isinstance(value, (int, float, str, bytes, complex)) and type(value) in (
                int, float, str, bytes, complex):
            literal = repr(value)
            if isinstance(value, float) and math.isinf(value):
                literal = self.ns.const(value, "v")
            code = f"{expr} == {literal}"
            text = f"{source.name()} == {value!r}"
        elif isinstance(value, (torch.dtype, torch.device)) or type(value).__hash__ is None:
            code = f"{expr} == {self.ns.const(value, 'v')}"
            text = f"str({source.name()}) == {str(value)!r}"
        else:
            code = f"{expr} == {self.ns.const(value, 'v')}"
            text = f"{source.name()} == {value!r}"
        self._add(("EQUALS", source), GuardClause("EQUALS_MATCH", code, text, RANK_OBJECT,
                                                  source))

    def add_length(self, source: Source, value: Any) -> None:
        self.add_type_match(source, value)
        code = f"len({self.expr(source)}) == {len(value)}"
        self._add(("LENGTH", source), GuardClause("LENGTH", code,
                                                  f"len({source.name()}) == {len(value)}",
                                                  RANK_OBJECT, source))

    def add_dict_keys(self, source: Source, value: dict[Any, Any]) -> None:
        self.add_type_match(source, value)
        keys = tuple(value.keys())
        code = f"tuple({self.expr(source)}) == {self.ns.const(keys, 'k')}"
        text = f"list({source.name()}.keys()) == {list(keys)!r}"
        self._add(("DICT_KEYS", source), GuardClause("DICT_KEYS", code, text, RANK_OBJECT,
                                                     source))

    def add_tensor_match(self, source: Source, tensor: torch.Tensor,
                         dynamic: list[bool] | None = None) -> None:
        spec = TensorSpec.of(tensor, dynamic)
        x = self.expr(source)
        if not isinstance(source, LocalSource) or source.freevar_index is not None:
            # bind once: the check reads the value several times
            x = f"(___v := {x})"
            rest = "___v"
        else:
            rest = x
        code = (f"type({x}) is {self.ns.const(spec.py_type, 't')} and "
                f"{self.ns.const(torch._C._dispatch_keys, 'f')}({rest}) == "
                f"{self.ns.const(spec.dispatch_keys, 'k')} and "
                f"{rest}.dtype is {self.ns.const(spec.dtype, 'd')} and "
                f"{rest}.get_device() == {spec.device_index} and "
                f"{rest}.requires_grad is {spec.requires_grad} and "
                f"{spec.shape_code(rest, self.ns)}")
        name = source.name()
        self.tensor_sources.append(source)
        self._add(("TENSOR_MATCH", source),
                  GuardClause("TENSOR_MATCH", code, f"check_tensor({name})", RANK_TENSOR,
                              source, explain=tensor_explain((spec, name)),
                              value_code=self.expr(source), data=(spec, name)))
        self._add_dynamic_marks(source, tensor)

    def _add_dynamic_marks(self, source: Source, tensor: torch.Tensor) -> None:
        """A tensor marked by kiln.mark_dynamic after this compile recompiles (torch's
        ``_dynamo_dynamic_indices`` guard)."""
        marked = getattr(tensor, DYNAMIC_DIMS, None)
        x = self.expr(source)
        if marked is None:
            code = f"not hasattr({x}, {DYNAMIC_DIMS!r})"
            text = f"hasattr({source.name()}, {DYNAMIC_DIMS!r}) == False"
        else:
            dims = "{" + ", ".join(map(str, sorted(marked))) + "}"
            code = f"getattr({x}, {DYNAMIC_DIMS!r}, set()).issubset({dims})"
            text = f"{source.name()}.{DYNAMIC_DIMS}.issubset({dims})"
        self._add(("DYNAMIC_MARKS", source),
                  GuardClause("HASATTR", code, text, RANK_TENSOR, source))

    def add_alias(self, existing: Source, new: Source) -> None:
        """``new`` holds the very tensor ``existing`` holds (one graph input for both)."""
        self.aliases.append((existing, new))
        code = f"{self.expr(existing)} is {self.expr(new)}"
        self._add(("ALIAS", new), GuardClause("ALIAS", code,
                                              f"{existing.name()} is {new.name()}",
                                              RANK_ALIASING, new))

    def add_distinct(self, a: Source, b: Source) -> None:
        """``a`` and ``b`` hold different objects (as they did at compile time)."""
        key = ("DISTINCT", frozenset((a, b)))
        code = f"{self.expr(a)} is not {self.expr(b)}"
        self._add(key, GuardClause("DISTINCT", code, f"{a.name()} is not {b.name()}",
                                   RANK_ALIASING))

    def add_symbolic_guards(self, shape_env: Any,
                            symbol_sources: dict[Any, list[Source]]) -> None:
        """What the symbolic reasoning assumed, over sources: every source of a size symbol
        holds the same value (duck sizing); a symbol the ShapeEnv found equal to another
        (``x + y`` broadcast) or to a constant is guarded so; each free symbol's range
        (sizes 0 and 1 were specialized, so >= 2, narrowed by the branches the trace took);
        and each other guard the ShapeEnv recorded when the trace branched on a symbol,
        rewritten in the free symbols (left out where the ranges already imply it)."""
        own_code = {sym: self.expr(sources[0]) for sym, sources in symbol_sources.items()}
        own_text = {sym: sources[0].name() for sym, sources in symbol_sources.items()}
        # Two symbols found equal: the ShapeEnv keeps one of them, whichever; the guards
        # name the survivor after the earlier source (as in duck sizing, ``later == earlier``)
        order = {sym: i for i, sym in enumerate(symbol_sources)}
        earlier: dict[Any, Any] = {}
        for sym in symbol_sources:
            survivor = shape_env.replace(sym)
            if survivor in order and order[survivor] > order[sym] and survivor not in earlier:
                earlier[survivor] = sym
        code_names = {sym: own_code[earlier.get(sym, sym)] for sym in symbol_sources}
        text_names = {sym: own_text[earlier.get(sym, sym)] for sym in symbol_sources}

        math_name = self.ns.const(math, "m")

        def add(key: Any, code: str, text: str) -> None:
            self._add(key, GuardClause("SHAPE_ENV", code, text, RANK_SYMBOLIC))

        ranges = {}
        for survivor in earlier:
            add(("SYMBOL_REPLACED", survivor), f"{own_code[survivor]} == {code_names[survivor]}",
                f"{own_text[survivor]} == {text_names[survivor]}")
        for sym, sources in symbol_sources.items():
            for other in sources[1:]:
                add(("SYMBOL_EQ", other), f"{self.expr(other)} == {own_code[sym]}",
                    f"{other.name()} == {own_text[sym]}")
            replaced = shape_env.replace(sym)
            if replaced in earlier and earlier[replaced] is sym:
                continue  # guarded above, from the survivor's side
            if replaced != sym:  # equal to an expression of other symbols, or a constant
                _check_known(replaced, code_names)
                add(("SYMBOL_REPLACED", sym), f"{own_code[sym]} == "
                    f"{render(replaced, code_names, math_name)}",
                    f"{own_text[sym]} == {render(replaced, text_names)}")
                continue
            bounds = shape_env.var_to_range.get(sym)
            if bounds is None:
                continue
            ranges[sym] = bounds
            lower, upper = bounds.lower, bounds.upper
            if lower.is_Integer and lower == upper:
                add(("SYMBOL_RANGE", sym), f"{code_names[sym]} == {int(lower)}",
                    f"{text_names[sym]} == {int(lower)}")
                continue
            # torch's int_oo claims to be finite: ask is_Integer
            low = f"{int(lower)} <= " if lower.is_Integer else ""
            high = f" <= {int(upper)}" if upper.is_Integer else ""
            if low or high:
                add(("SYMBOL_RANGE", sym), f"{low}{code_names[sym]}{high}",
                    f"{low}{text_names[sym]}{high}")
        for guard in shape_env.guards:
            expr = shape_env.replace(guard.expr)
            if expr == sympy.true or _implied_by_ranges(expr, ranges):
                continue
            _check_known(expr, code_names)
            add(("SYMBOLIC", str(expr)), render(expr, code_names, math_name),
                render(expr, text_names))

    def add_not_shadowed(self, name: str) -> None:
        """A builtin the frame used is not shadowed by a global of the same name."""
        code = f"{name!r} not in ___G"
        self._add(("BUILTIN", name), GuardClause("BUILTIN_MATCH", code,
                                                 f"{name!r} not in G", RANK_OBJECT))

    def add_module_root(self, source: Source, module: Any) -> None:
        """An identity-guarded module: what is reached through it is structural."""
        self.add_id_match(source, module)
        if source not in self.interned:
            self.interned[source] = self.expr(source) if isinstance(source, LocalSource) \
                else self.bind(source, module, "m")

    def add_structural(self, source: Source, obj: Any, *, intern: bool = False) -> None:
        if source in self.structural:
            return
        try:
            ref = weakref.ref(obj)
        except TypeError:
            ref = (lambda o: lambda: o)(obj)
        requires_grad = obj.requires_grad if isinstance(obj, torch.Tensor) else None
        self.structural[source] = StructuralItem(source, ref, requires_grad)
        if intern:
            self.interned[source] = self.bind(source, obj, "m")

    def add_class_attribute_used(self, source: Source | None, obj: Any, name: str,
                                 structural: bool) -> None:
        """``obj.name`` resolved to the class's attribute: an instance attribute of that name
        must not appear. For modules this is checked with the structure (module_state.py
        counts such assignments); for other objects on every call."""
        if structural:
            key = (id(obj), name)
            if key not in self.unshadowed:
                self.unshadowed[key] = (weakref.ref(obj), name, source)
            return
        if source is None or not hasattr(obj, "__dict__"):
            return
        code = f"{name!r} not in {self.expr(source)}.__dict__"
        self._add(("NOT_SHADOWED", source, name),
                  GuardClause("NO_HASATTR", code, f"{name!r} not in {source.name()}.__dict__",
                              RANK_OBJECT, source))

    # --- build ----------------------------------------------------------------------------
    def build(self, params: list[str]) -> GuardSet:
        clauses = list(self.clauses.values())
        if len(self.tensor_sources) > 1:
            clauses.append(self._no_aliasing_clause())
        if self.structural or self.unshadowed:
            clauses.append(self._structure_clause(params))
        clauses.sort(key=lambda c: c.rank)
        id_matched = [(s, self.expr(s), weakref.ref(v)) for s, v in self.id_matched]
        return GuardSet(clauses, self.ns, params, id_matched)

    def _no_aliasing_clause(self) -> GuardClause:
        exprs = [self.expr(s) for s in self.tensor_sources]
        if len(exprs) <= 4:
            code = " and ".join(f"{a} is not {b}" for i, a in enumerate(exprs)
                                for b in exprs[i + 1:])
        else:
            code = f"len({{{', '.join(f'id({e})' for e in exprs)}}}) == {len(exprs)}"
        names = [s.name() for s in self.tensor_sources]
        return GuardClause("NO_TENSOR_ALIASING", code,
                           f"no aliasing among {', '.join(names)}", RANK_ALIASING)

    def _structure_clause(self, params: list[str]) -> GuardClause:
        # re-read from the frame's arguments, not through the objects this entry holds
        checks = [(compile_expr(item.source.expr(self.ns), self.ns, params), item.obj_ref,
                   item.requires_grad) for item in self.structural.values()]
        unshadowed = [(ref, name) for ref, name, _ in self.unshadowed.values()]
        return structure_clause(checks, unshadowed, self.ns, params)


StructureCheck = tuple[Callable[..., Any], Callable[[], Any], "bool | None"]


def structure_clause(checks: list[StructureCheck],
                     unshadowed: list[tuple[Callable[[], Any], str]], ns: CodeNamespace,
                     params: list[str]) -> GuardClause:
    """The MODULE_STRUCTURE clause: one comparison with the module-state counter; after it
    moved, each ``(getter, object ref, requires_grad)`` of ``checks`` re-reads its object from
    the frame's arguments and each ``(object ref, name)`` of ``unshadowed`` must still have
    no instance attribute ``name``."""
    seen = [module_state.version()]

    def revalidate(*args: Any) -> bool:
        for obj_ref, name in unshadowed:
            obj = obj_ref()
            if obj is None or name in obj.__dict__:
                return False
        for getter, obj_ref, requires_grad in checks:
            try:
                current = getter(*args)
            except Exception:
                return False
            if current is not obj_ref():
                return False
            if requires_grad is not None and current.requires_grad != requires_grad:
                return False
        seen[0] = module_state.version()
        return True

    def explain(_: Any) -> str:
        return "module structure changed (a submodule, parameter or buffer was replaced, " \
               "a parameter's requires_grad changed, or a method was overridden)"

    ns.values["___structure_seen"] = seen
    ns.values["___structure_revalidate"] = revalidate
    ns.values["___SV"] = module_state.VERSION
    arglist = ", ".join(["___closure", *params])
    code = f"(___SV[0] == ___structure_seen[0] or ___structure_revalidate({arglist}))"
    return GuardClause("MODULE_STRUCTURE", code, "module structure", RANK_STRUCTURE,
                       explain=explain)


def compile_expr(expr: str, ns: CodeNamespace, params: list[str]) -> Callable[..., Any]:
    arglist = ", ".join(["___closure", *params])
    source = f"def ___get({arglist}):\n    return {expr}\n"
    # Every function of an entry is defined in the one namespace dict: dropping the entry
    # clears it, which frees the compiled graph at once (no reference cycle survives).
    exec(compile(source, "<kiln guard>", "exec"), ns.values)
    return ns.values.pop("___get")


@dataclass
class GuardSet:
    """The clauses of one cache entry, rendered into a fast check function."""

    clauses: list[GuardClause]
    ns: CodeNamespace
    params: list[str]
    # (source, expression, weak reference) of each identity-guarded object
    id_matched: list[tuple[Source, str, weakref.ref]]
    _checks: list[Callable[..., bool]] | None = field(default=None, repr=False)
    _id_getters: list[tuple[Callable[..., Any], weakref.ref]] | None = field(
        default=None, repr=False)
    _guard: Callable[..., bool] | None = field(default=None, repr=False)

    def id_matched_objects(self) -> list[Any]:
        return [obj for _, _, ref in self.id_matched if (obj := ref()) is not None]

    def id_checks(self, args: tuple[Any, ...]) -> list[bool]:
        """For each object identity-guarded through a frame local (``L['self']``), whether
        this call's object is the same one."""
        if self._id_getters is None:
            self._id_getters = [(compile_expr(expr, self.ns, self.params), ref)
                                for source, expr, ref in self.id_matched
                                if isinstance(source, LocalSource)]
        result = []
        for getter, ref in self._id_getters:
            try:
                result.append(getter(*args) is ref())
            except Exception:
                result.append(False)
        return result

    def source_code(self) -> str:
        arglist = ", ".join(["___closure", *self.params])
        body = " and\n            ".join(f"({c.code})" for c in self.clauses) or "True"
        return (f"def ___guard({arglist}):\n"
                f"    try:\n"
                f"        return ({body})\n"
                f"    except Exception:\n"
                f"        return False\n")

    def compile(self) -> Callable[..., bool]:
        """The check function (made once: the frame cache tries a persisted entry's guard
        before it becomes the entry's)."""
        if self._guard is None:
            exec(compile(self.source_code(), "<kiln guard>", "exec"), self.ns.values)
            self._guard = self.ns.values.pop("___guard")
        return self._guard

    def failure_reasons(self, args: tuple[Any, ...], verbose: bool) -> list[str]:
        """The clauses that fail for ``args`` (``(closure, *frame args)``), as texts: the first
        one, or all of them when ``verbose``."""
        if self._checks is None:
            self._checks = [_compile_clause(c, self.ns, self.params) for c in self.clauses]
        reasons = []
        for clause, check in zip(self.clauses, self._checks):
            try:
                ok = bool(check(*args))
            except Exception:
                ok = False
            if ok:
                continue
            text = clause.text
            if clause.explain is not None:
                value = None
                if clause.value_code is not None:
                    try:
                        value = compile_expr(clause.value_code, self.ns, self.params)(*args)
                    except Exception:
                        value = None
                text = clause.explain(value) or text
            reasons.append(text)
            if not verbose:
                break
        return reasons

    def describe(self) -> list[str]:
        return [c.text for c in self.clauses]


def _compile_clause(clause: GuardClause, ns: CodeNamespace,
                    params: list[str]) -> Callable[..., bool]:
    return compile_expr(clause.code, ns, params)


__all__ = ["GuardBuilder", "GuardSet", "GuardClause", "TensorSpec"]


def _check_known(expr: Any, names: dict[Any, str]) -> None:
    unknown = expr.free_symbols - set(names)
    if unknown:
        raise InternalKilnError(f"a shape guard on symbols kiln has no source for: {expr}")


def _implied_by_ranges(expr: Any, ranges: dict[Any, Any]) -> bool:
    """Whether the symbols' ranges alone make ``expr`` true (``s0 > 5`` once s0's range
    starts at 6): such a guard repeats a range guard."""
    try:
        bound = bound_sympy(expr, ranges)
    except Exception:  # an expression value-range analysis cannot bound
        return False
    return bool(bound.lower == sympy.true and bound.upper == sympy.true)
