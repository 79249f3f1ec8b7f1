"""Logging for a running node: a file in the data dir plus the console.

Log lines name AE titles, hosts, counts and internal ids, never PHI values.
"""

from __future__ import annotations

import logging
from pathlib import Path


def setup_logging(log_file: Path | None, level: str = "INFO") -> None:
    root = logging.getLogger()
    root.setLevel(level)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in root.handlers):
        console = logging.StreamHandler()
        console.setFormatter(fmt)
        root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file)
        handler.setFormatter(fmt)
        root.addHandler(handler)
    # pynetdicom logs every PDU at INFO; keep its warnings only.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # pydicom's validation warnings quote element values (names, IDs): keep them out.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
