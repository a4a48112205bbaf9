"""The ``kiln`` command: ``kiln cache info`` shows where the caches are and what they hold,
``kiln cache clear`` empties them (every kind, or the ones named with ``--kind``)."""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

KINDS = ("cpp", "fxgraph", "aotautograd", "pycode", "frames")


def _size(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cache_info() -> str:
    from kiln.cache.dirs import cache_dir

    root = cache_dir()
    lines = [f"kiln cache at {root}"]
    total = 0
    for kind in KINDS:
        count, size = _size(root / kind)
        total += size
        lines.append(f"  {kind:<11} {count:>6} files  {_human(size):>10}")
    lines.append(f"  {'total':<11} {'':>6}        {_human(total):>10}")
    return "\n".join(lines)


def cache_clear(kinds: Sequence[str] = KINDS) -> str:
    from kiln.cache.dirs import cache_dir

    root = cache_dir()
    for kind in kinds:
        shutil.rmtree(root / kind, ignore_errors=True)
    return f"kiln cache at {root}: cleared {', '.join(kinds)}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    cache = commands.add_parser("cache", help="show or empty kiln's on-disk caches")
    actions = cache.add_subparsers(dest="action", required=True)
    actions.add_parser("info", help="where the caches are and their sizes")
    clear = actions.add_parser("clear", help="remove cached entries")
    clear.add_argument("--kind", action="append", choices=KINDS,
                       help="only this kind (repeatable); default: all")
    args = parser.parse_args(argv)
    if args.action == "info":
        print(cache_info())
    else:
        print(cache_clear(args.kind or KINDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
