"""Inputs that share memory with a mutated input, compiled as views of one base.

Functionalization treats each input as its own tensor: with ``f(a, b)`` called on two
overlapping views of one tensor, ``a.add_(1)`` would not show through ``b``. torch's AOT
autograd passes such inputs as one "synthetic base" instead; so does kiln: the compiled
function takes the views' common base (their ``_base``, or the input that is the others'
base) in place of the group, and remakes each view inside the traced program with
``as_strided`` from the geometry it had when compiled. A mutation of one view is then a
mutation of the base, seen through the others, and copied back into the real base after the
call; outputs that alias a view come back as views of the base.

The compiled function serves calls whose inputs have the same structure: the same common
base, the same geometry. Any other call (the views now distinct tensors, or other offsets)
runs the function eagerly, which is always right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from kiln.aot.errors import AotUnsupported

Geometry = tuple[tuple[int, ...], tuple[int, ...], int]


def _geometry(t: torch.Tensor) -> Geometry:
    return tuple(t.shape), tuple(t.stride()), t.storage_offset()


def _base_of(t: torch.Tensor) -> torch.Tensor:
    return t._base if t._base is not None else t


def _static(t: torch.Tensor) -> bool:
    return not any(isinstance(n, torch.SymInt)
                   for n in (*t.shape, *t.stride(), t.storage_offset()))


@dataclass(frozen=True)
class _Group:
    """Inputs made from one base: their positions and geometries, the base's geometry."""

    members: tuple[int, ...]
    geometries: tuple[Geometry, ...]
    base_geometry: Geometry
    is_base: tuple[bool, ...]  # the member is the base itself

    def base_for(self, args: Sequence[Any]) -> torch.Tensor | None:
        """The common base of the members in ``args``, when they have this structure."""
        first = args[self.members[0]]
        if not isinstance(first, torch.Tensor):
            return None
        base = _base_of(first)
        if _geometry(base) != self.base_geometry:
            return None
        for i, geometry in zip(self.members, self.geometries):
            arg = args[i]
            if not isinstance(arg, torch.Tensor) or _base_of(arg) is not base or \
                    _geometry(arg) != geometry:
                return None
        return base


class SyntheticBases:
    """How a list of inputs maps to the list the compiled function takes (see the module
    docstring): each group becomes its base, at its first member's position."""

    def __init__(self, args: Sequence[Any], groups: list[list[int]]) -> None:
        self.groups: list[_Group] = []
        for members in groups:
            tensors = [args[i] for i in members]
            base = _base_of(tensors[0])
            if any(_base_of(t) is not base for t in tensors):
                raise AotUnsupported(f"inputs {members} share memory but are not views of one "
                                     "tensor, and the function mutates some of them")
            if not all(_static(t) for t in [base, *tensors]):
                raise AotUnsupported(f"inputs {members} share memory, one of them mutated, "
                                     "and have symbolic sizes")
            self.groups.append(_Group(tuple(members), tuple(_geometry(t) for t in tensors),
                                      _geometry(base), tuple(t is base for t in tensors)))
        grouped = {i: g for g in self.groups for i in g.members}
        # the compiled function's inputs: per original position, ("arg", i) or ("base", g)
        self.layout: list[tuple[str, Any]] = []
        for i in range(len(args)):
            group = grouped.get(i)
            if group is None:
                self.layout.append(("arg", i))
            elif group.members[0] == i:
                self.layout.append(("base", group))

    def select(self, args: Sequence[Any]) -> list[Any] | None:
        """The compiled function's inputs for ``args``; None when their structure differs
        from the one compiled for."""
        bases = {}
        for group in self.groups:
            base = group.base_for(args)
            if base is None:
                return None
            bases[id(group)] = base
        return [args[what] if kind == "arg" else bases[id(what)] for kind, what in self.layout]

    def wrap_fn(self, flat_fn: Callable[..., Any]) -> Callable[..., Any]:
        """``flat_fn`` taking the compiled function's inputs: each group's members are
        remade from their base inside."""
        layout = self.layout

        def with_bases(*inputs: Any) -> Any:
            args: dict[int, Any] = {}
            for (kind, what), value in zip(layout, inputs):
                if kind == "arg":
                    args[what] = value
                    continue
                # as_strided takes absolute storage offsets, so it may start from the
                # value's own base: functionalization only handles a mutation through an
                # as_strided that is the first view of its chain (the traced program runs
                # on a view of each input)
                source = value._base if value._base is not None else value
                for i, (size, stride, offset), is_base in zip(what.members, what.geometries,
                                                             what.is_base):
                    args[i] = value if is_base else source.as_strided(size, stride, offset)
            return flat_fn(*(args[i] for i in range(len(args))))

        return with_bases


def groups_sharing_mutated(args: Sequence[Any], mutated: Sequence[int],
                           may_overlap: Callable[[Any, Any], bool]) -> list[list[int]]:
    """Groups of distinct tensor inputs in one storage where a mutated input may overlap
    another (all the storage's inputs in the group)."""
    by_storage: dict[Any, list[int]] = {}
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            by_storage.setdefault(StorageWeakRef(a.untyped_storage()), []).append(i)
    groups = []
    for members in by_storage.values():
        distinct = [i for i in members if not any(args[i] is args[j] for j in members
                                                    if j < i)]
        if len(distinct) < 2:
            continue
        if any(m in distinct and any(j != m and may_overlap(args[m], args[j])
                                     for j in distinct) for m in mutated):
            groups.append(distinct)
    return groups


__all__ = ["SyntheticBases", "groups_sharing_mutated"]
