"""A pytest plugin that runs every capture-corpus program a second way: compiled with the
``"kiln"`` backend and the persistent frame cache on (a fresh cache directory), called,
then after ``kiln.reset()`` compiled again, which loads the persisted frame where there is
one (kiln/capture/persist.py), and called again: both calls must equal eager (results,
inputs after the call, grad mode). The usual check with its counts runs first, unchanged.

    python -m pytest tests/capture/test_corpus_*.py -p tests.plugins.frame_cache_everywhere

(``make test-frame-cache-everywhere``). Not part of the default run: it compiles C++ for
every program. The summary says how many programs were loaded from a persisted frame.
"""

from __future__ import annotations

import copy
import logging
import re
from collections import Counter
from typing import Any

import kiln
from kiln.cache import fresh_cache
from kiln.counters import counters
from tests.capture import corpus_helpers

_check = corpus_helpers.check
_stats: Counter[str] = Counter()
_reasons: Counter[str] = Counter()


class _NotPersisted(logging.Handler):
    """Collects why frames were not persisted (kiln.cache logs it at INFO)."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for marker in ("is not persisted:", "not stored:", "bypass"):
            if marker in message:
                reason = marker + " " + message.split(marker, 1)[1].strip()
                _reasons[re.sub(r"0x[0-9a-f]+|\d+", "N", reason)[:100]] += 1


_logger = logging.getLogger("kiln.cache")
_logger.addHandler(_NotPersisted(logging.INFO))
_logger.setLevel(logging.INFO)


def _check_then_reload(fn: Any, *args: Any, frames: int, ops: int, **kwargs: Any) -> None:
    _check(fn, *args, frames=frames, ops=ops, **kwargs)
    with fresh_cache(), kiln.config.patch(fx_graph_cache=True, frame_cache=True):
        for call in (1, 2):
            if call == 2:
                kiln.reset()
            hits = counters["frames"]["persisted_hit"]
            eager_inputs = copy.deepcopy((args, kwargs))
            compiled_inputs = copy.deepcopy((args, kwargs))
            compiled = kiln.compile(fn, fullgraph=True)
            corpus_helpers._compare_runs(fn, compiled, eager_inputs, compiled_inputs, call)
        _stats["loaded" if counters["frames"]["persisted_hit"] > hits else "compiled"] += 1


corpus_helpers.check = _check_then_reload


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(
        f"frame cache everywhere: {_stats['loaded']} programs loaded from a persisted frame, "
        f"{_stats['compiled']} compiled again (not persisted)")
    for reason, count in _reasons.most_common(10):
        terminalreporter.write_line(f"  {count:4d}  {reason}")
