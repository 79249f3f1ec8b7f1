"""The federation side of a node: membership, peer API server and client, DHT.

A node without an installed membership (no `medfed join` yet) runs as a stand-alone
hospital node; with one, it serves the mTLS peer API and joins the DHT. Parts that
need the federation (query serving, index publishing, sharing) are `NodeService`s
(`node.service`): they register their peer routes before the server starts and run
until it stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .dht.config import DHTConfig
from .dht.server import DHTServer
from .identity import NodeIdentity, node_id_for
from .net.client import PeerClient
from .net.idle import PEER_IDLE_TIMEOUT_S
from .net.membership import Membership, MembershipPaths, load_membership
from .net.roster import split_address
from .net.rosterbook import RosterBook
from .net.server import PeerServer, PeerServerSettings
from .net.transport import SOCKETS, Transport


class RosterMembership:
    """DHT membership backed by the signed roster: a key is a member when the roster
    lists its node id, active, with exactly this key."""

    def __init__(self, book: RosterBook) -> None:
        self.book = book

    def is_member(self, verify_key: bytes) -> bool:
        member = self.book.member(node_id_for(verify_key).hex())
        return member is not None and member.verify_key == verify_key

    def listed_address(self, verify_key: bytes) -> tuple[str, int] | None:
        """The DHT address the CA-signed roster lists for this active member (as the
        roster spells it: a host name there never equals a datagram's source IP)."""
        member = self.book.member(node_id_for(verify_key).hex())
        if member is None or member.verify_key != verify_key:
            return None
        try:
            return split_address(member.dht_address)
        except ValueError:
            return None


def membership_paths(data_dir: Path) -> MembershipPaths:
    return MembershipPaths.under(data_dir / "federation")


@dataclass
class FederationParts:
    membership: Membership
    peer: PeerServer
    client: PeerClient
    dht: DHTServer


def build_federation_parts(identity: NodeIdentity, membership: Membership, audit: object,
                           *, dht_config: DHTConfig | None = None,
                           peer_settings: PeerServerSettings | None = None,
                           transport: Transport = SOCKETS,
                           idle_timeout_s: float = PEER_IDLE_TIMEOUT_S,
                           first_flight: bool = False) -> FederationParts:
    peer = PeerServer(identity, membership.roster, membership.server_tls(), audit=audit,
                      settings=peer_settings or PeerServerSettings(), transport=transport)
    client = PeerClient(identity, membership.client_tls(), roster=membership.roster,
                        transport=transport, idle_timeout_s=idle_timeout_s,
                        first_flight=first_flight)
    dht = DHTServer(identity, RosterMembership(membership.roster), dht_config,
                    transport=transport)
    return FederationParts(membership, peer, client, dht)


def load_node_membership(identity: NodeIdentity, data_dir: Path) -> Membership | None:
    """The installed membership, or None for a node that has not joined a federation."""
    paths = membership_paths(data_dir)
    if not paths.roster.exists():
        return None
    return load_membership(identity, paths)
