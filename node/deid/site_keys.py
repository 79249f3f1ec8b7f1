"""A site-local de-identification key, for research exports before (or without) joining.

The federation's keys make pseudonyms and keyed UIDs link across sites. A node that has
not joined has none, so `medfed deid` uses a key of its own, made once and kept in the
node's key folder (``site-deid.key``, mode 0600): exports link within this site only.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .actions import DeidKeys

SITE_KEY_FILE = "site-deid.key"
KEY_BYTES = 32


def site_deid_keys(key_dir: Path) -> DeidKeys:
    """The site's own keys (created on first use; the same on every later run)."""
    path = key_dir / SITE_KEY_FILE
    if not path.exists():
        key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_bytes(2 * KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    raw = path.read_bytes()
    return DeidKeys(uid_key=raw[:KEY_BYTES], patient_key=raw[KEY_BYTES:2 * KEY_BYTES])
