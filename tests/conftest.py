import pytest

import kiln


@pytest.fixture(autouse=True)
def _fresh_kiln():
    """Each test starts with no compiled entries; kiln's own errors raise instead of being
    logged and hidden behind an eager fallback. The FX graph cache is off unless a test
    turns it on (tests/cache do, in a fresh cache directory): a graph another test compiled
    would otherwise load from disk, with no code generated or logged. (The C++ library
    cache stays: it only saves compiler runs.)"""
    kiln.reset()
    kiln.counters.clear()
    with kiln.config.patch(raise_internal_errors=True, fx_graph_cache=False,
                           frame_cache=False):
        yield
    kiln.reset()
