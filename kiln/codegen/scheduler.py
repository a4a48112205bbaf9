"""The scheduler: lowered steps → kernels (groups of fused computed buffers) and extern calls,
in an order that respects every dependency, with the buffers each kernel keeps local.

Each :class:`~kiln.codegen.ir.ComputedBuffer` iterates over an *iteration space*: its size
(pointwise) or the full size of its reduction, with size-1 dims dropped (``dims``), of which
the positions ``rdims`` are reduced. A kernel is a set of buffers over one space:

* *full* members: pointwise over all of ``dims``;
* *reduction* members: reducing ``rdims``, one result per outer point;
* *outer* members: pointwise over the outer dims only (``mean = sum / n``).

A buffer joins an earlier kernel when its space matches and each read it makes of that
kernel's members is of the element being computed at the same point (the same outer point,
for reduction and outer members); reads of everything else must be computed before the kernel
runs. Softmax, LayerNorm and RMSNorm then become one kernel per row: reductions, then the
pointwise output, with the row read from memory once. Reduction and outer members that
nothing outside their kernel reads stay in registers (``local``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import sympy

from kiln.codegen import ir
from kiln.codegen.ir import Buffer, ComputedBuffer, ExternCall, Reduction
from kiln.codegen.lowering import LoweredGraph

FULL, REDUCTION, OUTER = "full", "reduction", "outer"


def loop_var(d: int) -> sympy.Symbol:
    return sympy.Symbol(f"x{d}", integer=True, nonnegative=True)


@dataclasses.dataclass
class Member:
    """A computed buffer inside a kernel."""

    buffer: ComputedBuffer
    kind: str


@dataclasses.dataclass
class Kernel:
    """Fused members over one iteration space (see the module docstring)."""

    name: str
    dims: list[ir.Expr]
    rdims: tuple[int, ...]
    members: list[Member]
    local: set[str] = dataclasses.field(default_factory=set)

    @property
    def outer_positions(self) -> list[int]:
        return [d for d in range(len(self.dims)) if d not in self.rdims]

    def vars(self) -> list[sympy.Symbol]:
        return [loop_var(d) for d in range(len(self.dims))]

    def index_of(self, member: Member) -> ir.Index:
        """The member's own index (its full index, for a reduction) in the kernel's loop
        variables."""
        return space_index(member.buffer, self.vars() if member.kind != OUTER else
                           [v for d, v in enumerate(self.vars()) if d not in self.rdims])

    def store_offset(self, member: Member) -> ir.Expr:
        """Where the member's element at the current point is stored."""
        index = self.index_of(member)
        body = member.buffer.body
        if isinstance(body, Reduction):
            index = body.output_index(index)
        return member.buffer.layout.offset_of(index)

    def value(self, member: Member) -> ir.Value:
        """The member's value at the current point (for a reduction: the value reduced)."""
        return member.buffer.body.inner(self.index_of(member))


def space(buf: ComputedBuffer) -> tuple[list[ir.Expr], tuple[int, ...]]:
    """The iteration space of ``buf``: sizes with 1s dropped, and the reduced positions."""
    full, reduced = buf.full_size, buf.reduced
    keep = [d for d, s in enumerate(full) if s != 1]
    return [full[d] for d in keep], tuple(i for i, d in enumerate(keep) if d in reduced)


def space_index(buf: ComputedBuffer, variables: list[Any]) -> ir.Index:
    """``buf``'s own (full) index for loop variables over its space with 1s dropped."""
    it = iter(variables)
    return [sympy.Integer(0) if s == 1 else next(it) for s in buf.full_size]


@dataclasses.dataclass
class Schedule:
    """What the wrapper runs, in order: kernels and extern calls."""

    steps: list[Kernel | ExternCall]
    graph: LoweredGraph


def _same(a: ir.Expr, b: ir.Expr) -> bool:
    return a == b or sympy.expand(a - b) == 0


class Scheduler:
    def __init__(self, graph: LoweredGraph) -> None:
        self.graph = graph
        self.steps: list[Kernel | ExternCall] = []
        self.position: dict[str, int] = {}  # storage name -> index of the step making it
        self.kernel_of: dict[str, Kernel] = {}
        self._kernels = 0

    def run(self) -> Schedule:
        for step in self.graph.steps:
            if isinstance(step, ExternCall):
                self.steps.append(step)
                for out in step.output_buffers():
                    self.position[out.name] = len(self.steps) - 1
            else:
                self._place(step)
        self._mark_local()
        return Schedule(self.steps, self.graph)

    # --- fusion -------------------------------------------------------------------------------

    def _place(self, buf: ComputedBuffer) -> None:
        """Into the latest kernel holding something ``buf`` reads, else the latest one that
        reads what ``buf`` reads (one pass over shared inputs), else a kernel of its own."""
        reads = {name for name, _ in ir.loads(self._probe(buf))}
        for horizontal in (False, True):
            for position in range(len(self.steps) - 1, -1, -1):
                kernel = self.steps[position]
                if not isinstance(kernel, Kernel):
                    continue
                kind = self._kind_in(kernel, buf)
                if kind is None:
                    continue
                members = {m.buffer.name for m in kernel.members}
                if horizontal:
                    if not self._shares_inputs(kernel, reads) or \
                            (kind == FULL and _leading_reduction(kernel)):
                        continue  # a column reduction walks rows in tiles: poor for the rest
                elif not reads & members:
                    continue
                if self._can_join(kernel, position, buf, kind, reads):
                    self._join(kernel, position, buf, kind)
                    return
        dims, rdims = space(buf)
        kernel = Kernel(f"kernel{self._kernels}", dims, rdims, [])
        self._kernels += 1
        self.steps.append(kernel)
        self._join(kernel, len(self.steps) - 1, buf, REDUCTION if rdims or
                   isinstance(buf.body, Reduction) else FULL)

    def _probe(self, buf: ComputedBuffer) -> ir.Value:
        dims, _ = space(buf)
        return buf.body.inner(space_index(buf, [loop_var(d) for d in range(len(dims))]))

    def _kind_in(self, kernel: Kernel, buf: ComputedBuffer) -> str | None:
        dims, rdims = space(buf)
        if isinstance(buf.body, Reduction):
            if dims == kernel.dims and (rdims == kernel.rdims or not kernel.rdims) and rdims \
                    and all(m.kind == FULL for m in kernel.members if not kernel.rdims):
                return REDUCTION
            return None
        if dims == kernel.dims:
            return FULL
        if kernel.rdims and dims == [kernel.dims[d] for d in kernel.outer_positions]:
            return OUTER
        return None

    def _shares_inputs(self, kernel: Kernel, reads: set[str]) -> bool:
        """Whether ``reads`` overlaps what ``kernel`` reads (then computing both in one loop
        reads the shared inputs once)."""
        kernel_reads: set[str] = set()
        for m in kernel.members:
            kernel_reads |= {name for name, _ in ir.loads(kernel.value(m))}
        return bool(kernel_reads & reads)

    def _can_join(self, kernel: Kernel, position: int, buf: ComputedBuffer, kind: str,
                  reads: set[str]) -> bool:
        members = {m.buffer.name: m for m in kernel.members}
        for name in reads:
            if name in members:
                continue
            made = self.position.get(name)
            if made is not None and made >= position:
                return False
        probe = Member(buf, kind)
        rdims = kernel.rdims or space(buf)[1]
        trial = Kernel(kernel.name, kernel.dims, rdims, kernel.members)
        for name, offset in ir.loads(trial.value(probe)):
            if name not in members:
                continue
            producer = members[name]
            if producer.kind == FULL and kind == OUTER:
                return False
            if not _same(offset, trial.store_offset(producer)):
                return False
        return True

    def _join(self, kernel: Kernel, position: int, buf: ComputedBuffer, kind: str) -> None:
        if kind == REDUCTION and not kernel.rdims:
            kernel.rdims = space(buf)[1]
        kernel.members.append(Member(buf, kind))
        self.position[buf.name] = position
        self.kernel_of[buf.name] = kernel

    # --- what stays in registers --------------------------------------------------------------

    def _mark_local(self) -> None:
        read_elsewhere: set[str] = set()
        for step in self.steps:
            if isinstance(step, ExternCall):
                read_elsewhere |= {b.storage.name for b in step.input_buffers()}
            else:
                for m in step.members:
                    for name, _ in ir.loads(step.value(m)):
                        if self.kernel_of.get(name) is not step:
                            read_elsewhere.add(name)
        for out in self.graph.outputs:
            if isinstance(out, Buffer):
                read_elsewhere.add(out.storage.name)
        for step in self.steps:
            if isinstance(step, Kernel):
                step.local = {m.buffer.name for m in step.members
                              if m.kind in (REDUCTION, OUTER)
                              and m.buffer.name not in read_elsewhere}


def _leading_reduction(kernel: Kernel) -> bool:
    return bool(kernel.rdims) and 0 in kernel.rdims and len(kernel.dims) > 1


def schedule(graph: LoweredGraph) -> Schedule:
    return Scheduler(graph).run()
