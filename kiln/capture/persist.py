"""The persistent frame cache: entries compiled by an earlier process (torch's "precompile").

A warm process that finds every graph in the FX graph and AOT autograd caches still
*captures* each frame before it can look them up, and capture needs torch's fake tensors,
whose first use imports the whole of ``torch._dynamo`` (most of a warm start's time). This
module stores, next to those caches, what a frame compile produced, so that a new process
can rebuild the cache entry without tracing at all:

* the entry's code (the statements of ``make_entry``) and its guard clauses, as text;
* for every name of the entry's namespace, how to bind it again (a :class:`Binding`): an
  object importable by module and qualified name, a picklable value, the expression over
  the frame's arguments that read it (a submodule, a parameter, a code object), or the
  compiled graph by its AOT autograd entry;
* what each object read by expression must be like now (a :class:`Descriptor`): the same
  ``nn.Module`` class without hooks, a tensor with the same metadata, the same bytecode;
* the SHA-256 of each user source file the trace read code from.

Identity guards (``id(L['self']) == 1403...``) cannot hold in another process: they are
re-rendered for the objects of the call that loads the entry, after those objects matched
their descriptors, and the module-structure clause is rebuilt over them. Only complete
frames are persisted: no graph break, no eager fallback, the ``"kiln"`` backend, every
namespace value bindable (symbolic sizes are fine: their guards are text over sources like
the others, and the graphs take sizes as arguments). Anything that does not hold makes the entry a
miss, and the frame is compiled as usual. Entries live under ``cache_dir()/frames``, keyed
by the code object's fingerprint, kiln's sources, the versions and kiln.config.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import sys
import sysconfig
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from kiln.capture import guards as guards_mod
from kiln.capture.frame_code import make_entry
from kiln.capture.guards import GuardClause, GuardSet, TensorSpec
from kiln.capture.shapes import DYNAMIC
from kiln.capture.sources import CodeNamespace, LocalSource
from kiln.capture.variables.nn_module import has_hooks
from kiln.counters import counters

log = logging.getLogger("kiln.cache")

FORMAT = 1
MAX_ENTRIES = 8  # persisted entries kept per code object (the newest)
# namespace names the guard builder regenerates (the module-structure clause) or exec adds
_REGENERATED = {"__builtins__", "___structure_seen", "___structure_revalidate", "___SV"}


class NotPersistable(Exception):
    """Why a compiled frame cannot be stored for another process."""


# --- descriptors: what an object must be, in any process ----------------------------------

Descriptor = tuple[Any, ...]


def _ref_of(obj: Any) -> tuple[str, str] | None:
    """``(module, qualified name)`` that resolves to ``obj`` itself, or None."""
    module = getattr(obj, "__module__", None)
    for name in (getattr(obj, "__qualname__", None), getattr(obj, "__name__", None)):
        if isinstance(module, str) and isinstance(name, str) and "<" not in name and \
                _resolve(module, name) is obj:
            return module, name
    return None


def _resolve(module: str, qualname: str) -> Any:
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part, None)
    return obj


def code_fingerprint(code: types.CodeType) -> str:
    """A hash of what a code object executes (its bytecode, constants, names and flags),
    equal across processes for the same source (``marshal`` output is not: it depends on
    reference counts)."""
    digest = hashlib.sha256()

    def feed(c: types.CodeType) -> None:
        digest.update(c.co_code)
        for attr in ("co_names", "co_varnames", "co_freevars", "co_cellvars", "co_argcount",
                     "co_posonlyargcount", "co_kwonlyargcount", "co_flags", "co_name",
                     "co_qualname"):
            digest.update(repr(getattr(c, attr, None)).encode())
        for const in c.co_consts:
            if isinstance(const, types.CodeType):
                feed(const)
            elif isinstance(const, frozenset):
                digest.update(repr(sorted(map(repr, const))).encode())
            else:
                digest.update(f"{type(const).__name__}:{const!r}".encode())

    feed(code)
    return digest.hexdigest()


_PLAIN = (int, float, str, bytes, bool, complex, type(None), torch.dtype, torch.device,
          torch.Size, torch._C.DispatchKeySet)


def _plain(value: Any) -> bool:
    if type(value) in (tuple, frozenset):
        return all(_plain(v) for v in value)
    return type(value) in _PLAIN


def describe(value: Any) -> Descriptor:
    """What ``value`` is, as data that another process can check (or rebuild from)."""
    if isinstance(value, types.ModuleType):
        if sys.modules.get(value.__name__) is value:
            return ("module", value.__name__)
    elif isinstance(value, dict) and isinstance(value.get("__name__"), str) and \
            getattr(sys.modules.get(value["__name__"]), "__dict__", None) is value:
        return ("globals", value["__name__"])
    elif isinstance(value, nn.Module):
        ref = _ref_of(type(value))
        if ref is not None:
            if has_hooks(value):
                raise NotPersistable(f"{type(value).__qualname__} has hooks")
            return ("nn_module", ref)
    elif isinstance(value, torch.Tensor):
        if type(value) in (torch.Tensor, nn.Parameter) and not value.is_meta:
            return ("tensor", TensorSpec.of(value))
    elif isinstance(value, types.CodeType):
        return ("code", code_fingerprint(value))
    elif _plain(value):
        return ("value", pickle.dumps(value))
    else:
        ref = _ref_of(value)
        if ref is not None:
            return ("ref", *ref)
    raise NotPersistable(f"no way to find {type(value).__name__} {value!r:.60} again")


def matches(descriptor: Descriptor, value: Any) -> bool:
    """Whether ``value`` is what ``descriptor`` describes."""
    kind = descriptor[0]
    if kind == "module":
        return isinstance(value, types.ModuleType) and value.__name__ == descriptor[1]
    if kind == "globals":
        return value is getattr(sys.modules.get(descriptor[1]), "__dict__", None)
    if kind == "nn_module":
        return type(value) is _resolve(*descriptor[1]) and not has_hooks(value)
    if kind == "tensor":
        return isinstance(value, torch.Tensor) and TensorSpec.of(value) == descriptor[1]
    if kind == "code":
        return isinstance(value, types.CodeType) and code_fingerprint(value) == descriptor[1]
    if kind == "value":
        expected = pickle.loads(descriptor[1])
        return type(value) is type(expected) and value == expected
    if kind == "ref":
        return value is _resolve(descriptor[1], descriptor[2])
    return False


def rebuild(descriptor: Descriptor) -> Any:
    """The object a static descriptor names in this process (KeyError when it has none)."""
    kind = descriptor[0]
    if kind == "module" and descriptor[1] in sys.modules:
        return sys.modules[descriptor[1]]
    if kind == "globals" and descriptor[1] in sys.modules:
        return sys.modules[descriptor[1]].__dict__
    if kind == "value":
        return pickle.loads(descriptor[1])
    if kind == "ref":
        obj = _resolve(descriptor[1], descriptor[2])
        if obj is not None:
            return obj
    raise KeyError(f"{descriptor[:3]!r:.80} is not in this process")


# --- the stored form ----------------------------------------------------------------------------

@dataclass
class Binding:
    """How one name of the entry's namespace gets its value in a new process: ``how`` is
    ``"globals"`` (the frame function's globals), ``"static"`` (``data`` is a descriptor to
    rebuild), ``"expr"`` (``data`` is an expression over the frame's arguments and earlier
    names; the value read must match the descriptor ``check``) or ``"graph"`` (``data`` is
    the AOT autograd entry ``(key, name)`` of the compiled graph)."""

    name: str
    how: str
    data: Any
    check: Descriptor | None = None


@dataclass
class StoredClause:
    """A guard clause as text. An identity clause has ``id_expr`` (the expression whose
    object's id it checks: re-rendered for the loading call's object, which must match
    ``id_check``) and ``local`` (the frame local it reads, for the cache-limit count)."""

    kind: str
    code: str
    text: str
    rank: int
    value_code: str | None = None
    data: Any = None
    id_expr: str | None = None
    id_check: Descriptor | None = None
    local: str | None = None


@dataclass
class PersistedFrame:
    params: list[str]
    bindings: list[Binding]
    clauses: list[StoredClause]
    # the module-structure clause: (expression, requires_grad, descriptor) per object reached
    # through an identity-guarded module, and (expression, name) per class attribute that an
    # instance attribute must not shadow; None when the frame has no such clause
    structure: list[tuple[str, bool | None, Descriptor]] | None
    unshadowed: list[tuple[str, str]]
    body: list[str]
    label: str
    files: dict[str, str]  # user source file -> SHA-256 of its contents
    frame_state: tuple[dict[str, Any], dict[str, Any]] = field(default_factory=lambda: ({}, {}))


# --- recording (the compiling process) ----------------------------------------------------------

def record(fn: types.FunctionType, builder: Any, guard_set: GuardSet, body: list[str],
           traced_codes: set[types.CodeType], label: str) -> PersistedFrame | None:
    """The persisted form of a frame just compiled, or None (with the reason logged) when
    another process could not rebuild it."""
    try:
        return _record(fn, builder, guard_set, body, traced_codes, label)
    except NotPersistable as e:
        counters["frames"]["persist_skipped"] += 1
        log.info("kiln frame cache: %s is not persisted: %s", label, e)
        return None


def _record(fn: types.FunctionType, builder: Any, guard_set: GuardSet, body: list[str],
            traced_codes: set[types.CodeType], label: str) -> PersistedFrame:
    ns_values = guard_set.ns.values
    bindings = []
    for name, value in ns_values.items():
        if name in _REGENERATED:
            continue
        if name == "___G":
            bindings.append(Binding(name, "globals", None))
        elif name in builder.const_exprs:
            bindings.append(Binding(name, "expr", builder.const_exprs[name], describe(value)))
        elif hasattr(value, "_kiln_aot_entry"):
            bindings.append(Binding(name, "graph", tuple(value._kiln_aot_entry)))
        elif name.startswith("___graph"):
            why = getattr(value, "_kiln_not_loadable", None) or "not an AOT autograd forward"
            raise NotPersistable(f"the compiled graph cannot be loaded without tracing: {why}")
        else:
            descriptor = describe(value)
            if descriptor[0] in ("nn_module", "tensor", "code"):
                raise NotPersistable(f"{name} ({type(value).__name__}) was not read from the "
                                     "frame's arguments")
            bindings.append(Binding(name, "static", descriptor))
    id_exprs = {source: (expr, ref) for source, expr, ref in guard_set.id_matched}
    clauses = []
    structure = None
    for clause in guard_set.clauses:
        if clause.kind == "MODULE_STRUCTURE":
            structure = _record_structure(builder, guard_set.ns)
            continue
        if clause.explain is not None and clause.data is None:
            raise NotPersistable(f"a {clause.kind} guard explains itself with a function")
        stored = StoredClause(clause.kind, clause.code, clause.text, clause.rank,
                              clause.value_code, clause.data)
        if clause.kind == "ID_MATCH" and clause.source in id_exprs:
            expr, ref = id_exprs[clause.source]
            stored.id_expr, stored.id_check = expr, describe(ref())
            if isinstance(clause.source, LocalSource):
                stored.local = clause.source.local_name
        clauses.append(stored)
    unshadowed = []
    for _, name, source in builder.unshadowed.values():
        if source is None:
            raise NotPersistable(f"the class attribute {name} was read without a source")
        unshadowed.append((builder.expr(source), name))
    mutated = _mutated_inputs(builder, ns_values)
    if mutated:
        # the loaded forward cannot run calls whose inputs share memory with a mutated one
        # (kiln.aot.api.load_forward): such calls fail this clause and are compiled
        from kiln.aot.api import shares_memory_with_mutated

        check = "___shares_memory_with_mutated"
        bindings.append(Binding(check, "static", describe(shares_memory_with_mutated)))
        _, inputs = builder.graph_call
        clauses.append(StoredClause(
            "NO_MUTATED_INPUT_ALIASING", f"not {check}(({inputs},), {mutated!r})",
            f"no graph input shares memory with a mutated one ({list(mutated)})",
            guards_mod.RANK_ALIASING))
    files = _source_files([fn.__code__, *traced_codes], ns_values)
    return PersistedFrame(list(guard_set.params), bindings, clauses, structure, unshadowed,
                          list(body), label, files)


def _mutated_inputs(builder: Any, ns_values: dict[str, Any]) -> tuple[int, ...]:
    """The graph inputs (positions) the compiled graph mutates, or () without a graph."""
    if builder.graph_call is None:
        return ()
    graph = ns_values.get(builder.graph_call[0])
    return tuple(getattr(graph, "_kiln_aot_mutated", ()))


def _record_structure(builder: Any, ns: CodeNamespace) -> list[tuple[str, bool | None, Any]]:
    result = []
    for item in builder.structural.values():
        obj = item.obj_ref()
        result.append((item.source.expr(ns), item.requires_grad, describe(obj)))
    return result


def _covered_roots() -> tuple[str, ...]:
    """Folders whose files the cache key's versions cover (torch, kiln, the stdlib)."""
    import kiln

    return (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(kiln.__file__) + os.sep,
            sysconfig.get_paths()["stdlib"] + os.sep)


def _source_files(codes: list[types.CodeType], ns_values: dict[str, Any]) -> dict[str, str]:
    """The user source files the entry depends on: those of the traced code and of the
    classes and functions it names (torch's, kiln's and the standard library's are covered
    by the versions in the key)."""
    paths = {c.co_filename for c in codes}
    for value in ns_values.values():
        target = type(value) if isinstance(value, nn.Module) else value
        module = sys.modules.get(getattr(target, "__module__", None) or "")
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and isinstance(target, (type, types.FunctionType)):
            paths.add(path)
    files = {}
    covered = _covered_roots()
    for path in sorted(paths):
        if path.startswith(covered):
            continue
        digest = file_digest(path)
        if digest is None:
            raise NotPersistable(f"the traced code's file {path} cannot be read")
        files[path] = digest
    return files


_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: str) -> str | None:
    """SHA-256 of a file's contents (memoized per path, size and modification time)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = (path, stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        try:
            with open(path, "rb") as f:
                _digests[key] = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return None
    return _digests[key]


# --- loading (a new process) ----------------------------------------------------------------------

class Mismatch(Exception):
    """A persisted entry does not fit this call (the reason is the message)."""


def instantiate(persisted: PersistedFrame, fn: types.FunctionType,
                call_args: tuple[Any, ...]) -> GuardSet:
    """The guard set of ``persisted`` for the objects of this call (``(closure, *args)``);
    raises Mismatch when they do not match what the entry assumed. The compiled graphs are
    not loaded yet (:func:`entry_code`, once the guard passed)."""
    for path, digest in persisted.files.items():
        if file_digest(path) != digest:
            raise Mismatch(f"{path} changed")
    params = persisted.params
    ns = CodeNamespace()
    values = ns.values
    for binding in persisted.bindings:
        if binding.how == "globals":
            values[binding.name] = fn.__globals__
        elif binding.how == "static":
            try:
                values[binding.name] = rebuild(binding.data)
            except KeyError as e:
                raise Mismatch(str(e)) from None
        elif binding.how == "expr":
            value = _read(binding.data, ns, params, call_args)
            if not matches(binding.check, value):
                raise Mismatch(f"{binding.data} is not what it was ({binding.check[0]})")
            values[binding.name] = value
    clauses = []
    id_matched = []
    for stored in persisted.clauses:
        code = stored.code
        if stored.id_expr is not None:
            obj = _read(stored.id_expr, ns, params, call_args)
            if not matches(stored.id_check, obj):
                raise Mismatch(f"{stored.id_expr} is not what it was ({stored.id_check[0]})")
            code = f"id({stored.id_expr}) == {id(obj)}"
            source = LocalSource(stored.local) if stored.local is not None else None
            id_matched.append((source, stored.id_expr, weakref.ref(obj)))
        clauses.append(GuardClause(stored.kind, code, stored.text, stored.rank,
                                   explain=_explain(stored), value_code=stored.value_code,
                                   data=stored.data))
    if persisted.structure is not None:
        clauses.append(_structure(persisted, ns, params, call_args))
    clauses.sort(key=lambda c: c.rank)
    return GuardSet(clauses, ns, params, id_matched)


def entry_code(persisted: PersistedFrame, guard_set: GuardSet,
               load_graph: Callable[[str, str], Any]) -> Callable[..., Any]:
    """The entry code of ``persisted`` in ``guard_set``'s namespace, its compiled graphs
    loaded by ``load_graph(aot_key, name)``; raises Mismatch when one is gone."""
    values = guard_set.ns.values
    for binding in persisted.bindings:
        if binding.how == "graph":
            graph = load_graph(*binding.data)
            if graph is None:
                raise Mismatch(f"the graph's AOT autograd entry {binding.data[0]} is gone")
            values[binding.name] = graph
    return make_entry(tuple(persisted.params), persisted.body, values,
                      f"persisted {persisted.label}")


def _read(expr: str, ns: CodeNamespace, params: list[str], call_args: tuple[Any, ...]) -> Any:
    try:
        return guards_mod.compile_expr(expr, ns, params)(*call_args)
    except Exception as e:
        raise Mismatch(f"cannot read {expr}: {e}") from None


def _explain(stored: StoredClause) -> Callable[[Any], str | None] | None:
    if stored.data is None:
        return None
    if stored.kind == "TENSOR_MATCH":
        return guards_mod.tensor_explain(stored.data)
    if stored.kind == "GLOBAL_STATE":
        return guards_mod.global_state_explain(stored.data)
    return None


def _structure(persisted: PersistedFrame, ns: CodeNamespace, params: list[str],
               call_args: tuple[Any, ...]) -> GuardClause:
    checks = []
    for expr, requires_grad, descriptor in persisted.structure or []:
        getter = guards_mod.compile_expr(expr, ns, params)
        try:
            obj = getter(*call_args)
        except Exception as e:
            raise Mismatch(f"cannot read {expr}: {e}") from None
        if not matches(descriptor, obj):
            raise Mismatch(f"{expr} is not what it was ({descriptor[0]})")
        try:
            ref: Callable[[], Any] = weakref.ref(obj)
        except TypeError:
            ref = (lambda o: lambda: o)(obj)
        checks.append((getter, ref, requires_grad))
    unshadowed = []
    for expr, name in persisted.unshadowed:
        obj = _read(expr, ns, params, call_args)
        if name in getattr(obj, "__dict__", {}):
            raise Mismatch(f"{expr}.{name} is an instance attribute now")
        unshadowed.append((weakref.ref(obj), name))
    return guards_mod.structure_clause(checks, unshadowed, ns, params)


_DYNAMIC_MARK = "<dynamic>"


def frame_state_snapshot(sizes: dict[str, Any], scalars: dict[str, Any]
                         ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The automatic-dynamic state (shapes.FrameState) as plain data: DYNAMIC, for a whole
    source or one dimension, as a marker string."""
    def plain(v: Any) -> Any:
        if v is DYNAMIC:
            return _DYNAMIC_MARK
        return tuple(plain(x) for x in v) if isinstance(v, tuple) else v

    return {k: plain(v) for k, v in sizes.items()}, {k: plain(v) for k, v in scalars.items()}


def frame_state_restore(snapshot: tuple[dict[str, Any], dict[str, Any]]
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
    def back(v: Any) -> Any:
        if v == _DYNAMIC_MARK:
            return DYNAMIC
        return tuple(back(x) for x in v) if isinstance(v, tuple) else v

    return {k: back(v) for k, v in snapshot[0].items()}, \
        {k: back(v) for k, v in snapshot[1].items()}


__all__ = ["PersistedFrame", "Binding", "StoredClause", "NotPersistable", "record",
           "instantiate", "entry_code", "describe", "matches", "code_fingerprint", "file_digest",
           "frame_state_snapshot", "frame_state_restore"]
