"""Logging for a running node: a file in the data dir plus the console.

Log lines name AE titles, hosts, counts and internal ids, never PHI values. Some
libraries do log values (aiosqlite logs every SQL parameter at DEBUG, pydicom's
validation warnings quote element values, pynetdicom dumps identifiers), so those
loggers are held above the level where they would, whatever level the node runs at.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pydicom.config
from pynetdicom import _config as _pynetdicom_config

# Library loggers that would write PHI below these levels.
_PHI_SAFE_LEVELS = {
    "aiosqlite": logging.WARNING,   # DEBUG lines carry every SQL parameter
    "pydicom": logging.ERROR,       # validation warnings quote element values
    "pynetdicom": logging.WARNING,  # INFO/DEBUG dump PDUs and identifiers
}


def guard_phi_loggers() -> None:
    """Keep libraries that log data values from doing so. Idempotent."""
    for name, level in _PHI_SAFE_LEVELS.items():
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < level:
            logger.setLevel(level)
    _pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    _pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False


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
    guard_phi_loggers()
    quiet_pydicom_process_wide()


def quiet_pydicom_process_wide() -> None:
    """For a node process (``medfed run``), not for a library user's process: pydicom's
    read-time value checks quote values in warnings and cost ~10 % of ingest time;
    node/pacs/validate.py checks what storing an instance needs."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
