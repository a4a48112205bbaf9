"""The column loop shape of C++ kernels: a reduction over the leading dim of a 2-d space whose
reads are contiguous along the kept dim (``x.sum(0)``, ``x.var(0)``).

The kept dim is split into tiles of ``COLUMN_TILE`` columns, parallel over tiles; each stage
walks the reduced dim with a vectorized loop across the tile, one accumulator per column.

Float sums accumulate in blocks: ``COLUMN_BLOCK`` rows into a float partial per column, each
partial then added into the double accumulator. One value per row is added in sequence, so a
single float accumulator would lose accuracy on long columns; converting every element to
double halves the vector width (var(0) ran at 25% of the memory's bandwidth). Blocked, the
inner loop adds floats and the error grows with the block, not the column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from kiln.codegen import ir
from kiln.codegen.ir import Reduction
from kiln.codegen.scheduler import OUTER, REDUCTION, Member

if TYPE_CHECKING:
    from kiln.codegen.cpp import KernelWriter

COLUMN_TILE = 64
COLUMN_BLOCK = 256  # rows summed in float before the partial sums are added in double


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
        kw.outlined = (2, ["tile"])
    tiles = f"({cols} + {tile - 1}) / {tile}"
    lines.append(f"    for (int64_t tile = 0; tile < {tiles}; tile++) {{")
    lines.append(f"        const int64_t o0 = tile * {tile};")
    lines.append(f"        const int64_t on = std::min<int64_t>({tile}, {cols} - o0);")
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


def _column_reduction(kw: KernelWriter, ind: str, rows: str,
                      members: list[Member]) -> list[str]:
    from kiln.codegen.cpp import BodyWriter, _accumulate, _reduction_init, ctype

    tile = COLUMN_TILE
    lines: list[str] = []
    accs = []
    for m in members:
        body: Reduction = m.buffer.body
        acc = kw.tmp()
        nan = None
        lines.append(f"{ind}{ctype(body.acc_dtype)} {acc}[{tile}];")
        lines.append(f"{ind}for (int64_t j = 0; j < {tile}; j++) {acc}[j] = "
                     f"{_reduction_init(body.reduction_type, body.acc_dtype)};")
        if body.reduction_type in ("max", "min") and body.acc_dtype.is_floating_point:
            nan = kw.tmp()
            lines.append(f"{ind}int {nan}[{tile}] = {{}};")
        accs.append((m, acc, nan, kw.tmp() if _blocked(body) else None))
    partials = [(acc, part) for _, acc, _, part in accs if part is not None]
    row_ind = ind
    if partials:
        lines.append(f"{ind}for (int64_t b0 = 0; b0 < {rows}; b0 += {COLUMN_BLOCK}) {{")
        row_ind = ind + "    "
        lines.append(f"{row_ind}const int64_t b1 = std::min<int64_t>({rows}, "
                     f"b0 + {COLUMN_BLOCK});")
        for _, part in partials:
            lines.append(f"{row_ind}float {part}[{tile}];")
            lines.append(f"{row_ind}for (int64_t j = 0; j < {tile}; j++) {part}[j] = 0.0f;")
        lines.append(f"{row_ind}for (int64_t x0 = b0; x0 < b1; x0++) {{")
    else:
        lines.append(f"{ind}for (int64_t x0 = 0; x0 < {rows}; x0++) {{")
    lines.append(f"{row_ind}    #pragma omp simd")
    lines.append(f"{row_ind}    for (int64_t j = 0; j < on; j++) {{")
    lines.append(f"{row_ind}        const int64_t x1 = o0 + j;")
    w = BodyWriter(kw, row_ind + "        ")
    for m, acc, nan, part in accs:
        body = m.buffer.body
        v = w.emit(kw.kernel.value(m))
        if part is not None:
            _accumulate(w, "sum", torch.float32, f"{part}[j]", None, v)
        else:
            _accumulate(w, body.reduction_type, body.acc_dtype, f"{acc}[j]",
                        nan and f"{nan}[j]", v)
    lines += w.lines + [row_ind + "    }", row_ind + "}"]
    if partials:
        lines.append(f"{row_ind}#pragma omp simd")
        lines.append(f"{row_ind}for (int64_t j = 0; j < on; j++) {{")
        for acc, part in partials:
            lines.append(f"{row_ind}    {acc}[j] += (double){part}[j];")
        lines += [row_ind + "}", ind + "}"]
    arrays = []
    for m, acc, nan, _ in accs:
        out_t = ctype(ir.compute_dtype(m.buffer.body.dtype))
        arr = kw.tmp()
        lines.append(f"{ind}{out_t} {arr}[{tile}];")
        arrays.append((m, acc, nan, arr, out_t))
    lines.append(f"{ind}#pragma omp simd")
    lines.append(f"{ind}for (int64_t j = 0; j < on; j++) {{")
    lines.append(f"{ind}    const int64_t x1 = o0 + j;")
    w = BodyWriter(kw, ind + "    ")
    for m, acc, nan, arr, out_t in arrays:
        result = f"{acc}[j]"
        if nan:
            result = f"({nan}[j] ? std::numeric_limits<{out_t}>::quiet_NaN() : " \
                     f"({out_t}){acc}[j])"
        w.line(f"{arr}[j] = ({out_t})({result});")
        kw.local_ref[m.buffer.name] = f"{arr}[j]"
        if m.buffer.name not in kw.kernel.local:
            kw.store(w, m, f"{arr}[j]")
    lines += w.lines + [ind + "}"]
    return lines
