"""Tamper-evident audit log: who touched what at this site, in an order nobody can quietly rewrite.

Every access a site serves (DICOM associations, C-STORE/C-FIND/C-GET/C-MOVE, federated
queries, key-share releases, refusals) is one JSON line. Each line holds the SHA-256 of
the line before (``prev``) and its own ``hash`` over a canonical encoding (sorted keys,
no whitespace, ASCII) of itself without ``hash``. Editing, deleting, inserting or
reordering a line therefore breaks the chain *at that line*. Cutting lines off the *end*
leaves a valid shorter chain, so with a node identity the log also keeps
``<path>.head``: the newest ``(seq, hash)`` signed with the node's Ed25519 key.
``verify`` checks that the chain reaches the head's seq with the head's hash.

No PHI. Entries must never carry patient names, patient ids, birth dates, accession
numbers or free text. They name records by internal ids (row ids, bundle ids,
pseudonymous UIDs) or by ``ref(value, salt)``, a short keyed hash. The log cannot tell
PHI from other text, so keeping it out is the caller's job; every text value is cut to
``MAX_TEXT`` characters so that a mistake stays small and entries stay bounded.

Durability: each append is one ``write(2)`` of a whole line, so kill -9 loses no entry
that ``append`` returned. A background thread fsyncs every ``fsync_interval_s`` (and
``close`` does too). The head is signed only for entries that are already fsynced, so a
power cut cannot make a good log look truncated.

Recovery at open (decision): a *torn* last line (bytes after the final newline: a write
cut short by a crash) is moved to ``<path>.torn-<UTC time>`` and an ``audit.recovered``
entry records it, so the chain continues and the cut stays visible. Anything else that
does not add up (a last complete line that does not parse or hash, a head that is not
signed by this node, or a log that disagrees with its head) is not a crash artefact:
opening raises ``AuditTamperError`` and writes nothing, so the evidence and the head that
proves it are kept for investigation.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..identity import NodeIdentity
from .entry import GENESIS, AuditEntry, build_entry, clean_detail, clean_text, parse_entry, utc_now_iso
from .errors import (AuditClosedError, AuditInputError, AuditLockedError, AuditTamperError,
                     AuditWriteError, MalformedRecord)
from .files import CHUNK, complete_end, fsync_dir, lines_backwards, write_all, write_atomically
from .head import SignedHead, head_path_for, head_problem, read_head


@dataclass(frozen=True)
class _Tail:
    seq: int
    hash: str
    complete_end: int
    torn_bytes: int


def _tamper(path: Path, what: str) -> AuditTamperError:
    return AuditTamperError(
        f"audit log {path}: {what}. Nothing was written. Keep the log and its .head for "
        "investigation, run 'medfed audit verify', then move both aside to start a new log.")


def _read_tail(fd: int, path: Path, identity: NodeIdentity | None) -> _Tail:
    """Where the chain continues; raises AuditTamperError if the tail or head disagree."""
    size = os.fstat(fd).st_size
    end = complete_end(fd, size)
    lines = lines_backwards(fd, end)
    seq, last_hash = 0, GENESIS
    raw = next(lines, None)
    if raw is not None:
        try:
            entry = parse_entry(raw)
        except MalformedRecord as exc:
            raise _tamper(path, f"the last complete line is not a valid entry ({exc})") from None
        if entry.computed_hash() != entry.hash:
            raise _tamper(path, f"the last entry (seq {entry.seq}) does not match its hash")
        seq, last_hash = entry.seq, entry.hash
    if identity is not None:
        _check_head_at_open(path, identity, seq, last_hash, lines)
    return _Tail(seq, last_hash, end, size - end)


def _check_head_at_open(path: Path, identity: NodeIdentity, seq: int, last_hash: str,
                        older_lines: Iterator[bytes]) -> None:
    """Refuse to continue (and so re-sign) a log that its own head says was cut or rewritten."""
    try:
        head = read_head(path)
    except (MalformedRecord, OSError) as exc:
        raise _tamper(path, f"its head file is unreadable ({exc})") from None
    if head is None:
        return
    if not head.signature_valid(identity.verify_key):
        raise _tamper(path, "its head is not signed by this node's key")
    found = last_hash if seq == head.seq else None
    if seq > head.seq:
        for raw in older_lines:
            try:
                entry = parse_entry(raw)
            except MalformedRecord:
                break
            if entry.seq <= head.seq:
                found = entry.hash if entry.seq == head.seq else None
                break
    problem = head_problem(head, seq, found)
    if problem:
        raise _tamper(path, problem)


def _move_torn_tail(fd: int, path: Path, tail: _Tail) -> str:
    """Copy the torn bytes aside (durably), then cut them off the log. Returns the file name."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name}.torn-{stamp}")

    def chunks() -> Iterator[bytes]:
        for offset in range(tail.complete_end, tail.complete_end + tail.torn_bytes, CHUNK):
            yield os.pread(fd, min(CHUNK, tail.complete_end + tail.torn_bytes - offset), offset)

    write_atomically(aside, chunks())
    os.ftruncate(fd, tail.complete_end)
    os.fsync(fd)
    return aside.name


def _open_exclusive(path: Path) -> int:
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise AuditWriteError(f"cannot open audit log {path}: {exc.strerror}. Check that the "
                              "data directory exists and is writable by the medfed user.") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise AuditLockedError(f"audit log {path} is already open (another medfed node using "
                               "the same data directory?)") from None
    if not existed:
        fsync_dir(path.parent)
    return fd


class AuditLog:
    """Appends entries to one hash-chained log; thread-safe; one writer per file.

    ``append`` is cheap enough to call from a pynetdicom handler thread or directly from
    asyncio code. If the log cannot be written, ``append`` raises AuditWriteError: the
    access it was meant to record should then be refused.
    """

    def __init__(self, path: Path, identity: NodeIdentity | None = None, *,
                 fsync_interval_s: float = 1.0) -> None:
        if not (isinstance(fsync_interval_s, int | float) and fsync_interval_s > 0):
            raise AuditInputError(f"fsync_interval_s must be > 0, not {fsync_interval_s!r}")
        self.path = Path(path)
        self._identity = identity
        self._interval = float(fsync_interval_s)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._dirty = self._closed = False
        self._failure: AuditWriteError | None = None
        self._fd = _open_exclusive(self.path)
        try:
            tail = _read_tail(self._fd, self.path, identity)
            moved = _move_torn_tail(self._fd, self.path, tail) if tail.torn_bytes else None
        except BaseException:
            os.close(self._fd)
            raise
        self._seq, self._prev, self._size = tail.seq, tail.hash, tail.complete_end
        self._head_seq = 0
        self._thread = threading.Thread(target=self._sync_loop, daemon=True,
                                        name=f"audit-sync:{self.path.name}")
        self._thread.start()
        if moved is not None:
            try:
                self.append("audit.recovered", "audit", "ok", torn_bytes=tail.torn_bytes,
                            moved_to=moved)
            except BaseException:
                self.close()
                raise

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, action: str, actor: str, outcome: str, subject: str = "",
               **detail: str | int | float | bool) -> AuditEntry:
        """Record one event. ``subject``/``detail`` carry ids or ``ref()``s, never PHI."""
        fields = (clean_text("action", action, required=True),
                  clean_text("actor", actor, required=False),
                  clean_text("outcome", outcome, required=True),
                  clean_text("subject", subject, required=False))
        clean = clean_detail(detail)
        with self._lock:
            if self._closed:
                raise AuditClosedError(f"audit log {self.path} is closed")
            if self._failure is not None:
                raise AuditWriteError(str(self._failure))
            entry, line = build_entry(self._seq + 1, utc_now_iso(), self._prev, *fields, clean)
            try:
                write_all(self._fd, line)
            except OSError as exc:
                self._undo_partial_write(exc)
            self._seq, self._prev, self._size = entry.seq, entry.hash, self._size + len(line)
            if not self._dirty:
                self._dirty = True
                self._wake.notify()
        return entry

    def _undo_partial_write(self, exc: OSError) -> None:
        """Cut a half-written line off again; if even that fails, stop accepting entries."""
        error = AuditWriteError(f"cannot write audit log {self.path}: {exc.strerror}. Free disk "
                                "space or fix permissions; accesses cannot be audited meanwhile.")
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self._failure = error
        raise error from exc

    def sync(self) -> None:
        """fsync now and, with an identity, sign a head for what is now durable."""
        with self._lock:
            if self._closed:
                raise AuditClosedError(f"audit log {self.path} is closed")
        self._sync_now()

    def _sync_now(self) -> None:
        with self._sync_lock:
            with self._lock:
                seq, entry_hash, self._dirty = self._seq, self._prev, False
            try:
                os.fsync(self._fd)
                if self._identity is not None and seq > self._head_seq:
                    head = SignedHead.sign(self._identity, seq, entry_hash, utc_now_iso())
                    write_atomically(head_path_for(self.path), iter([head.to_bytes()]))
                    self._head_seq = seq
            except OSError as exc:
                error = AuditWriteError(f"cannot sync audit log {self.path}: {exc.strerror}")
                with self._lock:
                    self._failure = error
                raise error from exc

    def _sync_loop(self) -> None:
        while True:
            with self._wake:
                while not self._dirty and not self._stop.is_set():
                    self._wake.wait()
            if self._stop.wait(self._interval):
                return
            try:
                self._sync_now()
            except AuditWriteError:
                return  # recorded in self._failure; the next append reports it

    def close(self) -> None:
        """Final fsync and head, then release the file. Idempotent."""
        with self._wake:
            if self._stop.is_set():
                return
            self._stop.set()
            self._wake.notify()
        self._thread.join()
        with self._lock:
            self._closed = True  # from here on append refuses, so the last head is final
        try:
            if self._failure is None:
                self._sync_now()
        finally:
            os.close(self._fd)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
