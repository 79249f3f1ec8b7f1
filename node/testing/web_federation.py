"""A small federation with synthetic patients and the web app at its first node.

What `medfed demo` shows a person and what the web app's browser tests run against:
each site stores its own CT studies (patients 1-2 were treated at the first three
sites), publishes them (de-identified bundles, 2-of-3 key shares, 2 replicas) and its
index entries; the first site serves the web app with a few local users.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..config.model import Destination, NodeConfig
from ..datadir import make_private_dir
from ..node import Node
from ..services import federated_services
from ..store.ingest_local import ingest_dataset
from ..synth.generate import iter_datasets
from ..users import UserStore
from ..web.service import WebService
from .federation import LocalFederation, start_federation

SHARED_AT = (0, 1, 2)  # patients 1-2 were treated at the first three hospitals
# A series is published this long after its last instance: never half-loaded, even on a
# busy machine where storing one instance can take a while.
PUBLISH_DELAY_S = 2.0
UserSpec = tuple[str, str, str, str]   # name, role, department, password


def demo_settings(cfg: NodeConfig) -> NodeConfig:
    """Small k/n/r so five sites can show the whole path; short deadlines for a demo."""
    fed = dataclasses.replace(cfg.federation, shares_k=2, shares_n=3, replicas=2,
                              query_deadline_s=3.0, repair_interval_s=0.0)
    return dataclasses.replace(cfg, federation=fed)


async def load_demo_site(node: Node, site: int) -> int:
    """Two patients of this site's own, plus patients 1-2 at three of the sites (same
    identity, different studies): the cross-site links a query must find."""
    count = 0
    offsets = ((0, 100 + site),) if site in SHARED_AT else ()
    for offset, seed in offsets + ((2 + 2 * site, 100 + site),):
        for ds in iter_datasets(patients=2, studies=1, series=1, slices=12, rows=96, cols=96,
                                seed=1, site_seed=seed, patient_offset=offset):
            await ingest_dataset(node.store, node.files, ds, publish_delay_s=PUBLISH_DELAY_S)
            count += 1
    return count


async def publish_all(node: Node, deadline_s: float = 300.0) -> None:
    """Publish every stored series once it is complete (no new instance for a moment)."""
    publisher = node.service("publisher")
    end = time.monotonic() + deadline_s
    while (await node.store.counts()).pending_jobs and time.monotonic() < end:
        await asyncio.sleep(PUBLISH_DELAY_S / 2)
        await publisher.run_due()  # type: ignore[union-attr]


def add_users(data_dir: Path, users: Sequence[UserSpec]) -> None:
    """What `medfed user add` does, for each (name, role, department, password)."""
    make_private_dir(data_dir)
    store = UserStore(data_dir / "users.sqlite")
    for name, role, department, password in users:
        store.add_user(name, role, department, password)


async def start_web_federation(directory: Path, names: Sequence[str], *,
                               users: Sequence[UserSpec] = (), web_port: int = 0,
                               peer_ports: Sequence[int] | None = None,
                               policies: Mapping[str, dict[str, Any]] | None = None,
                               destinations: Mapping[str, tuple[str, int]] | None = None,
                               home_pacs: str = "",
                               web: WebService | None = None) -> LocalFederation:
    """Start, load, publish and index every site; the first one serves the web app."""
    policies = policies or {}
    home_web = web or WebService()

    def configure(cfg: NodeConfig) -> NodeConfig:
        cfg = demo_settings(cfg)
        if cfg.name in policies:
            cfg = dataclasses.replace(cfg, policy=policies[cfg.name])
        if cfg.name == names[0]:
            dicom = dataclasses.replace(cfg.dicom, destinations=tuple(
                Destination(ae, host, port) for ae, (host, port) in (destinations or {}).items()),
                home_pacs=home_pacs)
            cfg = dataclasses.replace(cfg, http_port=web_port, dicom=dicom)
        return cfg

    fed = await start_federation(
        directory, names, configure=configure, peer_ports=peer_ports,
        services=lambda i, name: federated_services() + ([home_web] if i == 0 else []))
    try:
        for i, node in enumerate(fed.nodes):
            await load_demo_site(node, i)
        await asyncio.gather(*(publish_all(node) for node in fed.nodes))
        for node in fed.nodes:
            await node.service("index-publisher").sync_now()  # type: ignore[union-attr]
        add_users(fed.nodes[0].cfg.data_dir, users)
    except BaseException:
        await fed.stop()
        raise
    return fed
