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
import os
import re
from pathlib import Path
from typing import Iterable

from ..datadir import make_private_dir

_UID_RE = re.compile(r"^[0-9.]{1,64}$")
TMP_PREFIX = ".tmp-"
TMP_DIR = ".tmp"


class FileStoreError(Exception):
    """Writing an image file failed (disk full, permissions): nothing was stored."""


def safe_uid(uid: str) -> str:
    """A UID that is safe as a path component (digits and dots only)."""
    uid = uid.strip().rstrip("\x00")
    if not _UID_RE.match(uid) or uid.startswith(".") or ".." in uid:
        raise ValueError(f"not a valid DICOM UID for a file name: {uid[:70]!r}")
    return uid


class ObjectFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._known_dirs: set[Path] = set()

    @property
    def tmp_dir(self) -> Path:
        return self.root / TMP_DIR

    def relpath(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        return f"{safe_uid(study_uid)}/{safe_uid(series_uid)}/{safe_uid(sop_uid)}.dcm"

    def path(self, rel: str) -> Path:
        return self.root / rel

    def write_atomic(self, rel: str, chunks: Iterable[bytes]) -> tuple[int, str]:
        """Write ``chunks`` to ``rel``; returns (size, sha256 hex). All or nothing."""
        final = self.root / rel
        folder = final.parent
        if folder not in self._known_dirs:
            make_private_dir(folder)
            self._fsync_dir(folder.parent)
            self._known_dirs.add(folder)
        if self.tmp_dir not in self._known_dirs:
            make_private_dir(self.tmp_dir)
            self._known_dirs.add(self.tmp_dir)
        tmp = self.tmp_dir / f"{TMP_PREFIX}{final.name}.{os.getpid()}.{id(chunks):x}"
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
