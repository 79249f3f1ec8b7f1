"""Answering a similarity computation request at this site: ``POST /v1/similar``.

Never trust the asker. Checks, in order, each refusal audited (``similar.serve``):
a verified user assertion (403), a well-formed request (400) signed by the sending
site (403), a policy rule granting at least de-identified answers (403), a method this
site knows in the requested version (400) and allows (403 ``method_not_allowed``: the
asker's fan-out reports the site as ``denied``), a vector of the method's length with
finite values (400). Then one matrix-vector product over the cached vectors of this
site's series matching the filters, the top matches shaped to what the policy releases,
a signed ``similarity.compute`` provenance record, and an audit entry with its digest.
No pixel data is read or sent here: only cached vectors are touched.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from node.audit.log import AuditLog
from node.config.model import NodeConfig
from node.deid.actions import keyed_uid
from node.identity import NodeIdentity
from node.net.assertion import AssertionRefused, UserAssertion, accept_assertion
from node.net.membership import Membership
from node.net.reqsign import RequestRefused
from node.net.roster import Member
from node.policy import Level, PolicyError, decide, policy_from_dict
from node.store.db import MetadataStore

from .features import FeatureMatrix
from .messages import Match, MessageError, SimilarityRequest, verify_request
from .method import SimilarityMethod
from .provenance import ProvenanceRecord, entity_digest, new_record_id, now_iso, sign_record
from .records import latest_diagnoses, save_records
from .registry import MethodRegistry
from .reporttext import deidentify_text
from .sitepolicy import SimilarityPolicyError, similarity_policy

if TYPE_CHECKING:
    from node.net.server import PeerRequest

SIMILAR_PATH = "/v1/similar"
AUDIT_ACTION = "similar.serve"
BODY_LIMIT = 256 << 10


class ScanSite(Protocol):
    cfg: NodeConfig
    identity: NodeIdentity
    store: MetadataStore
    audit: AuditLog | None
    membership: Membership | None


@dataclass
class SiteScanner:
    """One per node: the method registry and each method's in-memory vectors."""

    registry: MethodRegistry
    matrices: dict[str, FeatureMatrix] = field(default_factory=dict)
    bundle_ids: Any = None   # async (series_uid) -> bundle id or "" (the publisher's catalogue)

    def matrix(self, method: SimilarityMethod) -> FeatureMatrix:
        current = self.matrices.get(method.id)
        if current is None or current.method is not method:
            current = self.matrices[method.id] = FeatureMatrix(method)
        return current


def _audit(site: ScanSite, actor: str, outcome: str, subject: str = "", **detail: Any) -> None:
    if site.audit is None:
        raise RequestRefused(503, "audit_unavailable",
                             "this site cannot audit the computation, so it does not run it")
    site.audit.append(AUDIT_ACTION, actor, outcome, subject, **detail)


def _refuse(site: ScanSite, actor: str, status: int, code: str, reason: str,
            **detail: Any) -> RequestRefused:
    _audit(site, actor, "denied" if status == 403 else "refused", code=code, **detail)
    return RequestRefused(status, code, reason)


def top_positions(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first (ties: lower index first)."""
    if scores.size == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64)
    k = min(k, scores.size)
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]


_DETAIL_SQL = """
SELECT se.id, se.series_uid, se.modality, se.body_part, s.study_date, p.pseudonym
FROM series se JOIN studies s ON s.id = se.study_id
JOIN patients p ON p.id = s.patient_id WHERE se.id IN ({marks})"""

_PHI_SQL = """
SELECT se.id, pp.pid, pp.issuer, pp.name, pp.birth_date, coalesce(sp.accession, ''),
       coalesce(sp.study_id_text, ''), coalesce(sp.referring_physician, '')
FROM series se JOIN studies s ON s.id = se.study_id
JOIN patient_phi pp ON pp.patient_id = s.patient_id
LEFT JOIN study_phi sp ON sp.study_id = s.id WHERE se.id IN ({marks})"""


async def _shape(site: ScanSite, scanner: SiteScanner, ids: list[int],
                 scores: dict[int, float], release_diagnosis: bool, release_report: bool,
                 linkage_key: bytes, uid_key: bytes) -> list[Match]:
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    await site.store.ensure_pseudonyms(linkage_key)   # the stored federation pseudonym
    rows = {int(r[0]): r for r in await site.store.fetchall(_DETAIL_SQL.format(marks=marks), ids)}
    texts = await latest_diagnoses(site.store, ids) if release_diagnosis else {}
    phi: dict[int, tuple[str, ...]] = {}
    if texts:
        phi = {int(r[0]): tuple(str(v) for v in r[1:])
               for r in await site.store.fetchall(_PHI_SQL.format(marks=marks), ids)}
    out = []
    for sid in ids:
        row = rows.get(sid)
        if row is None:
            continue
        study_date = str(row[4] or "")
        diagnosis, report = texts.get(sid, ("", ""))
        known = phi.get(sid, ())
        bundle = await scanner.bundle_ids(str(row[1])) if scanner.bundle_ids else ""
        out.append(Match(
            ref=keyed_uid(str(row[1]), uid_key), score=round(scores[sid], 6), bundle_id=bundle or "",
            patient=str(row[5]), modality=str(row[2]), body_part=str(row[3]),
            study_month=f"{study_date[:4]}-{study_date[4:6]}" if len(study_date) >= 6 else "",
            diagnosis=deidentify_text(diagnosis, known, limit=200) if diagnosis else "",
            report=deidentify_text(report, known) if (report and release_report) else ""))
    return out


async def answer_similarity(site: ScanSite, scanner: SiteScanner, sender: Member,
                            body: Mapping[str, Any], *, now: float | None = None) -> dict[str, Any]:
    """The answer this site gives ``sender`` for a body {request, assertion}."""
    membership = site.membership
    if membership is None:
        raise RequestRefused(503, "not_a_member", "this node has not joined a federation")
    now = time.time() if now is None else now
    actor = f"{sender.node_id[:16]}/?"
    try:
        assertion: UserAssertion = accept_assertion(body.get("assertion"), membership.roster,
                                                    sender.node_id, now=now)
    except AssertionRefused as exc:
        raise _refuse(site, actor, 403, exc.code, exc.reason) from None
    actor = f"{sender.node_id[:16]}/{assertion.user}"
    try:
        request = SimilarityRequest.from_json(body.get("request"))
        verify_request(request, sender.node_id, sender.verify_key, now=now)
    except MessageError as exc:
        status = 403 if exc.code in ("bad_signature", "request_wrong_site", "request_expired") else 400
        raise _refuse(site, actor, status, exc.code, exc.reason) from None
    detail = {"request": request.request_id, "method": request.method,
              "version": request.version, "purpose": assertion.purpose, "role": assertion.role}
    try:
        policy = policy_from_dict(site.cfg.policy)
        allow = similarity_policy(site.cfg.policy)
    except (PolicyError, SimilarityPolicyError) as exc:
        raise _refuse(site, actor, 503, "policy_unusable",
                      f"this site's policy cannot be loaded: {exc}", **detail) from None
    decision = decide(policy, assertion, sender)
    if decision.level in (Level.DENY, Level.COUNT):
        raise _refuse(site, actor, 403, "policy_denied",
                      f"similarity results need de-identified access; {decision.reason}",
                      rule=decision.rule or "", **detail)
    method = scanner.registry.methods.get(request.method)
    if method is None:
        raise _refuse(site, actor, 400, "unknown_method",
                      f"this site does not know similarity method {request.method!r}", **detail)
    if method.version != request.version:
        raise _refuse(site, actor, 400, "method_version_mismatch",
                      f"this site runs {method.id} version {method.version}, not {request.version}",
                      **detail)
    if not allow.allows(method.id, method.version):
        raise _refuse(site, actor, 403, "method_not_allowed",
                      f"this site's policy does not allow similarity method "
                      f"{method.id}@{method.version} (similarity_methods)", **detail)
    try:
        query = request.array(method.dim)
    except MessageError as exc:
        raise _refuse(site, actor, 400, exc.code, exc.reason, **detail) from None
    secrets = membership.secrets
    started = time.perf_counter()
    matrix = scanner.matrix(method)
    await matrix.refresh(site.store)
    rows = matrix.candidates(request.modality, request.body_part)
    scores = method.score(query, matrix.vectors[rows]) if rows.size else np.zeros(0, np.float32)
    excluded = set(request.exclude)
    picked: list[int] = []
    score_of: dict[int, float] = {}
    for pos in top_positions(scores, request.top + len(excluded)):
        row = int(rows[pos])
        if excluded and keyed_uid(matrix.series_uids[row], secrets.uid_key) in excluded:
            continue
        sid = int(matrix.series_ids[row])
        picked.append(sid)
        score_of[sid] = float(scores[pos])
        if len(picked) == request.top:
            break
    matches = await _shape(site, scanner, picked, score_of, allow.releases_diagnosis,
                           allow.releases_report, secrets.linkage_key, secrets.uid_key)
    scan_ms = round((time.perf_counter() - started) * 1000, 3)
    record = sign_record(site.identity, ProvenanceRecord(
        new_record_id(), "similarity.compute", site.identity.node_id_hex, site.cfg.name, now_iso(),
        assertion.user,
        {"id": method.id, "version": method.version,
         "params": {**method.params(), "top": request.top, "modality": request.modality,
                    "body_part": request.body_part, "exclude": len(request.exclude)}},
        [{"digest": entity_digest(request.claims()), "role": "request",
          "request_id": request.request_id, "home": request.home},
         {"digest": entity_digest(list(request.vector)), "role": "query_vector"},
         {"digest": entity_digest(sorted(int(matrix.series_ids[int(r)]) for r in rows)),
          "role": "scanned_series", "count": int(rows.size)}],
        [{"ref": m.ref, "bundle_id": m.bundle_id, "score": m.score} for m in matches]))
    await save_records(site.store, request.request_id, [record])
    _audit(site, actor, "ok", request.request_id, record=record.record_id, digest=record.digest,
           scanned=int(rows.size), matches=len(matches), scan_ms=scan_ms, level=decision.level.value,
           **{k: v for k, v in detail.items() if k != "request"})
    return {"level": decision.level.value, "scanned": int(rows.size), "scan_ms": scan_ms,
            "matches": [m.to_json() for m in matches], "provenance": record.to_dict()}


def register_similarity_route(node: Any, scanner: SiteScanner) -> None:
    async def handle(call: "PeerRequest") -> dict[str, Any]:
        return await answer_similarity(node, scanner, call.sender, call.json)

    node.peer.add_route("POST", SIMILAR_PATH, handle, body_limit=BODY_LIMIT)
