"""The control socket file: private from its first moment, and cleaned up after a crash.

The socket is bound inside a fresh 0700 folder, set to 0600 there and only then linked
to its public name (``link`` never replaces an existing file), so no other OS user can
ever connect, not even in the moment between ``bind`` and ``chmod``. A socket file left
by a crashed node refuses connections; it is recognised that way and replaced. A file
that answers belongs to a running node, and any other kind of file is not ours to delete.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

MAX_SOCKET_PATH = 107     # bytes in sockaddr_un.sun_path, without the final NUL (Linux)
PROBE_TIMEOUT_S = 1.0


class ControlSocketError(Exception):
    """The control socket cannot be created (the message says what to do)."""


@dataclass(frozen=True)
class BoundSocket:
    sock: socket.socket
    path: Path
    inode: tuple[int, int]      # (st_dev, st_ino): remove the file at stop only if still ours


def _check_length(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ControlSocketError(f"the control socket path {path} is longer than Unix sockets allow "
                                 f"({MAX_SOCKET_PATH} bytes); use a shorter node.data_dir")


def clear_stale(path: Path) -> bool:
    """Remove a socket file nobody listens on; True if one was removed."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(mode):
        raise ControlSocketError(f"{path} exists and is not a socket; move it away and start again")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        probe.connect(os.fsencode(path))
    except ConnectionRefusedError:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return True
    except OSError as exc:
        raise ControlSocketError(f"cannot check the existing control socket {path}: "
                                 f"{exc.strerror or exc}") from None
    finally:
        probe.close()
    raise ControlSocketError(f"another medfed node is answering on {path}; "
                             "stop it first (one node per data folder)")


def bind_private(path: Path) -> BoundSocket:
    """A listening-ready, non-blocking Unix socket at ``path`` with mode 0600."""
    _check_length(path)
    clear_stale(path)
    staging = Path(tempfile.mkdtemp(prefix=".c", dir=path.parent))   # mode 0700
    temp = staging / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _check_length(temp)
        sock.bind(os.fsencode(temp))
        os.chmod(temp, 0o600)
        os.link(temp, path)
    except FileExistsError:
        sock.close()
        raise ControlSocketError(f"{path} appeared while the node was starting; "
                                 "is another node starting with this data folder?") from None
    except BaseException:
        sock.close()
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        os.rmdir(staging)
    st = os.lstat(path)
    sock.setblocking(False)
    return BoundSocket(sock, path, (st.st_dev, st.st_ino))


def remove_if_ours(bound: BoundSocket) -> None:
    """Unlink the socket file unless something else has taken its name since."""
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(bound.path)
        if (st.st_dev, st.st_ino) == bound.inode:
            os.unlink(bound.path)


def peer_uid(sock: object) -> int | None:
    """The OS user id of the process at the other end (Linux SO_PEERCRED), if known."""
    opt = getattr(socket, "SO_PEERCRED", None)
    getsockopt = getattr(sock, "getsockopt", None)
    if opt is None or getsockopt is None:
        return None
    try:
        _pid, uid, _gid = struct.unpack("3i", getsockopt(socket.SOL_SOCKET, opt, struct.calcsize("3i")))
    except OSError:
        return None
    return int(uid)
