"""``python -m bench`` (``make bench``): every benchmark in bench/ that is present.

Why discovery: benchmarks arrive one module at a time; a module of this package counts
as a benchmark once it has a ``main(argv) -> int``. Arguments go to the ingest
benchmark (e.g. ``--slices 100 --skip-orthanc``); the others run with their defaults.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path
from typing import Callable

PACKAGE = __package__ or "bench"
FIRST = ("ingest", "bundle")  # these run first, in this order; the rest alphabetically
TAKES_ARGS = "ingest"

BenchMain = Callable[[list[str]], int]


def benchmark_names() -> list[str]:
    """Modules of bench/ in run order (helpers are filtered out by ``find_main``)."""
    names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                   if not m.name.startswith("_"))
    return [n for n in FIRST if n in names] + [n for n in names if n not in FIRST]


def find_main(name: str) -> BenchMain | None:
    """The benchmark's ``main``, or None if bench/<name>.py is absent or has none."""
    try:
        module = importlib.import_module(f"{PACKAGE}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{PACKAGE}.{name}":
            return None
        raise
    main = getattr(module, "main", None)
    return main if callable(main) else None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    failed: list[str] = []
    ran = 0
    for name in benchmark_names():
        bench_main = find_main(name)
        if bench_main is None:
            continue
        ran += 1
        print(f"\n=== bench.{name} ===", flush=True)
        if bench_main(args if name == TAKES_ARGS else []):
            failed.append(name)
    if not ran:
        print("no benchmarks found in bench/", file=sys.stderr)
        return 1
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
