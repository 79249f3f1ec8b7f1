"""What the DICOM service needs from the rest of the node: the query backend (local
store or the federation), the audit log, and the records passed between them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Protocol

from pydicom.dataset import Dataset

from . import status


class Auditor(Protocol):
    def append(self, action: str, actor: str, outcome: str, subject: str = "",
               **detail: Any) -> Any: ...


@dataclass(frozen=True)
class RetrieveItem:
    """One instance a C-GET/C-MOVE will send: where its file is and how it is encoded."""

    path: Path
    sop_class_uid: str
    transfer_syntax: str


class QueryBackend(Protocol):
    """What the SCP needs from the query side (local store, or the federation)."""

    def find(self, identifier: Dataset, model: str, *, called_ae: str,
             calling_ae: str) -> Awaitable[list[Dataset]]: ...

    # Optional: ``find_sync(...)`` with find's arguments, called from the association's
    # thread, returning the answer or None (then ``find`` is awaited on the loop).

    def select(self, identifier: Dataset, model: str, *, called_ae: str,
               calling_ae: str) -> Awaitable[list[RetrieveItem]]: ...


class QueryRefused(Exception):
    """A query or retrieve the node will not run, with the status to answer."""

    def __init__(self, reason: str, code: int = status.IDENTIFIER_MISMATCH) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = code
