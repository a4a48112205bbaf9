"""Column reductions (kiln/codegen/cpp_columns.py): tiles across the kept dim, float sums
accumulated in blocks of rows, ragged tiles and blocks, against eager and float64; the
one-pass variance (prims.var -> an m2 reduction, a Welford update per block of rows) and
the m2 reduction outside the columns shape (cpp_reductions.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import kiln
from kiln.codegen.compile_graph import compile_graph
from kiln.codegen.cpp_columns import COLUMN_BLOCK, COLUMN_TILE
from kiln.codegen.decompositions import decomposition_table
from kiln.testing import CompileCounterWithBackend

# var/std over one element (or fewer than the correction) warn in eager and when the traced
# graph runs; the NaN / inf results are compared
pytestmark = pytest.mark.filterwarnings("ignore:.*degrees of freedom is <= 0:UserWarning")

prims = torch.ops.prims
NAN, INF = math.nan, math.inf


def _compile(fn, *args):
    # (fake tracing, as AOT autograd's: real-mode metas lose view offsets,
    # test_op_coverage.py's test_real_mode_trace_of_offset_views)
    gm = make_fx(fn, decomposition_table=decomposition_table(), tracing_mode="fake")(*args)
    call = compile_graph(gm, list(args))
    return call, call._kiln_compiled


def _rows_loops(source: str) -> int:
    """How many loops over the rows the kernels' source has."""
    return source.count("for (int64_t x0 = ")


@pytest.mark.parametrize("rows,cols", [(5, 3), (COLUMN_BLOCK, COLUMN_TILE),
                                       (3 * COLUMN_BLOCK + 7, 2 * COLUMN_TILE + 5)])
def test_sum_mean_var_over_the_first_dim_equal_eager(rows, cols):
    x = torch.randn(rows, cols) * 3 + 1
    fn = lambda x: (x.sum(0), x.mean(0), x.var(0, correction=0), x.amax(0))  # noqa: E731
    call, compiled = _compile(fn, x)
    assert "tile" in compiled.cpp_source
    for got, want in zip(call([x]), fn(x)):
        torch.testing.assert_close(got, want)


def test_long_columns_keep_float64_accuracy():
    # 300 000 additions of ~0.1 per column: one float accumulator drifts by ~1e-4 relative,
    # float partials of COLUMN_BLOCK rows added in double stay within a few ulp
    x = torch.rand(300_000, 8) * 0.01 + 0.1
    call, compiled = _compile(lambda x: (x.sum(0), x.var(0)), x)
    assert "b0 += " in compiled.cpp_source  # the blocked loop
    got_sum, got_var = call([x])
    want = x.double().sum(0)
    assert ((got_sum.double() - want).abs() / want).max() < 1e-6
    want = x.double().var(0)
    assert ((got_var.double() - want).abs() / want).max() < 1e-6


def test_half_precision_columns_accumulate_in_float():
    x = (torch.randn(2 * COLUMN_BLOCK + 3, 70) + 2).to(torch.bfloat16)
    call, _ = _compile(lambda x: x.sum(0), x)
    (got,) = call([x])
    torch.testing.assert_close(got.float(), x.double().sum(0).float(), rtol=1e-2, atol=1e-2)


def test_full_tiles_run_a_body_compiled_for_the_tile_width_and_prefetch_rows_ahead():
    x = torch.randn(9, 2 * COLUMN_TILE + 1)
    call, compiled = _compile(lambda x: (x.sum(0), x.var(0)), x)
    # a constant trip count, which gcc unrolls
    assert f"if (on == {COLUMN_TILE}) kernel0_body(tile, {COLUMN_TILE}," in compiled.cpp_source
    # one prefetch of the input per row, for both reductions (the rows past the end are
    # prefetched too: a prefetch never faults)
    assert compiled.cpp_source.count("__builtin_prefetch(") == 1
    for got, want in zip(call([x]), (x.sum(0), x.var(0))):
        torch.testing.assert_close(got, want)


# --- the one-pass variance ---------------------------------------------------------------------

def test_column_variance_is_one_pass_over_the_rows():
    x = torch.randn(3 * COLUMN_BLOCK + 7, 2 * COLUMN_TILE + 5) + 5
    gm = make_fx(lambda x: x.var(0), decomposition_table=decomposition_table())(x)
    assert prims.var.default in {n.target for n in gm.graph.nodes}
    fn = lambda x: (x.var(0), *torch.var_mean(x, 0), x.std(0))  # noqa: E731
    call, compiled = _compile(fn, x)
    assert compiled.kernel_count == 1
    assert _rows_loops(compiled.cpp_source) == 1  # the sum and m2 of every output in one loop
    for got, want in zip(call([x]), fn(x.double())):
        torch.testing.assert_close(got, want.float())
    # a row variance keeps its two passes (the row is in cache for the second)
    gm = make_fx(lambda x: x.var(1), decomposition_table=decomposition_table())(x)
    assert prims.var.default not in {n.target for n in gm.graph.nodes}


def _statistics(x):
    """Every statistic over dim 0 with corrections 0, 1 and 2, keepdim or not (a flat list,
    as AOT autograd's graphs return)."""
    out = []
    for c in (0, 1, 2):
        for kd in (False, True):
            out += [x.var(0, correction=c, keepdim=kd), x.std(0, correction=c, keepdim=kd),
                    *torch.var_mean(x, 0, correction=c, keepdim=kd),
                    *torch.std_mean(x, 0, correction=c, keepdim=kd)]
    return out


SHAPES = [(5, 3), (2, 9), (COLUMN_BLOCK + 1, COLUMN_TILE + 1),
          (3 * COLUMN_BLOCK + 7, 2 * COLUMN_TILE + 5), (1, 7), (0, 5)]
TOLERANCE = {torch.float32: {}, torch.float64: {}, torch.float16: {"rtol": 2e-3, "atol": 1e-3},
             torch.bfloat16: {"rtol": 1.6e-2, "atol": 1e-2}}


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=lambda d: str(d)[6:])
def test_column_statistics_equal_eager(dtype):
    """var/std/var_mean/std_mean over dim 0, corrections 0/1/2, keepdim, odd sizes, 2 rows
    (n - correction = 0: inf), 1 row and 0 rows (NaN), against eager in float64 rounded to
    the dtype (eager's float16/bfloat16 results are rounded in between)."""
    g = torch.Generator().manual_seed(0)
    inputs = [(torch.randn(s, generator=g, dtype=torch.float64) * 3 + 2).to(dtype)
              for s in SHAPES]

    def fn(*xs):
        return [s for x in xs for s in _statistics(x)]

    call, compiled = _compile(fn, *inputs)
    assert compiled.cpp_source.count("tile") > 0 and not compiled.fallback_ops
    expected = [e.to(dtype) for e in fn(*(x.double() for x in inputs))]
    got = call(list(inputs))
    assert len(got) == len(expected)
    for i, (a, e) in enumerate(zip(got, expected)):
        assert a.dtype == dtype and a.shape == e.shape, i
        torch.testing.assert_close(a, e, equal_nan=True, **TOLERANCE[dtype],
                                   msg=lambda m, i=i: f"output {i}: {m}")


def test_non_contiguous_inputs():
    """Rows of a strided view with an offset and a column slice (the one-pass form), a
    transposed tensor (a row reduction in memory: two passes), broadcast rows (variance 0)."""
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2 * COLUMN_BLOCK + 9, COLUMN_TILE + 20, generator=g) + 3
    row = torch.randn(COLUMN_TILE + 3, generator=g)
    views = {"strided_rows": lambda b, r: b[1::2, 3:-4], "transposed": lambda b, r: b[:70].t(),
             "broadcast": lambda b, r: r.expand(COLUMN_BLOCK + 5, -1)}

    def fn(b, r):
        return [s for view in views.values() for s in
                (view(b, r).var(0), *torch.var_mean(view(b, r), 0, correction=0),
                 view(b, r).std(0, keepdim=True))]

    call, compiled = _compile(fn, base, row)
    assert not compiled.fallback_ops
    for i, (a, e) in enumerate(zip(call([base, row]), fn(base.double(), row.double()))):
        # (the means of equal values in float partials of COLUMN_BLOCK rows: within 1e-5)
        torch.testing.assert_close(a, e.float(), atol=1e-5, rtol=1e-5,
                                   msg=lambda m, i=i: f"output {i}: {m}")
    assert (call([base, row])[8] == 0).all()  # the variance of equal values


def test_large_mean_keeps_accuracy():
    """1e4 + randn: each block's values are taken relative to a shift (the first row, then
    the running mean), so the float Welford update sees values of order 1. Within 1e-6 of
    float64 (the two-pass form was at 1.3e-5: its mean was rounded to float); with an
    outlier in the first row (the first block's shift) within 5e-6."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3 * COLUMN_BLOCK + 7, 130, generator=g) + 1e4
    outlier = x.clone()
    outlier[0] += 1000
    call, _ = _compile(lambda x, y: (x.var(0), y.var(0)), x, outlier)
    got_x, got_outlier = call([x, outlier])
    for got, t, bound in ((got_x, x, 1e-6), (got_outlier, outlier, 5e-6)):
        want = t.double().var(0)
        assert ((got.double() - want).abs() / want).max() < bound


def test_special_values():
    """A NaN, inf or -inf anywhere in a column (its first row, a later block) makes its
    variance NaN, as eager's; inf in every row too."""
    rows = 2 * COLUMN_BLOCK + 3
    x = torch.randn(rows, 9, generator=torch.Generator().manual_seed(3))
    x[0, 0], x[0, 1], x[0, 2] = NAN, INF, -INF
    x[COLUMN_BLOCK + 5, 3], x[rows - 1, 4] = INF, NAN
    x[:, 5] = INF
    x[7, 6], x[9, 6] = INF, -INF
    fn = lambda x: (x.var(0), x.std(0, correction=0), torch.var_mean(x, 0)[0])  # noqa: E731
    call, _ = _compile(fn, x)
    for got, want in zip(call([x]), fn(x)):
        torch.testing.assert_close(got, want, equal_nan=True)
        assert got[:7].isnan().all()


def test_m2_outside_the_columns_shape():
    """prims.var where the kernel is printed in rows: over a transposed input, beside an
    argmax (no column code for it), over the middle dims of a 3-d tensor, over all dims;
    its rows form is a mean loop, then the squares of the deviations."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(37, 65, generator=g) + 100
    x3 = torch.randn(4, 6, 5, generator=g)
    fn = lambda x, x3: (prims.var.default(x.t(), [0], 1.0),  # noqa: E731
                        prims.var.default(x3, [0, 2], 2.0), prims.var.default(x, [0, 1], 0.0))
    call, compiled = _compile(fn, x, x3)
    assert "tile" not in compiled.cpp_source
    for got, want in zip(call([x, x3]), fn(x.double(), x3.double())):
        torch.testing.assert_close(got, want.float())
    fn = lambda x: (prims.var.default(x, [0], 1.0), x.argmax(0))  # noqa: E731
    call, compiled = _compile(fn, x)
    assert compiled.kernel_count == 1 and "tile" not in compiled.cpp_source
    for got, want in zip(call([x]), fn(x)):
        torch.testing.assert_close(got, want)


def test_one_kernel_serves_every_row_count():
    """Symbolic sizes: the count, the correction's max(n - c, 0) and the blocks are
    arguments of one kernel."""
    cnt = CompileCounterWithBackend("kiln")
    fn = kiln.compile(lambda x: (x.var(0), *torch.var_mean(x, 0, correction=2)),
                      backend=cnt, dynamic=True)
    for rows in (3, 7, COLUMN_BLOCK + 1, 3 * COLUMN_BLOCK + 7):
        x = torch.randn(rows, COLUMN_TILE + 9) + 7
        for got, want in zip(fn(x), (x.var(0), *torch.var_mean(x, 0, correction=2))):
            torch.testing.assert_close(got, want)
    assert cnt.frame_count == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16],
                         ids=["float32", "float64", "bfloat16"])
def test_forward_and_backward_through_kiln_compile(dtype):
    def fn(x):
        mean_var = torch.var_mean(x, 0, correction=0, keepdim=True)
        return (x.var(0) + x.std(0, correction=2) * 0.5 + mean_var[0][0] * mean_var[1][0]
                + torch.std_mean(x * 2 + 1, 0)[0])

    x = (torch.randn(COLUMN_BLOCK + 9, COLUMN_TILE + 3, generator=torch.Generator()
                     .manual_seed(5), dtype=torch.float64) + 3).to(dtype).requires_grad_()
    ref = x.detach().double().requires_grad_()
    grad = torch.randn(COLUMN_TILE + 3, dtype=torch.float64)
    out = kiln.compile(fn, backend="kiln", fullgraph=True)(x)
    expected = fn(ref)
    out.backward(grad.to(dtype))
    expected.backward(grad)
    tol = {"rtol": 1.6e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(out, expected.to(dtype), **tol)
    torch.testing.assert_close(x.grad, ref.grad.to(dtype), **tol)
