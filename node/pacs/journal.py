"""Write-ahead journal of received instances: one cheap flush per acknowledged C-STORE.

Why (measured on this node's disk, ext4 on a virtual disk, ``python -m bench.fsync``):
any flush that has to commit the file system's own journal - a new file, a rename, a
file that grew, a folder - costs about 4 ms; a flush of data written over blocks that
are already allocated and written costs about 0.4 ms. The old C-STORE path paid three
of the first kind per instance (file fdatasync, folder fsync, SQLite FULL commit).

So each instance's Part-10 bytes are appended to a journal segment, and one
``fdatasync`` of it - shared by every association waiting at the same time (group
commit) - makes the instance durable before the success status goes out. The file is
then placed and its rows committed without a flush of their own; a background
checkpoint makes a batch of files, their folders and the rows durable (one SQLite FULL
commit that also records the journal position, ``meta.ingest_journal_seq``) and hands
the segments behind it back for reuse. A new segment grows as records are appended (each
flush then also commits the file system, as a new file's would); a reused one is
already allocated and written, so from the second pass on a flush is data only.
At start the node replays the records after the checkpoint (``records``): an instance
whose file or rows did not survive is written again from its record, idempotently.

Record (aligned to 4 KiB so no record shares a block with the next):
``MFJ1 | seq u64 | kind u8 | pad | rel_len u16 | data_len u64 | sha256 | crc32`` then
the relative path and the data. The CRC covers the header and the path, the SHA-256
the data: a torn record fails one of them and ends the segment's scan.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from ..audit.files import fsync_dir
from ..datadir import make_private_dir
from ..store.files import start_writeback

log = logging.getLogger("medfed.ingest")

_HEADER = struct.Struct("<4sQBxHQ32sI")
_MAGIC = b"MFJ1"
_ALIGN = 4096
DATA, CANCEL = 1, 2
SEGMENT_SIZE = 32 << 20
_SEG_RE = re.compile(r"^seg-(\d{8})\.mfj$")
_SPARES = 3


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


@dataclass(frozen=True)
class Record:
    """One journalled instance found at start: its relative path and Part-10 bytes."""

    seq: int
    rel: str
    data: bytes


class _Segment:
    def __init__(self, path: Path, number: int, fd: int, size: int) -> None:
        self.path, self.number, self.fd = path, number, fd
        self.size = size          # bytes written with zeros or records (allocated)
        self.offset = 0           # where the next record goes
        self.max_seq = 0          # newest record in it

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class JournalError(Exception):
    """The journal cannot be written (disk full, permissions): the instance is refused."""


class Journal:
    """Segments under ``folder``; thread-safe. ``append`` + ``sync`` before the success
    status, ``done`` once the instance's file and rows are in place."""

    def __init__(self, folder: Path, *, segment_size: int = SEGMENT_SIZE) -> None:
        self.folder = folder
        self.segment_size = segment_size
        self._lock = threading.Lock()
        self._synced = threading.Condition(self._lock)
        self._segments: dict[int, _Segment] = {}
        self._spares: list[_Segment] = []
        self._current: _Segment | None = None
        self._next_number = 1
        self._seq = 0                  # last seq handed out
        self._written = 0              # last seq whose bytes are written
        self._synced_seq = 0           # last seq known durable
        self._syncing = False
        self._dirty: set[_Segment] = set()
        self._finished: dict[int, str | None] = {}  # seq -> rel (None: cancelled)
        self._checkpointed = 0

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def checkpointed_seq(self) -> int:
        return self._checkpointed

    # -- start: find what is there ------------------------------------------------
    def records(self, after: int) -> Iterator[Record]:
        """Data records newer than ``after`` (the last checkpoint), oldest first, minus
        the cancelled ones; torn records are skipped. Call before :meth:`start`."""
        make_private_dir(self.folder)
        found: list[tuple[int, Path, int, int, int, bytes]] = []
        cancelled: set[int] = set()
        for path in sorted(self.folder.iterdir()):
            m = _SEG_RE.match(path.name)
            if not m:
                continue
            self._next_number = max(self._next_number, int(m.group(1)) + 1)
            for seq, kind, rel_off, rel_len, data_len, sha in _scan(path):
                self._seq = max(self._seq, seq)
                if seq <= after:
                    continue
                if kind == CANCEL:
                    cancelled.add(data_len)  # a cancel record names its seq there
                else:
                    found.append((seq, path, rel_off, rel_len, data_len, sha))
        for seq, path, rel_off, rel_len, data_len, sha in sorted(found):
            if seq in cancelled:
                continue
            with open(path, "rb") as fh:
                fh.seek(rel_off)
                rel = fh.read(rel_len).decode("utf-8", "replace")
                data = fh.read(data_len)
            if len(data) != data_len or hashlib.sha256(data).digest() != sha:
                continue  # torn after its header: never acknowledged
            yield Record(seq, rel, data)

    def prepare(self, count: int = 2) -> int:
        """Write segments of zeros ahead until ``count`` exist (``medfed init``): the
        node's first pass through the journal then flushes data only, as every later
        pass does. Returns the bytes written."""
        make_private_dir(self.folder)
        numbers = [int(m.group(1)) for m in map(_SEG_RE.match, os.listdir(self.folder)) if m]
        number, written = max(numbers, default=0), 0
        zeros = b"\0" * (1 << 20)
        for _ in range(count - len(numbers)):
            number += 1
            tmp = self.folder / f".prep-{number:08d}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                for offset in range(0, self.segment_size, len(zeros)):
                    written += os.pwrite(fd, zeros[:self.segment_size - offset], offset)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.folder / f"seg-{number:08d}.mfj")
        fsync_dir(self.folder)
        return written

    def start(self, checkpointed: int) -> None:
        """Begin appending after every record found (all checkpointed by now): existing
        segments are reused, already allocated and written."""
        self._seq = max(self._seq, checkpointed)
        self._written = self._synced_seq = self._checkpointed = self._seq
        make_private_dir(self.folder)
        for path in sorted(self.folder.iterdir()):
            m = _SEG_RE.match(path.name)
            if m is None:
                if path.name.startswith(".prep-"):
                    path.unlink(missing_ok=True)  # cut short by a crash in prepare()
                continue
            self._next_number = max(self._next_number, int(m.group(1)) + 1)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            seg = _Segment(path, int(m.group(1)), fd, os.fstat(fd).st_size)
            self._segments[seg.number] = seg
            self._recycle(seg)

    def close(self) -> None:
        with self._lock:
            for seg in self._segments.values():
                seg.close()
            self._segments.clear()
            self._spares.clear()
            self._current = None

    # -- the C-STORE path ---------------------------------------------------------
    def append(self, rel: str, data: bytes | bytearray | memoryview, sha256_hex: str) -> int:
        """Write one instance's record (not yet durable: :meth:`sync`); returns its seq."""
        name = rel.encode("utf-8")
        size = _HEADER.size + len(name) + len(data)
        with self._lock:
            seg = self._room_for(size)
            seq = self._seq + 1
            head = _HEADER.pack(_MAGIC, seq, DATA, len(name), len(data),
                                bytes.fromhex(sha256_hex), 0)
            crc = zlib.crc32(head[:-4] + name)
            head = head[:-4] + struct.pack("<I", crc)
            try:
                _pwrite_all(seg.fd, [head, name, data], seg.offset)
            except OSError as exc:
                raise JournalError(f"cannot write the ingest journal under {self.folder}: "
                                   f"{exc.strerror or exc}") from exc
            self._seq = self._written = seq
            start = seg.offset
            seg.offset = _aligned(seg.offset + size)
            seg.size = max(seg.size, seg.offset)
            seg.max_seq = seq
            self._dirty.add(seg)
        # The disk starts writing the record now: what the caller does before its
        # sync() (the instance's own file) overlaps with it, and the flush then
        # waits only for what is still in flight. The fd stays open: a segment with
        # a record not yet synced is never recycled.
        start_writeback(seg.fd, start, size)
        return seq

    def sync(self, seq: int) -> None:
        """Return once record ``seq`` is durable. Whoever finds no flush running does
        one for every record written so far; the others wait for it (group commit)."""
        with self._lock:
            while self._synced_seq < seq:
                if self._syncing:
                    self._synced.wait()
                    continue
                self._syncing = True
                target, dirty = self._written, list(self._dirty)
                self._dirty.clear()
                self._lock.release()
                error: OSError | None = None
                try:
                    for seg in dirty:
                        os.fdatasync(seg.fd)
                except OSError as exc:
                    error = exc
                finally:
                    self._lock.acquire()
                    self._syncing = False
                    if error is None:
                        self._synced_seq = max(self._synced_seq, target)
                    else:
                        self._dirty.update(dirty)
                    self._synced.notify_all()
                if error is not None:
                    raise JournalError(f"cannot flush the ingest journal under "
                                       f"{self.folder}: {error.strerror or error}")

    def cancel(self, seq: int) -> None:
        """Record ``seq`` will not be stored after all (a replay skips it)."""
        with self._lock:
            seg = self._room_for(_HEADER.size)
            own = self._seq + 1
            head = _HEADER.pack(_MAGIC, own, CANCEL, 0, seq, b"\0" * 32, 0)
            head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
            try:
                _pwrite_all(seg.fd, [head], seg.offset)
            except OSError:
                log.error("cannot write a cancel record to the ingest journal")
            self._seq = self._written = own
            seg.offset = _aligned(seg.offset + _HEADER.size)
            seg.size = max(seg.size, seg.offset)
            seg.max_seq = own
            self._dirty.add(seg)
            self._finished[own] = None
            self._finished[seq] = None

    def done(self, seq: int, rel: str) -> None:
        """The instance of ``seq`` has its file placed and its rows committed."""
        with self._lock:
            self._finished[seq] = rel

    # -- the checkpoint -----------------------------------------------------------
    def pending(self) -> int:
        with self._lock:
            return len(self._finished)

    def finished_prefix(self) -> tuple[int, list[str]]:
        """The newest seq up to which every record is finished (or cancelled), and the
        files of those records."""
        with self._lock:
            upto, rels = self._checkpointed, []
            while upto + 1 in self._finished and upto + 1 <= self._synced_seq:
                upto += 1
                rel = self._finished[upto]
                if rel is not None:
                    rels.append(rel)
            return upto, rels

    def checkpointed(self, upto: int) -> None:
        """Records up to ``upto`` no longer need replaying: their segments can be reused."""
        with self._lock:
            for seq in [s for s in self._finished if s <= upto]:
                del self._finished[seq]
            self._checkpointed = max(self._checkpointed, upto)
            for seg in list(self._segments.values()):
                if seg is not self._current and seg not in self._spares \
                        and seg.max_seq <= upto:
                    self._recycle(seg)

    # -- segments -----------------------------------------------------------------
    def _room_for(self, size: int) -> _Segment:
        """The segment the next record of ``size`` bytes goes to (lock held)."""
        seg = self._current
        if seg is not None and seg.offset + size <= self.segment_size:
            return seg
        if size <= self.segment_size and self._spares:
            seg = self._spares.pop(0)
        else:  # none free (or an instance larger than a segment): a new, growing file
            seg = self._create()
        self._current = seg
        return seg

    def _recycle(self, seg: _Segment) -> None:
        """A segment whose records are all checkpointed: reused if it is a normal one
        and fewer than _SPARES wait, else deleted (lock held, or at start)."""
        if len(self._spares) < _SPARES and self.segment_size // 2 <= seg.size <= \
                self.segment_size:
            seg.offset = seg.max_seq = 0
            self._spares.append(seg)
            return
        seg.close()
        seg.path.unlink(missing_ok=True)
        del self._segments[seg.number]

    def _create(self) -> _Segment:
        """A new empty segment whose name is durable before any record goes in."""
        number = self._next_number
        self._next_number += 1
        path = self.folder / f"seg-{number:08d}.mfj"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fsync_dir(self.folder)
        except OSError as exc:
            raise JournalError(f"cannot create an ingest journal segment under "
                               f"{self.folder}: {exc.strerror or exc}") from exc
        seg = _Segment(path, number, fd, 0)
        self._segments[number] = seg
        return seg


def _pwrite_all(fd: int, parts: list[bytes | bytearray | memoryview], offset: int) -> None:
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        n = os.pwritev(fd, views, offset)
        offset += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def _scan(path: Path) -> Iterator[tuple[int, int, int, int, int, bytes]]:
    """(seq, kind, path offset, path length, data length, sha256) of each record whose
    header checks out, in file order, up to the first one that does not."""
    try:
        fh = open(path, "rb")
    except OSError:
        return
    with fh:
        size = os.fstat(fh.fileno()).st_size
        offset = 0
        while offset + _HEADER.size <= size:
            fh.seek(offset)
            head = fh.read(_HEADER.size)
            magic, seq, kind, rel_len, data_len, sha, crc = _HEADER.unpack(head)
            if magic != _MAGIC or kind not in (DATA, CANCEL):
                return
            name = fh.read(rel_len)
            if zlib.crc32(head[:-4] + name) != crc:
                return
            body = data_len if kind == DATA else 0
            if offset + _HEADER.size + rel_len + body > size:
                return
            yield seq, kind, offset + _HEADER.size, rel_len, data_len, sha
            offset = _aligned(offset + _HEADER.size + rel_len + body)


class Checkpointer:
    """Makes finished records' files, folders and rows durable in batches, in its own
    thread, then lets the journal reuse their segments. ``persist(upto, rels)`` does
    the durable part (it must end with a durable write of ``upto``)."""

    def __init__(self, journal: Journal, persist: Callable[[int, list[str]], None], *,
                 batch: int = 64, interval_s: float = 0.5) -> None:
        self.journal = journal
        self.persist = persist
        self.batch = batch
        self.interval_s = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="journal-checkpoint")
        self._thread.start()

    def nudge(self) -> None:
        if self.journal.pending() >= self.batch:
            self._wake.set()

    def run_once(self) -> int:
        upto, rels = self.journal.finished_prefix()
        if upto > self.journal.checkpointed_seq:
            self.persist(upto, rels)
            self.journal.checkpointed(upto)
        return upto

    def close(self, *, final: bool = True) -> None:
        """Stop; with ``final``, checkpoint what is finished first."""
        self._stop.set()
        self._wake.set()
        self._thread.join(60)
        if not final:
            return
        try:
            self.run_once()
        except Exception as exc:
            log.error("final ingest journal checkpoint failed (replayed at the next "
                      "start): %s", exc)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.run_once()
            except Exception as exc:
                log.error("ingest journal checkpoint failed, retrying: %s", exc)
                time.sleep(1.0)
