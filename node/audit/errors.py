"""Typed errors of the audit log, each with a message an operator can act on."""

from __future__ import annotations

class AuditError(Exception):
    """Base class: something is wrong with the audit log."""


class AuditInputError(AuditError, ValueError):
    """A caller passed something that cannot be audited (a bug in the caller)."""


class AuditWriteError(AuditError):
    """The log could not be written or synced (disk full, permissions, I/O error)."""


class AuditTamperError(AuditError):
    """The log on disk does not add up; it is left untouched for investigation."""


class AuditLockedError(AuditError):
    """Another AuditLog (in this or another process) already has the file open."""


class AuditClosedError(AuditError):
    """append/sync after close."""


class MalformedRecord(Exception):
    """A line or head that is not what this module writes (reason in the message)."""
