"""The operator hands a new roster to any one running member (`medfed federation publish`).

The operator's folder holds the CA key but no member identity. For the hand-over it
makes a throw-away identity and a one-day CA-signed certificate (mutual TLS needs one),
offers the CA-signed roster to the member at HOST:PORT, and forgets both. The member
adopts the roster only because the CA signed it (``PeerServer`` answers offers from a
non-member without further checks) and spreads it to every other member by gossip.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from node.identity import NodeIdentity
from node.net.client import PeerClient
from node.net.files import write_atomic
from node.net.pki import CA, cert_to_pem, issue_node_cert, key_to_pem, make_csr, new_key
from node.net.roster import Member, RosterError, SignedRoster
from node.net.server import ROSTER_PATH
from node.net.tls import TLSFiles, client_context

OPERATOR_NAME = "federation operator"


def member_listening_at(signed: SignedRoster, address: str) -> Member:
    """The member (active or revoked) whose peer API is at ``address``."""
    roster = signed.roster
    found = roster.member_at(address) or next(
        (m for m in roster.members if m.peer_address == address), None)
    if found is None:
        known = ", ".join(f"{m.name} {m.peer_address}" for m in roster.active()) or "none"
        raise RosterError(f"no member of roster v{roster.version} has its peer API at {address} "
                          f"(members: {known})")
    return found


async def hand_over(ca: CA, signed: SignedRoster, address: str, *, timeout: float = 10.0) -> int:
    """Offer ``signed`` to the member at ``address``; returns the version it holds after."""
    target = member_listening_at(signed, address)
    operator = NodeIdentity.generate()
    tls_key = new_key()
    cert = issue_node_cert(ca.key, ca.cert, make_csr(tls_key, operator.node_id_hex),
                           operator.node_id_hex, OPERATOR_NAME, days=1)
    with tempfile.TemporaryDirectory(prefix="medfed-operator-") as tmp:
        files = TLSFiles(Path(tmp) / "tls.key", Path(tmp) / "node.crt", Path(tmp) / "ca.crt")
        write_atomic(files.key, key_to_pem(tls_key), private=True)
        write_atomic(files.cert, cert_to_pem(cert))
        write_atomic(files.ca_cert, cert_to_pem(ca.cert))
        context = client_context(files)
    async with PeerClient(operator, context) as client:
        answer = await client.call(target, "POST", ROSTER_PATH, signed.to_dict(), timeout=timeout)
    version = answer.get("version")
    return version if isinstance(version, int) else 0
