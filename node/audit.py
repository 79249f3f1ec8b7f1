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
import hashlib
import hmac
import json
import math
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from node.identity import NodeIdentity, node_id_for, verify_signature

GENESIS = "0" * 64
MAX_TEXT = 200
MAX_DETAIL_FIELDS = 32
MAX_PROBLEMS = 200
MAX_HEAD_BYTES = 4096
HEAD_DOMAIN = b"medfed-audit-head-v1\n"
_ENTRY_KEYS = frozenset({"seq", "ts", "action", "actor", "outcome", "subject", "detail",
                         "prev", "hash"})
_HEAD_KEYS = frozenset({"seq", "hash", "ts", "node_id", "signature"})
_CHUNK = 1 << 16

Scalar = str | int | float | bool


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


class _Malformed(Exception):
    """A line or head that is not what this module writes (reason in the message)."""


# -- pure logic: encoding, hashing, parsing, chain checks ------------------------------


def canonical(obj: Mapping[str, object]) -> bytes:
    """The one byte string that is hashed and signed: sorted keys, no spaces, ASCII."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def ref(value: str, salt: bytes) -> str:
    """Short keyed-hash reference (16 hex chars) for a value that must not appear in clear.

    The salt is a site secret: without it a low-entropy value (a patient id) could be
    found again by hashing guesses.
    """
    if not isinstance(salt, bytes | bytearray) or len(salt) < 16:
        raise AuditInputError("ref() needs a secret salt of at least 16 bytes")
    if not isinstance(value, str):
        raise AuditInputError(f"ref() takes text, not {type(value).__name__}")
    data = value.encode("utf-8", "surrogatepass")
    return hmac.new(bytes(salt), data, hashlib.sha256).hexdigest()[:16]


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "\u2026"


def _clean_text(name: str, value: object, *, required: bool) -> str:
    if not isinstance(value, str):
        raise AuditInputError(f"audit {name} must be text, not {type(value).__name__}")
    if required and not value:
        raise AuditInputError(f"audit {name} must not be empty")
    return _bounded(value)


def _clean_detail(detail: Mapping[str, object]) -> dict[str, Scalar]:
    if len(detail) > MAX_DETAIL_FIELDS:
        raise AuditInputError(f"audit detail has {len(detail)} fields; at most "
                              f"{MAX_DETAIL_FIELDS} are allowed")
    clean: dict[str, Scalar] = {}
    for key, value in detail.items():
        if isinstance(value, str):
            clean[key] = _bounded(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise AuditInputError(f"audit detail {key!r} is {value}, not a finite number")
        elif isinstance(value, bool | int | float):
            clean[key] = value
        else:
            raise AuditInputError(f"audit detail {key!r} must be str, int, float or bool, "
                                  f"not {type(value).__name__}")
    return clean


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    ts: str
    action: str
    actor: str
    outcome: str
    subject: str
    detail: dict[str, Scalar]
    prev: str
    hash: str

    def body(self) -> dict[str, object]:
        """The entry without ``hash``: what the hash covers."""
        body = asdict(self)
        del body["hash"]
        return body

    def computed_hash(self) -> str:
        return hashlib.sha256(canonical(self.body())).hexdigest()


def build_entry(seq: int, ts: str, prev: str, action: str, actor: str, outcome: str,
                subject: str, detail: dict[str, Scalar]) -> tuple[AuditEntry, bytes]:
    """A hashed entry and its line, from already-cleaned fields (one JSON encoding)."""
    body = {"seq": seq, "ts": ts, "action": action, "actor": actor, "outcome": outcome,
            "subject": subject, "detail": detail, "prev": prev}
    encoded = canonical(body)
    digest = hashlib.sha256(encoded).hexdigest()
    line = encoded[:-1] + b',"hash":"' + digest.encode("ascii") + b'"}\n'
    return AuditEntry(hash=digest, **body), line  # type: ignore[arg-type]


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Malformed("a key appears twice")
    return obj


def _load_object(raw: bytes, keys: frozenset[str]) -> dict[str, object]:
    try:
        obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _Malformed(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(obj, dict):
        raise _Malformed("not a JSON object")
    if set(obj) != keys:
        raise _Malformed(f"fields are {sorted(obj)}, expected {sorted(keys)}")
    return obj


def _is_hex64(value: object) -> bool:
    return (isinstance(value, str) and len(value) == 64
            and all(c in "0123456789abcdef" for c in value))


def _is_seq(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def parse_entry(raw: bytes) -> AuditEntry:
    """An entry as stored (its ``hash`` is the stated one; compare with computed_hash)."""
    obj = _load_object(raw, _ENTRY_KEYS)
    if not _is_seq(obj["seq"]):
        raise _Malformed("seq is not a positive integer")
    for name in ("ts", "action", "actor", "outcome", "subject"):
        if not isinstance(obj[name], str):
            raise _Malformed(f"{name} is not text")
    if not (_is_hex64(obj["prev"]) and _is_hex64(obj["hash"])):
        raise _Malformed("prev/hash are not 64 hex digits")
    detail = obj["detail"]
    if not isinstance(detail, dict) or not all(
            isinstance(v, str | int | float) for v in detail.values()):
        raise _Malformed("detail is not a flat object of scalars")
    try:
        return AuditEntry(**obj)  # type: ignore[arg-type]
    except TypeError as exc:  # pragma: no cover - keys were checked above
        raise _Malformed(str(exc)) from None


@dataclass(frozen=True)
class SignedHead:
    """The newest fsynced (seq, hash), signed so that cutting the log's end shows."""

    seq: int
    hash: str
    ts: str
    node_id: str
    signature: str

    def message(self) -> bytes:
        return HEAD_DOMAIN + canonical(
            {"seq": self.seq, "hash": self.hash, "ts": self.ts, "node_id": self.node_id})

    @classmethod
    def sign(cls, identity: NodeIdentity, seq: int, entry_hash: str, ts: str) -> SignedHead:
        unsigned = cls(seq, entry_hash, ts, identity.node_id_hex, "")
        return cls(seq, entry_hash, ts, identity.node_id_hex,
                   identity.sign(unsigned.message()).hex())

    def signature_valid(self, verify_key: bytes) -> bool:
        try:
            signature = bytes.fromhex(self.signature)
            if self.node_id != node_id_for(verify_key).hex():
                return False
        except (ValueError, TypeError):
            return False
        return verify_signature(verify_key, self.message(), signature)

    def to_bytes(self) -> bytes:
        return canonical(asdict(self)) + b"\n"

    @classmethod
    def parse(cls, raw: bytes) -> SignedHead:
        if len(raw) > MAX_HEAD_BYTES:
            raise _Malformed(f"{len(raw)} bytes, far more than a head")
        obj = _load_object(raw, _HEAD_KEYS)
        if not (_is_seq(obj["seq"]) and _is_hex64(obj["hash"])
                and all(isinstance(obj[k], str) for k in ("ts", "node_id", "signature"))):
            raise _Malformed("wrong field types")
        return cls(**obj)  # type: ignore[arg-type]


def head_problem(head: SignedHead, last_seq: int, hash_at_head: str | None) -> str | None:
    """What is wrong between a head and the log it signs, or None."""
    if head.seq > last_seq:
        return (f"head says seq {head.seq} but log ends at {last_seq} "
                "(entries removed from the end)")
    if hash_at_head is None:
        return f"head says seq {head.seq} but no entry in the log has that seq"
    if hash_at_head != head.hash:
        return (f"head says seq {head.seq} has hash {head.hash[:12]}… but the log has "
                f"{hash_at_head[:12]}… (log rewritten after the head was signed?)")
    return None


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
        except _Malformed as exc:
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


# -- edges: files ------------------------------------------------------------------------


def head_path_for(path: Path) -> Path:
    return path.with_name(path.name + ".head")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, chunks: Iterator[bytes]) -> None:
    """tmp + fsync + rename + fsync(dir): the file is either old or whole new."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        for chunk in chunks:
            _write_all(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _complete_end(fd: int, size: int) -> int:
    """Offset just past the last newline (0 if none): where the torn tail starts."""
    pos = size
    while pos > 0:
        start = max(0, pos - _CHUNK)
        found = os.pread(fd, pos - start, start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        pos = start
    return 0


def _lines_backwards(fd: int, end: int) -> Iterator[bytes]:
    """Complete lines of ``fd[:end]`` (which ends with a newline), last line first."""
    pos, carry = end - 1, b""
    while pos > 0:
        start = max(0, pos - _CHUNK)
        parts = (os.pread(fd, pos - start, start) + carry).split(b"\n")
        carry, pos = parts[0], start
        yield from reversed(parts[1:])
    if end > 0:
        yield carry


def _read_head(path: Path) -> SignedHead | None:
    try:
        raw = head_path_for(path).read_bytes()
    except FileNotFoundError:
        return None
    return SignedHead.parse(raw)


def verify(path: Path, verify_key: bytes | None = None) -> AuditVerification:
    """Check a log (and its signed head) end to end; reports every problem, never raises.

    Without ``verify_key`` the head's seq/hash are still compared but its signature is
    not checked (``head_signature_checked`` says which). On a log that is being written
    to, the line in flight may show up as "torn"; verify a closed log for a clean answer.
    """
    path = Path(path)
    check, head, signature_checked = _ChainCheck(), None, False
    try:
        head = _read_head(path)
    except _Malformed as exc:
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
    end = _complete_end(fd, size)
    lines = _lines_backwards(fd, end)
    seq, last_hash = 0, GENESIS
    raw = next(lines, None)
    if raw is not None:
        try:
            entry = parse_entry(raw)
        except _Malformed as exc:
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
        head = _read_head(path)
    except (_Malformed, OSError) as exc:
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
            except _Malformed:
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
        for offset in range(tail.complete_end, tail.complete_end + tail.torn_bytes, _CHUNK):
            yield os.pread(fd, min(_CHUNK, tail.complete_end + tail.torn_bytes - offset), offset)

    _write_atomically(aside, chunks())
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
        _fsync_dir(path.parent)
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
        fields = (_clean_text("action", action, required=True),
                  _clean_text("actor", actor, required=False),
                  _clean_text("outcome", outcome, required=True),
                  _clean_text("subject", subject, required=False))
        clean = _clean_detail(detail)
        with self._lock:
            if self._closed:
                raise AuditClosedError(f"audit log {self.path} is closed")
            if self._failure is not None:
                raise AuditWriteError(str(self._failure))
            entry, line = build_entry(self._seq + 1, utc_now_iso(), self._prev, *fields, clean)
            try:
                _write_all(self._fd, line)
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
                    _write_atomically(head_path_for(self.path), iter([head.to_bytes()]))
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
