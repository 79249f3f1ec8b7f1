"""A real federation on one machine: CA, N admitted nodes, their files and listening sockets.

Tests and the simulator need members with genuine certificates and rosters, built with
the same operator and join code a hospital uses. Each node gets a listening socket bound
before admission, so the roster can name its real port and ``PeerServer.start(sock=…)``
serves on it without a race for the port.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.identity import NodeIdentity
from node.net.federation import ROSTER, admit, admit_many, create_federation
from node.net.fedsecrets import FederationSecrets
from node.net.membership import Membership, MembershipPaths, create_request, install_bundle
from node.net.roster import Member


@dataclass
class LocalMember:
    name: str
    identity: NodeIdentity
    membership: Membership
    sock: socket.socket | None  # bound, not listening; for PeerServer.start(sock=…)

    @property
    def member(self) -> Member:
        found = self.membership.roster.member(self.identity.node_id_hex)
        if found is None:
            raise LookupError(f"{self.name} is not an active member of its own roster")
        return found


def reserve_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def build_federation(directory: Path, names: Sequence[str], *,
                     federation: str = "Test Federation",
                     host: str = "127.0.0.1",
                     ports: Sequence[int] | None = None,
                     identity_for: Callable[[int], NodeIdentity] | None = None,
                     address_for: Callable[[int], str] | None = None,
                     secrets: FederationSecrets | None = None
                     ) -> tuple[Path, list[LocalMember]]:
    """Operator folder at ``directory/operator``; node ``i`` under ``directory/<name>``.
    The simulator passes ``identity_for`` and ``secrets`` (seeded keys) and
    ``address_for`` (virtual addresses: no socket is reserved)."""
    operator = directory / "operator"
    create_federation(operator, federation, secrets=secrets)
    staged: list[tuple[str, NodeIdentity, MembershipPaths, socket.socket | None]] = []
    requests: list[tuple[bytes, str | None]] = []
    for i, name in enumerate(names):
        identity = identity_for(i) if identity_for else NodeIdentity.generate()
        paths = MembershipPaths.under(directory / name / "federation")
        if address_for is not None:
            sock, address = None, address_for(i)
        else:
            sock = reserve_socket(host, ports[i] if ports is not None else 0)
            address = f"{host}:{sock.getsockname()[1]}"
        request = create_request(identity, paths, name=name, peer_address=address,
                                 dht_address=address, dicom_ae=f"NODE{i}"[:16])
        staged.append((name, identity, paths, sock))
        requests.append((request.to_json(), None))
    bundles = admit_many(operator, requests)
    # every bundle shares the operator's roster object, and every member's roster file
    # is a link to the operator's published one (the same signed bytes): a federation
    # of N is not N encodings and N copies of an O(N) roster
    published = operator / ROSTER
    return operator, [LocalMember(name, identity,
                                  install_bundle(bundle, identity, paths, roster_file=published),
                                  sock)
                      for (name, identity, paths, sock), bundle in zip(staged, bundles)]


def admit_later(operator: Path, directory: Path, name: str, index: int, *,
                host: str = "127.0.0.1") -> LocalMember:
    """One more member admitted into an existing federation (a hospital joining later)."""
    identity = NodeIdentity.generate()
    paths = MembershipPaths.under(directory / name / "federation")
    sock = reserve_socket(host)
    address = f"{host}:{sock.getsockname()[1]}"
    request = create_request(identity, paths, name=name, peer_address=address,
                             dht_address=address, dicom_ae=f"NODE{index}"[:16])
    bundle = admit(operator, request.to_json())
    return LocalMember(name, identity, install_bundle(bundle.to_json(), identity, paths), sock)
