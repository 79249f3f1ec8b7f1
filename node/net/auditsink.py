"""The seam to the audit log: the peer API records every refusal through this.

``node.audit.AuditLog`` satisfies it; tests pass a list-collecting stub.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

log = logging.getLogger(__name__)


class AuditSink(Protocol):
    def append(self, action: str, actor: str, outcome: str, subject: str = "",
               **detail: str | int | float | bool) -> Any: ...


def record(sink: AuditSink, action: str, actor: str, outcome: str, subject: str = "",
           **detail: str | int | float | bool) -> None:
    """Append, and if the log itself fails, say so in the service log (the refusal stands)."""
    try:
        sink.append(action, actor, outcome, subject, **detail)
    except Exception as exc:  # no audit failure may turn a refusal into a crash
        log.error("audit log rejected an entry (%s: %s); action=%s outcome=%s",
                  type(exc).__name__, exc, action, outcome)
