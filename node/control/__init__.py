"""The node's local control API: how `medfed fetch` / `medfed query` reach a running node.

A hospital runs `medfed run` as a daemon; that process owns the peer and DHT ports, the
audit log and the SQLite store. A second command started from the same config cannot
bind them again, so instead it asks the daemon over a Unix domain socket in the data
folder (``control.sock``). The socket file has mode 0600 and every connection's peer
credentials are checked: only the node's own OS user (or root) may talk to it — the same
trust boundary as the node's key files, which that user can read anyway. Who the
*clinician* is travels in each request (user, role, department, purpose), as on the
command line today, and every call is audited as ``control.<route>``.
"""

from __future__ import annotations

from pathlib import Path

SOCKET_NAME = "control.sock"


def control_socket_path(data_dir: Path) -> Path:
    """Where a node with this data folder listens for local control requests."""
    return data_dir / SOCKET_NAME
