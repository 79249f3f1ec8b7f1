"""What the web app needs to know besides the node itself (from [http], or set by tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class WebSettings:
    secure: bool                      # served over TLS: cookies get Secure and __Host-
    session_idle_s: float = 900.0
    session_absolute_s: float = 12 * 3600.0
    persist_sessions: bool = False    # keep sessions on disk across restarts (the node's [http])
    max_login_failures: int = 5       # per user name (and 4x that per client address)
    lockout_s: float = 900.0
    ohif_dir: Path | None = None      # unpacked OHIF dist/ (None: viewer not installed)
