"""A pytest plugin that sends every graph a ``kiln.testing.CompileCounter`` receives through
kiln's own backend (``"kiln"``: AOT autograd, then each forward and backward aten graph
compiled to C++ kernels by kiln/codegen): the capture, graph-break and dynamic-shape corpora,
the seed ports and the models then check generated code against eager too, with every count
unchanged.

    python -m pytest tests/capture tests/seeds tests/models -p tests.plugins.kiln_everywhere

(``make test-kiln-everywhere``). Not part of the default run: it compiles C++ for every graph.
Modelled on tests/plugins/aot_everywhere.py; use one of the two plugins at a time.
"""

from __future__ import annotations

from typing import Any

import kiln.testing
from kiln.backends.debugging import kiln_backend

_count = kiln.testing.CompileCounter.__call__


def _count_then_kiln(self: kiln.testing.CompileCounter, gm: Any, example_inputs: list[Any]
                     ) -> Any:
    _count(self, gm, example_inputs)
    return kiln_backend(gm, example_inputs)


kiln.testing.CompileCounter.__call__ = _count_then_kiln  # type: ignore[method-assign]
