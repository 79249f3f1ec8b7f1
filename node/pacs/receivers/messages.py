"""What crosses the channel: an association handed over, an instance's rows.

Plain JSON of dataclass fields (no pickle: the receiver is a separate program that
may be restarted, and a message is data, never code).
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass
from typing import Any

from pynetdicom.presentation import PresentationContext

from ...store.records import (InstanceRec, InstanceRecord, PatientRec, SeriesRec,
                              StudyRec)
from ...store.writer import IngestResult, StoredFile


@dataclass(frozen=True)
class Handoff:
    """An association the main process negotiated, for a receiver to serve."""

    calling_ae: str
    called_ae: str
    peer_host: str
    max_send: int
    max_receive: int
    contexts: tuple[tuple[int, str, str], ...]   # (id, abstract syntax, transfer syntax)
    buffered: bytes = b""                        # read past the A-ASSOCIATE-RQ, if any

    def to_json(self) -> dict[str, Any]:
        return {"calling": self.calling_ae, "called": self.called_ae,
                "host": self.peer_host, "max_send": self.max_send,
                "max_receive": self.max_receive, "contexts": [list(c) for c in self.contexts],
                "buffered": base64.b64encode(self.buffered).decode()}

    @classmethod
    def from_json(cls, m: dict[str, Any]) -> "Handoff":
        return cls(str(m["calling"]), str(m["called"]), str(m["host"]), int(m["max_send"]),
                   int(m["max_receive"]),
                   tuple((int(i), str(a), str(t)) for i, a, t in m["contexts"]),
                   base64.b64decode(m.get("buffered", "")))

    def presentation_contexts(self) -> dict[int, PresentationContext]:
        out: dict[int, PresentationContext] = {}
        for context_id, abstract, transfer in self.contexts:
            cx = PresentationContext()
            cx.context_id = context_id
            cx.abstract_syntax = abstract
            cx.transfer_syntax = [transfer]
            cx.result = 0x00
            out[context_id] = cx
        return out

    @classmethod
    def of(cls, calling: str, called: str, host: str, max_send: int, max_receive: int,
           contexts: dict[int, PresentationContext], buffered: bytes) -> "Handoff":
        return cls(calling, called, host, max_send, max_receive,
                   tuple((int(i), str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
                         for i, cx in sorted(contexts.items())), buffered)


def record_to_json(rec: InstanceRecord) -> dict[str, Any]:
    # the flat records' own field dicts: dataclasses.asdict deep-copies every value
    # (0.15 ms an instance, a sixth of a receiver's Python time per C-STORE)
    return {"patient": vars(rec.patient), "study": vars(rec.study),
            "series": vars(rec.series), "instance": vars(rec.instance)}


def record_from_json(m: dict[str, Any]) -> InstanceRecord:
    return InstanceRecord(PatientRec(**m["patient"]), StudyRec(**m["study"]),
                          SeriesRec(**m["series"]), InstanceRec(**m["instance"]))


def stored_to_json(stored: StoredFile | None) -> list[Any] | None:
    return None if stored is None else [stored.path, stored.size, stored.sha256]


def stored_from_json(m: list[Any] | None) -> StoredFile | None:
    return None if m is None else StoredFile(str(m[0]), int(m[1]), str(m[2]))


def result_to_json(r: IngestResult) -> dict[str, Any]:
    return asdict(r)


def result_from_json(m: dict[str, Any]) -> IngestResult:
    return IngestResult(int(m["instance_id"]), int(m["series_id"]), bool(m["duplicate"]),
                        bool(m["same_content"]))
