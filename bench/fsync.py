"""What one flush costs on this disk: ``python -m bench.fsync [FOLDER]``.

Why: the ingest journal (node/pacs/journal.py) rests on the difference between a flush
that must commit the file system's journal (new file, rename, grown file, folder) and
a flush of data written over blocks already allocated and written. Prints medians (ms)
of 100 runs each, 512 KiB per instance as a CT slice is; nothing is recorded.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

N = 100
DATA = os.urandom(512 * 1024)


def _median_ms(step: Callable[[int], None]) -> float:
    times = []
    for i in range(N):
        t0 = time.perf_counter()
        step(i)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _dir_fsync(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def measure(folder: Path) -> dict[str, float]:
    def new_file(i: int, sync: bool = True, dirsync: bool = False) -> None:
        fd = os.open(folder / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, DATA)
        if sync:
            os.fdatasync(fd)
        os.close(fd)
        if dirsync:
            _dir_fsync(folder)

    journal = os.open(folder / "journal", os.O_RDWR | os.O_CREAT, 0o600)
    for off in range(0, N * len(DATA), len(DATA)):
        os.pwrite(journal, DATA, off)
    os.fsync(journal)

    def overwrite(i: int) -> None:
        os.pwrite(journal, DATA, i * len(DATA))
        os.fdatasync(journal)

    db = sqlite3.connect(folder / "db.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT)")

    def commit(sync: str) -> Callable[[int], None]:
        def step(_i: int) -> None:
            db.execute(f"PRAGMA synchronous={sync}")
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t(b) VALUES (?)", ("x" * 300,))
            db.execute("COMMIT")
        return step

    return {
        "write a new file, no flush": _median_ms(lambda i: new_file(i, sync=False)),
        "write a new file + fdatasync": _median_ms(lambda i: new_file(i + N)),
        "... + folder fsync": _median_ms(lambda i: new_file(i + 2 * N, dirsync=True)),
        "overwrite written blocks + fdatasync": _median_ms(overwrite),
        "SQLite WAL commit, synchronous=FULL": _median_ms(commit("FULL")),
        "SQLite WAL commit, synchronous=NORMAL": _median_ms(commit("NORMAL")),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with tempfile.TemporaryDirectory(prefix="bench-fsync-", dir=args[0] if args else None) as d:
        for what, ms in measure(Path(d)).items():
            print(f"{ms:8.2f} ms  {what}")
    print(f"load average: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
