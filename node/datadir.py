"""The node's data folder: private to the node's OS user and held by one node at a time.

The folder holds PHI (the SQLite database and its WAL), the bundle and sharing keys, the
audit log and the images, so nobody else on the host may read it. The node creates it
0700 and its files 0600 whatever the umask, and refuses to start on a folder or database
that others can read, because it cannot know who already copied what. A lock file held
with ``flock`` for the node's lifetime keeps a second node off the same folder (two
writers would fork the audit chain and race on the database).
"""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path
from typing import Iterable

PRIVATE_UMASK = 0o077
LOCK_NAME = "node.lock"


class DataFolderError(Exception):
    """The data folder cannot be used safely; the message says what to do."""


class UnsafePermissionsError(DataFolderError):
    """The data folder or the database is open to other OS users."""


class DataFolderInUseError(DataFolderError):
    """Another node process holds the data folder."""


def restrict_umask() -> int:
    """Make every file this process creates owner-only; returns the previous umask."""
    return os.umask(PRIVATE_UMASK)


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) so the new folders are 0700."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask


def create_private_file(path: Path) -> None:
    """Create ``path`` empty and 0600 if it does not exist (so later writers inherit it)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        pass


def _open_to_others(path: Path) -> int | None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return None
    return stat.S_IMODE(mode) if mode & 0o077 else None


def check_private(data_dir: Path, sensitive: Iterable[Path]) -> None:
    """Raise UnsafePermissionsError when the folder or a sensitive file is open to others."""
    mode = _open_to_others(data_dir)
    if mode is not None:
        raise UnsafePermissionsError(
            f"the data folder {data_dir} is open to other users (mode {mode:04o}); it holds "
            f"PHI and keys, so the node does not start. Fix: chmod -R go-rwx {data_dir} "
            "(and check who could read it meanwhile)")
    for path in sensitive:
        mode = _open_to_others(path)
        if mode is not None:
            raise UnsafePermissionsError(
                f"{path} is open to other users (mode {mode:04o}); the node does not start. "
                f"Fix: chmod -R go-rwx {data_dir}")


class DataFolderLock:
    """An exclusive ``flock`` on ``<data_dir>/node.lock`` for as long as the node runs."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataFolderInUseError(
                f"another medfed node (pid {holder}) is running on the data folder "
                f"{self.path.parent}; stop it first, or give this node its own folder "
                "([node] data_dir)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def open_private_data_dir(data_dir: Path, sensitive: Iterable[Path]) -> DataFolderLock:
    """Create the folder 0700 if missing, check nobody else can read it, and lock it."""
    make_private_dir(data_dir)
    check_private(data_dir, sensitive)
    lock = DataFolderLock(data_dir)
    lock.acquire()
    return lock
