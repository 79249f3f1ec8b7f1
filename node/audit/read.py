"""Reading a node's audit log newest first, for a user's own trail ("who saw what").

Synchronous and bounded: scans at most ``scan`` lines back from the end and returns at
most ``limit`` matching entries, so a long log never stalls the caller (run it in a
thread from async code). Lines that do not parse are skipped here; ``verify`` is the
place that reports them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .entry import AuditEntry, parse_entry
from .errors import MalformedRecord
from .files import complete_end, lines_backwards


def recent_entries(path: Path, match: Callable[[AuditEntry], bool], *, limit: int = 200,
                   scan: int = 200_000) -> list[AuditEntry]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return []
    found: list[AuditEntry] = []
    try:
        end = complete_end(fd, os.fstat(fd).st_size)
        for n, raw in enumerate(lines_backwards(fd, end)):
            if n >= scan or len(found) >= limit:
                break
            if not raw.strip():
                continue
            try:
                entry = parse_entry(raw)
            except MalformedRecord:
                continue
            if match(entry):
                found.append(entry)
    finally:
        os.close(fd)
    return found
