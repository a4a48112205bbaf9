"""A pytest plugin that sends every graph a ``kiln.testing.CompileCounter`` receives through
kiln's AOT autograd (``"aot_eager"``): the capture, graph-break and dynamic-shape corpora,
the seed ports and the models then check AOT against eager too, with every count unchanged.

    python -m pytest tests/capture tests/seeds tests/models -p tests.plugins.aot_everywhere

(``make test-aot-everywhere``). Not part of the default run: it doubles those suites' time.
"""

from __future__ import annotations

from typing import Any

import kiln.testing
from kiln.backends.debugging import aot_eager

_count = kiln.testing.CompileCounter.__call__


def _count_then_aot(self: kiln.testing.CompileCounter, gm: Any, example_inputs: list[Any]) -> Any:
    _count(self, gm, example_inputs)
    return aot_eager(gm, example_inputs)


kiln.testing.CompileCounter.__call__ = _count_then_aot  # type: ignore[method-assign]
