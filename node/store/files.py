"""Image files under a UID-based layout, written so that a crash leaves either the
whole file or nothing: temp file in the temp area, fsync, rename, fsync the folder.

Temp files live in one folder (``<root>/.tmp``, same file system, so the rename is
atomic) so that start-up sweeps only that folder: constant time at any archive size.

A file only becomes visible to readers after its metadata row is committed, so an
orphan left by a crash between rename and commit is never served; a later store of
the same instance simply replaces it.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
from pathlib import Path
from typing import Iterable

from ..datadir import make_private_dir

_UID_RE = re.compile(r"^[0-9.]{1,64}$")
TMP_PREFIX = ".tmp-"
TMP_DIR = ".tmp"


def _writeback_starter():  # type: ignore[no-untyped-def]
    """sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE) where libc has it:
    starts writeback of that range (0, 0: the whole file) and returns."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        return lambda fd, offset=0, nbytes=0: fn(fd, offset, nbytes, 2)
    except (OSError, AttributeError):
        return lambda fd, offset=0, nbytes=0: None


start_writeback = _writeback_starter()


class FileStoreError(Exception):
    """Writing an image file failed (disk full, permissions): nothing was stored."""


def safe_uid(uid: str) -> str:
    """A UID that is safe as a path component (digits and dots only)."""
    uid = uid.strip().rstrip("\x00")
    if not _UID_RE.match(uid) or uid.startswith(".") or ".." in uid:
        raise ValueError(f"not a valid DICOM UID for a file name: {uid[:70]!r}")
    return uid


class PartialFile:
    """A file being received whose final name is not known yet (it depends on UIDs
    inside the data): written to a temp file in the temp area, hashed as it goes,
    then either placed under its name (rename, fdatasync, fsync the folder) or discarded."""

    def __init__(self, files: "ObjectFiles", tmp: Path) -> None:
        self._files = files
        self.path = tmp
        self._fd: int | None = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._digest = hashlib.sha256()
        self._known_sha: str | None = None  # write(..., sha256_hex=): hashed by the caller
        self.size = 0
        self.error: OSError | None = None
        self._placed = False

    def write(self, chunk: bytes | bytearray | memoryview, *,
              sha256_hex: str | None = None) -> None:
        """Append ``chunk``; after a write error (disk full) later chunks are dropped
        and the error is kept for :meth:`place` to report. ``sha256_hex``: ``chunk`` is
        the whole file and the caller already hashed it (not hashed again)."""
        if self.error is not None or self._fd is None:
            return
        view = memoryview(chunk)
        if sha256_hex is not None or self._known_sha is not None:
            if self.size or sha256_hex is None:
                raise ValueError("sha256_hex is for one write of the whole file")
            self._known_sha = sha256_hex
        else:
            self._digest.update(view)
        self.size += len(view)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self.error = exc

    @property
    def sha256(self) -> str:
        return self._known_sha if self._known_sha is not None else self._digest.hexdigest()

    def place(self, rel: str, *, sync: bool = True) -> tuple[int, str]:
        """Make the file durable under ``rel``; returns (size, sha256 hex). With
        ``sync=False`` it is only renamed: the caller's journal holds its bytes until
        :meth:`ObjectFiles.make_durable` has run for it.

        Renamed first, then synced: the file's fdatasync commits the journal that
        also holds the rename, so the folder's fsync after it finds nothing left to
        write (one journal commit per instance instead of two on ext4). A crash
        before the syncs leaves at most an orphan under the final name, which no
        metadata row points to: it is never served and a resend replaces it."""
        try:
            if self.error is not None:
                raise self.error
            assert self._fd is not None
            final = self._files.folder_for(rel) / rel.rpartition("/")[2]
            os.replace(self.path, final)
            self.path = final
            if sync:
                os.fdatasync(self._fd)  # data + size; mtime need not be durable
            self._close()
            if sync:
                self._files._fsync_dir(final.parent)
        except OSError as exc:
            self.discard()
            raise FileStoreError(f"cannot write image file under {self._files.root}: "
                                 f"{exc.strerror or exc}") from exc
        self._placed = True
        return self.size, self.sha256

    def discard(self) -> None:
        """Remove the file unless it was placed (then this is a no-op)."""
        self._close()
        if self._placed:
            return
        try:
            self.path.unlink()
        except OSError:
            pass

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ObjectFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._known_dirs: set[Path] = set()
        self._folders: dict[str, Path] = {}   # folder_for: rel's folder part -> folder
        self._serial = itertools.count()

    def begin(self) -> PartialFile:
        """A new partial file in the temp area (see :class:`PartialFile`)."""
        name = f"{TMP_PREFIX}in.{os.getpid()}.{next(self._serial)}"
        try:
            return PartialFile(self, self._temp_area() / name)
        except OSError as exc:
            raise FileStoreError(f"cannot create a file under {self.root}: "
                                 f"{exc.strerror or exc}") from exc

    def folder_for(self, rel: str) -> Path:
        """The folder of ``rel``, created (and its parent synced) on first use."""
        name = rel.rpartition("/")[0]
        folder = self._folders.get(name)  # pathlib costs ~20 us per instance otherwise
        if folder is None:
            folder = (self.root / rel).parent
            make_private_dir(folder)
            self._fsync_dir(folder.parent)
            self._known_dirs.add(folder)
            self._folders[name] = folder
        return folder

    @property
    def tmp_dir(self) -> Path:
        return self.root / TMP_DIR

    def _temp_area(self) -> Path:
        if self.tmp_dir not in self._known_dirs:
            make_private_dir(self.tmp_dir)
            self._known_dirs.add(self.tmp_dir)
        return self.tmp_dir

    def relpath(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        return f"{safe_uid(study_uid)}/{safe_uid(series_uid)}/{safe_uid(sop_uid)}.dcm"

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write_atomic(self, rel: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        """Write ``chunks`` to ``rel``; returns (size, sha256 hex). All or nothing."""
        final = self.root / rel
        folder = self.folder_for(rel)
        tmp = self._temp_area() / f"{TMP_PREFIX}{final.name}.{os.getpid()}.{id(chunks):x}"
        digest = hashlib.sha256()
        size = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    digest.update(view)
                    size += len(view)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
            self._fsync_dir(folder)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise FileStoreError(f"cannot write image file under {self.root}: "
                                 f"{exc.strerror or exc}") from exc
        return size, digest.hexdigest()

    def make_durable(self, rels: Iterable[str]) -> None:
        """Flush files placed without a sync, then their folders (the journal
        checkpoint). Writeback of all of them is started first, so the flushes that
        follow mostly find their data on disk already."""
        paths = [self.root / rel for rel in rels]
        fds = []
        try:
            for path in paths:
                try:
                    fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
                except FileNotFoundError:
                    continue  # replaced or removed since: nothing of it to keep
            for fd in fds:
                start_writeback(fd)
            for fd in fds:
                os.fdatasync(fd)
        finally:
            for fd in fds:
                os.close(fd)
        for folder in {p.parent for p in paths}:
            try:
                self._fsync_dir(folder)
            except FileNotFoundError:
                pass

    def remove(self, rel: str) -> None:
        try:
            (self.root / rel).unlink()
        except FileNotFoundError:
            pass

    def sweep_temp_files(self) -> int:
        """Delete temp files a crash left behind (only the temp area is looked at, so
        this takes the same time at any archive size); returns how many."""
        count = 0
        try:
            names = os.listdir(self.tmp_dir)
        except FileNotFoundError:
            return 0
        for name in names:
            try:
                (self.tmp_dir / name).unlink()
                count += 1
            except OSError:
                pass
        return count

    def disk_usage(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                try:
                    total += os.stat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return total

    @staticmethod
    def _fsync_dir(folder: Path) -> None:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
