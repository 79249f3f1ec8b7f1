"""Checking each site's answer and merging them into one ranked list (pure, no I/O).

A site's matches count only if its provenance record is signed by that very site, says
it computed this request with this method, and lists exactly the matches it returned
(refs and scores). Anything else is reported as that site's error, not silently mixed
in. Ranking is by score, best first; ties go to the lower site name, then ref, so the
order is the same on every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

from node.net.roster import Member
from node.query.fanout import AnswerError, SiteAnswer

from .messages import Match, MessageError, SimilarityRequest, match_from_json
from .provenance import ProvenanceError, ProvenanceRecord, entity_digest, verify_record

LEVELS = ("deidentified", "identified")


def answer_parser(request: SimilarityRequest) -> Callable[[Member, dict[str, Any], float], SiteAnswer]:
    """The fan-out parser for answers to ``request`` (raises AnswerError on anything off)."""
    request_digest = entity_digest(request.claims())

    def parse(site: Member, doc: dict[str, Any], latency_ms: float) -> SiteAnswer:
        level, raw, scanned = doc.get("level"), doc.get("matches"), doc.get("scanned")
        if level not in LEVELS:
            raise AnswerError("similarity answer level must be deidentified or identified")
        if not isinstance(raw, list) or len(raw) > request.top:
            raise AnswerError(f"similarity answer must list at most {request.top} matches")
        if not isinstance(scanned, int) or isinstance(scanned, bool) or scanned < 0:
            raise AnswerError("similarity answer must say how many series it scanned")
        try:
            matches = [match_from_json(m) for m in raw]
            record = ProvenanceRecord.from_dict(doc.get("provenance"))
            verify_record(record, lambda node: site.verify_key if node == site.node_id else None)
        except (MessageError, ProvenanceError) as exc:
            raise AnswerError(f"similarity answer refused: {exc}") from None
        check_record(record, request, request_digest, matches)
        return SiteAnswer(site, "ok", latency_ms, str(level),
                          rows=[m.to_json() for m in matches], counts={"scanned": scanned},
                          payload={"provenance": record.to_dict(),
                                   "scan_ms": float(doc.get("scan_ms", 0.0) or 0.0)})

    return parse


def check_record(record: ProvenanceRecord, request: SimilarityRequest, request_digest: str,
                 matches: Sequence[Match]) -> None:
    if record.kind != "similarity.compute":
        raise AnswerError("provenance record is not a similarity computation")
    if (record.method.get("id"), record.method.get("version")) != (request.method, request.version):
        raise AnswerError("provenance names another method or version than requested")
    if not any(i.get("role") == "request" and i.get("digest") == request_digest
               for i in record.inputs):
        raise AnswerError("provenance record is not about this request")
    listed = [(o.get("ref"), o.get("score"), o.get("bundle_id", "")) for o in record.outputs]
    if listed != [(m.ref, m.score, m.bundle_id) for m in matches]:
        raise AnswerError("provenance record does not list the matches returned")


@dataclass(frozen=True)
class RankedMatch:
    rank: int
    site: str
    node_id: str
    match: Match

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "site": self.site, "node_id": self.node_id,
                "fetch_ref": f"{self.node_id}:{self.match.bundle_id or self.match.ref}",
                **self.match.to_json()}


def rank(answers: Sequence[SiteAnswer], top: int) -> list[RankedMatch]:
    pool: list[tuple[float, str, str, str, Match]] = []
    for answer in answers:
        if answer.status != "ok":
            continue
        for row in answer.rows:
            match = match_from_json(row)
            pool.append((-match.score, answer.site.name, match.ref, answer.site.node_id, match))
    pool.sort(key=lambda item: item[:3])
    return [RankedMatch(i + 1, name, node, match)
            for i, (_s, name, _r, node, match) in enumerate(pool[:top])]
