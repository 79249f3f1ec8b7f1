"""A real federation of full nodes in one event loop, for tests and the simulator.

Each node has its own CA-issued certificate, data folder, SQLite store, audit log,
peer API (mTLS, on a socket bound before admission so the roster names its real port)
and DHT endpoint (UDP, same port number).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..config.model import NodeConfig
from ..dht.config import DHTConfig
from ..identity import NodeIdentity
from ..net.fedsecrets import FederationSecrets
from ..service import NodeService
from ..net.testbed import LocalMember, admit_later, build_federation
from ..node import Node
from .nodes import TEST_VIEWER, loopback_config
from .users import local_user


@dataclass
class LocalFederation:
    operator_dir: Path
    nodes: list[Node]
    members: list[LocalMember]
    down: set[int] = field(default_factory=set)

    async def join(self, directory: Path, name: str, *,
                   services: Sequence[NodeService] = (),
                   configure: Callable[[NodeConfig], NodeConfig] = lambda c: c) -> Node:
        """Admit and start one more node; the running members learn it by roster gossip."""
        member = admit_later(self.operator_dir, directory, name, len(self.nodes))
        cfg = configure(loopback_config(directory / name / "data", name=name,
                                        ae_title=f"NODE{len(self.nodes)}"[:16]))
        node = Node(cfg, member.identity, membership=member.membership, peer_sock=member.sock,
                    services=services)
        await node.start()
        self.nodes.append(node)
        self.members.append(member)
        return node

    def by_name(self, name: str) -> Node:
        return next(n for n in self.nodes if n.cfg.name == name)

    async def stop(self) -> None:
        for i, node in enumerate(self.nodes):
            if i not in self.down:
                await node.stop()


async def start_federation(directory: Path, names: Sequence[str], *,
                           services: Callable[[int, str], Sequence[NodeService]] = lambda i, n: (),
                           with_dicom: bool = False, dht_config: DHTConfig | None = None,
                           configure: Callable[[NodeConfig], NodeConfig] = lambda c: c,
                           bootstrap: bool = True,
                           peer_ports: Sequence[int] | None = None,
                           identity_for: Callable[[int], NodeIdentity] | None = None,
                           secrets: FederationSecrets | None = None) -> LocalFederation:
    """``peer_ports`` fixes each node's peer (and DHT) port; ephemeral by default. The
    simulator passes seeded identities and federation secrets."""
    operator, members = build_federation(directory, names, ports=peer_ports,
                                         identity_for=identity_for, secrets=secrets)
    nodes: list[Node] = []
    for i, (name, member) in enumerate(zip(names, members)):
        cfg = configure(loopback_config(directory / name / "data", name=name,
                                        ae_title=f"NODE{i}"[:16]))
        node = Node(cfg, member.identity, membership=member.membership, peer_sock=member.sock,
                    services=services(i, name), dht_config=dht_config, with_dicom=with_dicom)
        if with_dicom:
            local_user(node, TEST_VIEWER)   # whom the test AE titles act for
        await node.start()
        nodes.append(node)
    if bootstrap:
        for node in nodes:
            await node.bootstrap_dht()
    return LocalFederation(operator, nodes, members)
