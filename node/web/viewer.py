"""The OHIF viewer: where the bootstrap unpacked it (filled in by the viewer step)."""

from __future__ import annotations

from pathlib import Path


def installed_ohif_dir() -> Path | None:
    return None
