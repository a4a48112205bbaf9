"""The column loop shape of C++ kernels: a reduction over the leading dim of a 2-d space whose
reads are contiguous along the kept dim (``x.sum(0)``, ``x.var(0)``).

The kept dim is split into tiles of ``COLUMN_TILE`` columns, parallel over tiles; each stage
walks the reduced dim with a vectorized loop across the tile, one accumulator per column.

Float sums accumulate in blocks: ``COLUMN_BLOCK`` rows into a float partial per column, each
partial then added into the double accumulator. One value per row is added in sequence, so a
single float accumulator would lose accuracy on long columns; converting every element to
double halves the vector width (var(0) ran at 25% of the memory's bandwidth). Blocked, the
inner loop adds floats and the error grows with the block, not the column.

An ``m2`` member (the numerator of a variance, ``x.var(0)``) is one pass over the rows, where
a mean and then the squares of the deviations from it walked every tile twice (a tile of a
2048-row column is 512 KiB: not in L1 for the second walk; var(0) reached 58-69% of a
memory copy). Per block, Welford's update in float of the block's mean and M2, of the values
minus a *shift*: the first row's value for the first block, the running mean after that.
Between blocks the block's (mean, M2, count) is combined in double with those of the rows
before it (Chan et al.'s pairwise formula), as the sums combine their partials. The shift
matters: a float Welford update of 1e4 + randn loses 1e-4 relative (each mean update is
rounded to the ulp of 1e4), the shifted one sees values of order one and stays at the
accuracy of float64 rounded to float (3e-7, where the two-pass form was at 1e-5: its mean
was rounded to float first). Sums of the shifted values and of their squares (M2 =
S2 - S1^2 / n per block) would take two operations fewer per element, but cancel when the
shift is far from the block's mean: an outlier in the first row cost them 3e-4 relative,
Welford 2e-6.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import sympy
import torch

from kiln.codegen import ir
from kiln.codegen.cpp_reductions import accumulate, reduction_init
from kiln.codegen.ir import Reduction
from kiln.codegen.scheduler import OUTER, REDUCTION, Member, loop_var

if TYPE_CHECKING:
    from kiln.codegen.cpp import BodyWriter, KernelWriter

COLUMN_TILE = 64
COLUMN_BLOCK = 256  # rows accumulated in float (sums, m2's Welford) before combined in double
# A column walk reads 256 bytes of each row (a tile of floats) at a stride of a whole row,
# which the hardware prefetchers do not follow: from memory (the input evicted from L3 by
# other work) the loop waited on each row's lines, var(0) at half the copy bandwidth. The
# row loop prefetches its lines this many rows ahead into L2 (var(0) out of memory 1.6x
# faster, from cache as fast as without).
PREFETCH_ROWS = 32


def column_loops(kw: KernelWriter, dims_c: list[str]) -> list[str]:
    """The kernel body: the tile loop and, inside it, each stage's loops."""
    from kiln.codegen.cpp import BodyWriter, ctype

    k = kw.kernel
    tile = COLUMN_TILE
    rows, cols = dims_c
    clause = kw._parallel_clause(ir.product(k.dims))
    lines = []
    if clause is not None:
        lines.append(f"    #pragma omp parallel for num_threads(kiln_threads){clause}")
    tiles = f"({cols} + {tile - 1}) / {tile}"
    lines.append(f"    for (int64_t tile = 0; tile < {tiles}; tile++) {{")
    lines.append(f"        const int64_t on = std::min<int64_t>({tile}, {cols} - tile * {tile});")
    # (a full tile runs a copy of the body compiled for on == COLUMN_TILE: KernelWriter._outline)
    kw.outlined = (len(lines), ["tile", "on"])
    kw.specialized = ("on", str(tile))
    lines.append(f"        const int64_t o0 = tile * {tile};")
    ind = "        "
    for kind, members in kw.stages():
        if kind == REDUCTION:
            lines += _column_reduction(kw, ind, rows, members)
        elif kind == OUTER:
            arrays = {}
            for m in members:
                arr = kw.tmp()
                lines.append(f"{ind}{ctype(ir.compute_dtype(m.buffer.dtype))} {arr}[{tile}];")
                arrays[m.buffer.name] = arr
            lines.append(f"{ind}#pragma omp simd")
            lines.append(f"{ind}for (int64_t j = 0; j < on; j++) {{")
            lines.append(f"{ind}    const int64_t x1 = o0 + j;")
            w = BodyWriter(kw, ind + "    ")
            for m in members:
                value = w.emit(k.value(m))
                w.line(f"{arrays[m.buffer.name]}[j] = {value};")
                if m.buffer.name not in k.local:
                    kw.store(w, m, value)
            lines += w.lines + [ind + "}"]
            for m in members:
                kw.local_ref[m.buffer.name] = f"{arrays[m.buffer.name]}[j]"
        else:
            lines.append(f"{ind}for (int64_t x0 = 0; x0 < {rows}; x0++) {{")
            lines += _prefetches(kw, ind + "    ", members, stores=True)
            lines.append(f"{ind}    #pragma omp simd")
            lines.append(f"{ind}    for (int64_t j = 0; j < on; j++) {{")
            lines.append(f"{ind}        const int64_t x1 = o0 + j;")
            w = BodyWriter(kw, ind + "        ")
            for m in members:
                kw.store(w, m, w.emit(k.value(m)))
            lines += w.lines + [ind + "    }", ind + "}"]
    lines.append("    }")
    return lines


def _blocked(body: Reduction) -> bool:
    """Whether the sum accumulates float partials per block of rows (see the module doc)."""
    return body.reduction_type == "sum" and body.acc_dtype == torch.float64 and \
        ir.compute_dtype(body.dtype) == torch.float32


@dataclasses.dataclass
class _Accumulator:
    """The C arrays of one reduction member: ``acc`` (its result so far), ``nan`` (max/min:
    a NaN seen), ``part`` (the partial of the current block), and for m2 ``mean`` (the mean
    so far), ``part_mean`` (the block's) and ``shift`` (what the block's values are taken
    relative to)."""

    member: Member
    acc: str
    nan: str | None = None
    part: str | None = None
    mean: str | None = None
    part_mean: str | None = None
    shift: str | None = None


def _column_reduction(kw: KernelWriter, ind: str, rows: str,
                      members: list[Member]) -> list[str]:
    from kiln.codegen.cpp import BodyWriter, ctype

    tile = COLUMN_TILE
    lines: list[str] = []
    accs: list[_Accumulator] = []
    for m in members:
        body: Reduction = m.buffer.body
        a = _Accumulator(m, kw.tmp())
        arrays = [a.acc]
        if body.reduction_type == "m2":
            a.mean, a.part, a.part_mean, a.shift = kw.tmp(), kw.tmp(), kw.tmp(), kw.tmp()
            arrays.append(a.mean)
        elif _blocked(body):
            a.part = kw.tmp()
        for arr in arrays:
            lines.append(f"{ind}{ctype(body.acc_dtype)} {arr}[{tile}];")
            lines.append(f"{ind}for (int64_t j = 0; j < {tile}; j++) {arr}[j] = "
                         f"{reduction_init(body.reduction_type, body.acc_dtype)};")
        if body.reduction_type in ("max", "min") and body.acc_dtype.is_floating_point:
            a.nan = kw.tmp()
            lines.append(f"{ind}int {a.nan}[{tile}] = {{}};")
        if a.shift is not None:
            lines += _first_row(kw, ind, rows, a)
        accs.append(a)
    blocked = [a for a in accs if a.part is not None]
    row_ind = ind
    if blocked:
        lines.append(f"{ind}for (int64_t b0 = 0; b0 < {rows}; b0 += {COLUMN_BLOCK}) {{")
        row_ind = ind + "    "
        lines.append(f"{row_ind}const int64_t b1 = std::min<int64_t>({rows}, "
                     f"b0 + {COLUMN_BLOCK});")
        for a in blocked:
            for part in (a.part, a.part_mean):
                if part is not None:
                    lines.append(f"{row_ind}{_part_type(a)} {part}[{tile}];")
                    lines.append(f"{row_ind}for (int64_t j = 0; j < {tile}; j++) "
                                 f"{part}[j] = ({_part_type(a)})0;")
        lines.append(f"{row_ind}for (int64_t x0 = b0; x0 < b1; x0++) {{")
    else:
        lines.append(f"{ind}for (int64_t x0 = 0; x0 < {rows}; x0++) {{")
    lines += _prefetches(kw, row_ind + "    ", members)
    ratios = {}  # part dtype -> 1 / (rows of the block so far), for m2's mean
    for a in accs:
        if a.shift is not None and _part_type(a) not in ratios:
            t = _part_type(a)
            ratios[t] = kw.tmp()
            lines.append(f"{row_ind}    const {t} {ratios[t]} = ({t})1 / ({t})(x0 - b0 + 1);")
    lines.append(f"{row_ind}    #pragma omp simd")
    lines.append(f"{row_ind}    for (int64_t j = 0; j < on; j++) {{")
    lines.append(f"{row_ind}        const int64_t x1 = o0 + j;")
    w = BodyWriter(kw, row_ind + "        ")
    for a in accs:
        body = a.member.buffer.body
        v = w.emit(kw.kernel.value(a.member))
        if a.shift is not None:
            _welford_step(w, a, v, ratios[_part_type(a)])
        elif a.part is not None:
            accumulate(w, "sum", torch.float32, f"{a.part}[j]", None, v)
        else:
            accumulate(w, body.reduction_type, body.acc_dtype, f"{a.acc}[j]",
                       a.nan and f"{a.nan}[j]", v)
    lines += w.lines + [row_ind + "    }", row_ind + "}"]
    if blocked:
        lines += _combine_blocks(row_ind, blocked)
        lines.append(ind + "}")
    arrays = []
    for a in accs:
        out_t = ctype(ir.compute_dtype(a.member.buffer.body.dtype))
        arr = kw.tmp()
        lines.append(f"{ind}{out_t} {arr}[{tile}];")
        arrays.append((a, arr, out_t))
    lines.append(f"{ind}#pragma omp simd")
    lines.append(f"{ind}for (int64_t j = 0; j < on; j++) {{")
    lines.append(f"{ind}    const int64_t x1 = o0 + j;")
    w = BodyWriter(kw, ind + "    ")
    for a, arr, out_t in arrays:
        result = f"{a.acc}[j]"
        if a.nan:
            result = f"({a.nan}[j] ? std::numeric_limits<{out_t}>::quiet_NaN() : " \
                     f"({out_t}){a.acc}[j])"
        w.line(f"{arr}[j] = ({out_t})({result});")
        kw.local_ref[a.member.buffer.name] = f"{arr}[j]"
        if a.member.buffer.name not in kw.kernel.local:
            kw.store(w, a.member, f"{arr}[j]")
    lines += w.lines + [ind + "}"]
    return lines


def _prefetches(kw: KernelWriter, ind: str, members: list[Member],
                stores: bool = False) -> list[str]:
    """In the row loop: the tile's part of the row ``PREFETCH_ROWS`` ahead, for each input
    the stage reads along its rows (and, with ``stores``, each buffer it writes), prefetched
    into L2 (see PREFETCH_ROWS)."""
    x0, x1 = loop_var(0), loop_var(1)
    lines: list[str] = []
    seen: set[str] = set()
    for m in members:
        for name, off in ir.loads(kw.kernel.value(m)):
            if name in kw.members or sympy.expand(off.subs(x1, x1 + 1) - off) != 1 or \
                    not off.has(x0):  # a row broadcast to every row stays in cache
                continue
            address = f"&{kw.pointer(name)}[{kw.index(off.subs(x0, x0 + PREFETCH_ROWS))}]"
            if address in seen:
                continue
            seen.add(address)
            lines += _prefetch_loop(ind, address, kw.dtypes[name].itemsize, write=False)
    if stores:  # the rows this stage writes, for writing (their lines are read for ownership)
        for m in members:
            if m.buffer.name in kw.kernel.local:
                continue
            off = kw.kernel.store_offset(m)
            if sympy.expand(off.subs(x1, x1 + 1) - off) != 1 or not off.has(x0):
                continue
            address = f"&{kw.pointer(m.buffer.name)}[{kw.index(off.subs(x0, x0 + PREFETCH_ROWS))}]"
            lines += _prefetch_loop(ind, address, m.buffer.dtype.itemsize, write=True)
    return lines


def _prefetch_loop(ind: str, address: str, itemsize: int, write: bool) -> list[str]:
    step = max(1, 64 // itemsize)  # one prefetch per cache line
    return [f"{ind}for (int64_t j = 0; j < on; j += {step}) {{",
            f"{ind}    const int64_t x1 = o0 + j;",
            f"{ind}    __builtin_prefetch({address}, {int(write)}, 1);",
            f"{ind}}}"]


# --- m2: a Welford update per block of rows -------------------------------------------------

def _part_type(a: _Accumulator) -> str:
    """The C type of a block's partials: float for float32 values, else the values' type."""
    from kiln.codegen.cpp import ctype

    return ctype(ir.compute_dtype(a.member.buffer.body.dtype))


def _first_row(kw: KernelWriter, ind: str, rows: str, a: _Accumulator) -> list[str]:
    """The shift of the first block: the member's values of row 0 (none when there are no
    rows)."""
    from kiln.codegen.cpp import BodyWriter

    lines = [f"{ind}{_part_type(a)} {a.shift}[{COLUMN_TILE}] = {{}};",
             f"{ind}if ({rows} > 0) {{",
             f"{ind}    #pragma omp simd",
             f"{ind}    for (int64_t j = 0; j < on; j++) {{",
             f"{ind}        const int64_t x1 = o0 + j;"]
    w = BodyWriter(kw, ind + "        ")
    index = [sympy.sympify(i).subs(loop_var(0), 0) for i in kw.kernel.index_of(a.member)]
    w.line(f"{a.shift}[j] = {w.emit(a.member.buffer.body.inner(index))};")
    return lines + w.lines + [f"{ind}    }}", f"{ind}}}"]


def _welford_step(w: BodyWriter, a: _Accumulator, v: str, ratio: str) -> None:
    """Welford's update of the block's mean and M2 by value ``v``, relative to the shift."""
    t = _part_type(a)
    d, e = w.kw.tmp(), w.kw.tmp()
    w.line(f"const {t} {d} = {v} - {a.shift}[j];")
    w.line(f"const {t} {e} = {d} - {a.part_mean}[j];")
    w.line(f"{a.part_mean}[j] += {e} * {ratio};")
    w.line(f"{a.part}[j] += {e} * ({d} - {a.part_mean}[j]);")


def _combine_blocks(ind: str, blocked: list[_Accumulator]) -> list[str]:
    """After each block: its partials added into the double accumulators (sums), or its mean
    and M2 combined with those of the rows before it (Chan et al.'s formula; rows ``b0``
    before, ``b1 - b0`` in the block); the running mean becomes the next block's shift."""
    lines = []
    if any(a.shift is not None for a in blocked):
        lines += [f"{ind}const double kiln_nb = (double)(b1 - b0);",
                  f"{ind}const double kiln_wb = kiln_nb / (double)b1;",
                  f"{ind}const double kiln_wab = (double)b0 * kiln_wb;"]
    lines.append(f"{ind}#pragma omp simd")
    lines.append(f"{ind}for (int64_t j = 0; j < on; j++) {{")
    for a in blocked:
        if a.shift is None:
            lines.append(f"{ind}    {a.acc}[j] += (double){a.part}[j];")
            continue
        delta = f"kiln_delta_{a.acc}"
        lines += [
            f"{ind}    const double {delta} = ((double){a.shift}[j] + "
            f"(double){a.part_mean}[j]) - {a.mean}[j];",
            f"{ind}    {a.mean}[j] += {delta} * kiln_wb;",
            f"{ind}    {a.acc}[j] += (double){a.part}[j] + {delta} * {delta} * kiln_wab;",
            f"{ind}    {a.shift}[j] = ({_part_type(a)}){a.mean}[j];",
        ]
    lines.append(f"{ind}}}")
    return lines
