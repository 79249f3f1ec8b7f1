"""Checking stored provenance: signatures, digests, links, and the audit chain behind them.

``medfed provenance verify`` runs this over every record a node holds (or one run's).
A record is good when its stored digest is the digest of its content, its signature
verifies with its signer's key, every record it links to is held with the same digest,
and — for records this node signed — an entry of this node's intact audit log carries
its digest. Any edit of a score, a ref, a link or a signature shows up as a problem.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from node.audit.entry import parse_entry
from node.audit.errors import MalformedRecord
from node.audit.verify import verify as verify_audit_log

from .provenance import KeyLookup, ProvenanceError, ProvenanceRecord, verify_record
from .records import StoredRecord

MAX_PROBLEMS = 100


@dataclass
class ProvenanceReport:
    records: int = 0
    problems: list[str] = field(default_factory=list)
    audit_ok: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)


def audited_digests(audit_path: Path) -> set[str]:
    """Every ``digest`` named in an audit entry's detail (unparsable lines are skipped:
    the chain check reports them)."""
    found: set[str] = set()
    if not audit_path.exists():
        return found
    with open(audit_path, "rb") as handle:
        for raw in handle:
            try:
                entry = parse_entry(raw.rstrip(b"\n"))
            except MalformedRecord:
                continue
            digest = entry.detail.get("digest")
            if isinstance(digest, str):
                found.add(digest)
    return found


def verify_stored(stored: list[StoredRecord], key_for: KeyLookup, *, own_node: str,
                  audit_path: Path, audit_key: bytes) -> ProvenanceReport:
    report = ProvenanceReport()
    chain = verify_audit_log(audit_path, audit_key)
    if not chain.ok:
        report.audit_ok = False
        report.problem(f"the audit log does not verify ({len(chain.problems)} problem(s)); "
                       "run 'medfed audit verify'")
    audited = audited_digests(audit_path)
    parsed: dict[str, ProvenanceRecord] = {}
    for item in stored:
        report.records += 1
        try:
            record = ProvenanceRecord.from_dict(json.loads(item.body))
        except (ValueError, ProvenanceError) as exc:
            report.problem(f"run {item.run_id}: a stored record cannot be read ({exc})")
            continue
        if record.digest != item.digest:
            report.problem(f"record {record.record_id}: content changed after it was stored "
                           "(digest differs)")
        try:
            verify_record(record, key_for)
        except ProvenanceError as exc:
            report.problem(str(exc))
        if record.site == own_node and record.digest not in audited:
            report.problem(f"record {record.record_id}: no audit entry of this node carries its "
                           "digest (not recorded when computed, or the log was altered)")
        parsed[record.record_id] = record
    for record in parsed.values():
        for link in record.links:
            target = parsed.get(str(link.get("record_id")))
            if target is None:
                report.problem(f"record {record.record_id}: links record "
                               f"{str(link.get('record_id'))[:32]} which this node does not hold")
            elif target.digest != link.get("digest"):
                report.problem(f"record {record.record_id}: linked record {target.record_id} has "
                               "changed since it was linked (digest differs)")
    return report
