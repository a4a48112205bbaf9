"""Reduction loops of the rows shape of C++ kernels, and the accumulator steps the columns
shape (cpp_columns.py) shares with them.

A reduction stage of the rows shape is one loop over the reduced dims with an accumulator
per member (``omp simd reduction``), then a few scalar lines per member turning the
accumulators into its value. An ``m2`` member (the sum of squared deviations from the mean)
takes two loops: its mean first, then the squares of the deviations from it, added in the
shared loop. The row is in cache for the second pass, which is as accurate as the two-pass
variance eager's kernels and the decompositions of row variances compute (the columns shape
computes m2 in one pass instead: a column tile is not in cache a second time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sympy
import torch

from kiln.codegen import ir
from kiln.codegen.ir import Reduction
from kiln.codegen.scheduler import Member

if TYPE_CHECKING:
    from kiln.codegen.cpp import BodyWriter, KernelWriter


def reduction_init(kind: str, dtype: torch.dtype) -> str:
    """The C value an accumulator of ``kind`` starts from."""
    from kiln.codegen.cpp import ctype

    t = ctype(dtype)
    if kind in ("sum", "m2"):
        return f"({t})0"
    if kind == "prod":
        return f"({t})1"
    if kind in ("max", "argmax"):
        return (f"-std::numeric_limits<{t}>::infinity()" if dtype.is_floating_point else
                f"std::numeric_limits<{t}>::lowest()")
    return (f"std::numeric_limits<{t}>::infinity()" if dtype.is_floating_point else
            f"std::numeric_limits<{t}>::max()")


def accumulate(w: BodyWriter, kind: str, acc_dtype: torch.dtype, acc: str, nan: str | None,
               v: str) -> None:
    """One step of a sum/prod/max/min reduction into ``acc`` (and the NaN flag ``nan``)."""
    from kiln.codegen.cpp import ctype

    if kind in ("sum", "prod"):
        w.line(f"{acc} {'+' if kind == 'sum' else '*'}= ({ctype(acc_dtype)})({v});")
        return
    op = ">" if kind == "max" else "<"
    w.line(f"{acc} = ({v} {op} {acc}) ? {v} : {acc};")
    if nan:
        w.line(f"{nan} |= ({v} != {v});")


def row_acc_dtype(body: Reduction) -> torch.dtype:
    """What a row reduction accumulates in: float32 sums stay in float32 there (each SIMD
    lane sums a strided subset and the lanes are added at the end, a pairwise-like order as
    accurate as eager's, at twice the speed of double); column reductions, which add one
    value per row in sequence, keep the IR's double."""
    if body.acc_dtype == torch.float64 and ir.compute_dtype(body.dtype) == torch.float32:
        return torch.float32
    return body.acc_dtype


def reduction_rows(kw: KernelWriter, indent: str, inner: list[int], dims_c: list[str],
                   members: list[Member], parallel: str | None) -> list[str]:
    """A reduction stage of the rows shape: the loop over the reduced dims ``inner`` with
    every member's accumulator (preceded by the mean loop of each m2 member), then the
    members' values."""
    from kiln.codegen.cpp import BodyWriter, ctype

    lines: list[str] = []
    clauses: list[str] = []
    # (member, accumulator, NaN flag, argmax index, m2's mean)
    updates: list[tuple[Member, str, str | None, str | None, str | None]] = []
    sequential = False
    for m in members:
        body: Reduction = m.buffer.body
        acc = kw.tmp()
        kind = body.reduction_type
        acc_dtype = row_acc_dtype(body)
        lines.append(f"{indent}{ctype(acc_dtype)} {acc} = {reduction_init(kind, acc_dtype)};")
        nan = idx = mean = None
        if kind == "m2":
            mean = _mean_loop(kw, lines, indent, inner, dims_c, m, parallel)
        if kind in ("max", "min") and acc_dtype.is_floating_point:
            nan = kw.tmp()
            lines.append(f"{indent}int {nan} = 0;")  # a bool reduction stops vectorizing
            clauses.append(f"reduction(|:{nan})")
        if kind.startswith("arg"):
            idx = kw.tmp()
            lines.append(f"{indent}int64_t {idx} = 0;")
            sequential = True
        elif kind in ("sum", "prod", "m2"):
            clauses.append(f"reduction({'*' if kind == 'prod' else '+'}:{acc})")
        else:
            clauses.append(f"reduction({kind}:{acc})")
        updates.append((m, acc, nan, idx, mean))
    pragma = None if sequential else kw._pragma(inner, " ".join(clauses) or None, parallel)
    if sequential and not inner:
        pragma = None
    head, body_indent = kw._loop_header(indent, inner, dims_c, pragma)
    lines += head
    w = BodyWriter(kw, body_indent, in_inner_loop=bool(inner))
    for m, acc, nan, idx, mean in updates:
        body = m.buffer.body
        v = w.emit(kw.kernel.value(m))
        kw._store_scratch(w)
        kind = body.reduction_type
        if mean is not None:
            t = ctype(row_acc_dtype(body))
            d = w.define(("sub", v, mean), ir.compute_dtype(body.dtype), f"({v} - {mean})")
            w.line(f"{acc} += ({t})({d} * {d});")
        elif not kind.startswith("arg"):
            accumulate(w, kind, row_acc_dtype(body), acc, nan, v)
        else:
            op = ">" if kind == "argmax" else "<"
            flat = kw.index(_flat_reduced(kw, m))
            w.line(f"if (!({acc} != {acc}) && ({v} {op} {acc} || {v} != {v})) "
                   f"{{ {acc} = {v}; {idx} = {flat}; }}")
    lines += w.lines + [indent + "}"]
    finish = BodyWriter(kw, indent)
    for m, acc, nan, idx, _ in updates:
        body = m.buffer.body
        out_t = ir.compute_dtype(body.dtype)
        if idx is not None:
            result = idx
        elif nan:
            limits = f"std::numeric_limits<{ctype(row_acc_dtype(body))}>"
            result = f"({nan} ? {limits}::quiet_NaN() : {acc})"
        else:
            result = acc
        name = kw.tmp()
        finish.line(f"const {ctype(out_t)} {name} = ({ctype(out_t)})({result});")
        kw.local_ref[m.buffer.name] = name
        kw.row_values.add(name)
        if m.buffer.name not in kw.kernel.local:
            kw.store(finish, m, name)
    return lines + finish.lines


def _mean_loop(kw: KernelWriter, lines: list[str], indent: str, inner: list[int],
               dims_c: list[str], m: Member, parallel: str | None) -> str:
    """The first pass of an m2 member: the mean of its values over the reduced dims (summed
    as a float32 row sum is), appended to ``lines``; returns its C name."""
    from kiln.codegen.cpp import BodyWriter, ctype

    body: Reduction = m.buffer.body
    acc_dtype, dtype = row_acc_dtype(body), ir.compute_dtype(body.dtype)
    total, mean = kw.tmp(), kw.tmp()
    lines.append(f"{indent}{ctype(acc_dtype)} {total} = ({ctype(acc_dtype)})0;")
    head, body_indent = kw._loop_header(indent, inner, dims_c,
                                        kw._pragma(inner, f"reduction(+:{total})", parallel))
    w = BodyWriter(kw, body_indent, in_inner_loop=bool(inner))
    accumulate(w, "sum", acc_dtype, total, None, w.emit(kw.kernel.value(m)))
    count = kw.index(ir.product([kw.kernel.dims[d] for d in inner]))
    lines += head + w.lines + [indent + "}"]
    lines.append(f"{indent}const {ctype(dtype)} {mean} = ({ctype(dtype)})({total} / "
                 f"({ctype(acc_dtype)})({count}));")
    return mean


def _flat_reduced(kw: KernelWriter, m: Member) -> ir.Expr:
    """The row-major position of the current element among the reduced ones (what
    argmax returns)."""
    body: Reduction = m.buffer.body
    index = kw.kernel.index_of(m)
    flat = sympy.Integer(0)
    for d in body.reduced:
        flat = flat * body.full_size[d] + index[d]
    return flat
