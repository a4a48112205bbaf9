"""Column reductions (kiln/codegen/cpp_columns.py): tiles across the kept dim, float sums
accumulated in blocks of rows, ragged tiles and blocks, against eager and float64."""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from kiln.codegen.compile_graph import compile_graph
from kiln.codegen.cpp_columns import COLUMN_BLOCK, COLUMN_TILE
from kiln.codegen.decompositions import decomposition_table


def _compile(fn, *args):
    gm = make_fx(fn, decomposition_table=decomposition_table())(*args)
    call = compile_graph(gm, list(args))
    return call, call._kiln_compiled


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
    call, compiled = _compile(lambda x: x.sum(0), x)
    assert "b0 += " in compiled.cpp_source  # the blocked loop
    (got,) = call([x])
    want = x.double().sum(0)
    assert ((got.double() - want).abs() / want).max() < 1e-6


def test_half_precision_columns_accumulate_in_float():
    x = (torch.randn(2 * COLUMN_BLOCK + 3, 70) + 2).to(torch.bfloat16)
    call, _ = _compile(lambda x: x.sum(0), x)
    (got,) = call([x])
    torch.testing.assert_close(got.float(), x.double().sum(0).float(), rtol=1e-2, atol=1e-2)
