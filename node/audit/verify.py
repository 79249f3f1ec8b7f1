"""End-to-end verification of a log and its signed head; reports every problem, never raises."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .entry import GENESIS, AuditEntry, parse_entry
from .errors import MalformedRecord
from .head import head_path_for, head_problem, read_head


MAX_PROBLEMS = 200


@dataclass
class _ChainCheck:
    """Feeds on lines in order and collects what breaks the chain (bounded list)."""

    head_seq: int | None = None
    entries: int = 0
    last_seq: int = 0
    hash_at_head: str | None = None
    problems: list[str] = field(default_factory=list)
    dropped: int = 0
    _last: AuditEntry | None = None
    _last_line: int = 0
    _chain_known: bool = True

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)
        else:
            self.dropped += 1

    def feed(self, lineno: int, raw: bytes) -> None:
        try:
            entry = parse_entry(raw)
        except MalformedRecord as exc:
            self.problem(f"line {lineno}: not a valid audit entry ({exc})")
            self._last, self._chain_known = None, False
            return
        self.entries += 1
        if entry.computed_hash() != entry.hash:
            self.problem(f"line {lineno}: entry hash does not match its contents (edited?)")
        self._check_link(lineno, entry)
        if entry.seq == self.head_seq and self.hash_at_head is None:
            self.hash_at_head = entry.hash
        self._last, self._last_line, self.last_seq = entry, lineno, entry.seq
        self._chain_known = True

    def _check_link(self, lineno: int, entry: AuditEntry) -> None:
        last = self._last
        if last is None:
            if self._chain_known and (entry.seq != 1 or entry.prev != GENESIS):
                self.problem(f"line {lineno}: log does not start at seq 1 "
                             "(entries removed from the start?)")
            return
        where = f"line {self._last_line}"
        if entry.prev != last.hash:
            self.problem(f"line {lineno}: chain broken: prev does not match {where} "
                         "(entry deleted or reordered?)")
        if entry.seq != last.seq + 1:
            self.problem(f"line {lineno}: seq {entry.seq} does not follow seq {last.seq} "
                         f"on {where} (entry deleted, inserted or reordered?)")


@dataclass(frozen=True)
class AuditVerification:
    ok: bool
    entries: int
    problems: list[str]
    last_seq: int = 0
    head_seq: int | None = None
    head_signature_checked: bool = False


def verify(path: Path, verify_key: bytes | None = None) -> AuditVerification:
    """Check a log (and its signed head) end to end; reports every problem, never raises.

    Without ``verify_key`` the head's seq/hash are still compared but its signature is
    not checked (``head_signature_checked`` says which). On a log that is being written
    to, the line in flight may show up as "torn"; verify a closed log for a clean answer.
    """
    path = Path(path)
    check, head, signature_checked = _ChainCheck(), None, False
    try:
        head = read_head(path)
    except MalformedRecord as exc:
        check.problem(f"head file {head_path_for(path).name} is not a valid signed head ({exc})")
    except OSError as exc:
        check.problem(f"cannot read head file {head_path_for(path).name}: {exc.strerror}")
    if head is not None:
        check.head_seq = head.seq
        if verify_key is not None:
            signature_checked = True
            if not head.signature_valid(verify_key):
                check.problem("head signature invalid (forged, or signed by another node's key)")
    try:
        with open(path, "rb") as log:
            for lineno, raw in enumerate(log, 1):
                if not raw.endswith(b"\n"):
                    check.problem(f"line {lineno}: torn last line ({len(raw)} bytes without a "
                                  "newline; crash mid-write?)")
                    break
                check.feed(lineno, raw[:-1])
    except OSError as exc:
        check.problem(f"cannot read audit log {path}: {exc.strerror}")
    if head is not None:
        problem = head_problem(head, check.last_seq, check.hash_at_head)
        if problem:
            check.problem(problem)
    elif verify_key is not None and check.entries:
        check.problem(f"no signed head {head_path_for(path).name} (deleted?); removal of "
                      "entries from the end cannot be ruled out")
    problems = check.problems + ([f"... and {check.dropped} more problems"] if check.dropped else [])
    return AuditVerification(ok=not problems, entries=check.entries, problems=problems,
                             last_seq=check.last_seq, head_seq=head.seq if head else None,
                             head_signature_checked=signature_checked)
