"""A worker starts its nodes from the folders the parent built (CA, admissions)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from node.net.membership import MembershipPaths, load_membership
from node.node import Node
from node.testing.nodes import loopback_config
from sim.dbtemplate import DbTemplate
from sim.grid import (PEER_PORT, SIM_AUDIT_SYNC_S, SIM_DHT, host_transport, seeded_identity,
                      sim_config, site_name, virtual_host)
from sim.network import SimNetwork


async def start_nodes(directory: Path, indices: list[int], network: SimNetwork, seed: int,
                      template: DbTemplate) -> dict[int, Node]:
    """The same nodes as ``sim.grid.start_virtual_federation`` starts, membership read
    back from each node's folder."""
    nodes: dict[int, Node] = {}
    try:
        for i in indices:
            name = site_name(i)
            identity = seeded_identity(seed, i)
            membership = load_membership(identity,
                                         MembershipPaths.under(directory / name / "federation"))
            cfg = sim_config(loopback_config(directory / name / "data", name=name,
                                             ae_title=f"NODE{i}"[:16]))
            cfg = replace(cfg, peer_host=virtual_host(i), peer_port=PEER_PORT)
            if cfg.store_url is None:
                template.install(cfg.db_path)
            node = Node(cfg, identity, membership=membership, services=(), dht_config=SIM_DHT,
                        with_dicom=False,
                        transport=host_transport(network, i, identity.node_id_hex),
                        audit_sync_s=SIM_AUDIT_SYNC_S)
            await node.start()
            nodes[i] = node
    except BaseException:
        await stop_nodes(nodes)
        raise
    return nodes


async def stop_nodes(nodes: dict[int, Node]) -> None:
    for i in sorted(nodes):
        await nodes.pop(i).stop()
