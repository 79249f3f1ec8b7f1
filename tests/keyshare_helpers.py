"""Shared set-up for the keyshare and replica federation tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
import time
from dataclasses import replace
from pathlib import Path

from node.audit.entry import parse_entry
from node.bundle.stream import BundleInfo, new_bundle_key, write_bundle
from node.config.model import NodeConfig
from node.keyshare.release_policy import ReleasePolicy, make_policy
from node.keyshare.service import KeyShareService
from node.net.assertion import issue_assertion
from node.node import Node
from node.replica.service import ReplicaService
from node.testing.federation import LocalFederation, start_federation


def _configure(cfg: NodeConfig) -> NodeConfig:
    return replace(cfg, federation=replace(cfg.federation, repair_interval_s=0, shares_k=3,
                                           shares_n=4, replicas=2))


@asynccontextmanager
async def sharing_federation(tmp_path: Path, count: int) -> AsyncIterator[LocalFederation]:
    """``count`` full nodes with the keyshare and replica services; stopped on exit."""
    names = [f"site{i}" for i in range(count)]
    fed = await start_federation(tmp_path, names, configure=_configure, bootstrap=False,
                                 services=lambda i, n: [KeyShareService(), ReplicaService()])
    try:
        yield fed
    finally:
        await fed.stop()


def keyshare(node: Node) -> KeyShareService:
    svc = node.service("keyshare")
    assert isinstance(svc, KeyShareService)
    return svc


def replica(node: Node) -> ReplicaService:
    svc = node.service("replica")
    assert isinstance(svc, ReplicaService)
    return svc


def make_bundle(directory: Path, *, instances: int = 3, size: int = 20_000) -> tuple[Path, bytes, BundleInfo]:
    """A small real bundle over random bytes; returns its path (named by id), key, info."""
    key = new_bundle_key()
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "bundle.tmp"
    with tmp.open("wb") as out:
        info = write_bundle([os.urandom(size) for _ in range(instances)], out, key,
                            chunk_size=4096, shuffle=False)
    path = directory / info.bundle_id
    tmp.rename(path)
    return path, key, info


def policy_for(owner: Node, bundle_id: str, *, sites: tuple[str, ...] = ("*",),
               roles: tuple[str, ...] = ("clinician",), purposes: tuple[str, ...] = ("treatment",),
               ttl_s: int = 3600, now: float | None = None) -> ReleasePolicy:
    return make_policy(owner.identity, bundle_id, sites=sites, roles=roles, purposes=purposes,
                       now=time.time() if now is None else now, ttl_s=ttl_s)


def assertion_from(node: Node, *, role: str = "clinician", purpose: str = "treatment") -> dict:
    return issue_assertion(node.identity, user="u-17", role=role, department="radiology",
                           purpose=purpose, now=time.time()).to_dict()


def audit_entries(node: Node, action: str) -> list:
    node.audit.sync()
    lines = node.cfg.audit_path.read_bytes().splitlines()
    return [e for e in (parse_entry(line) for line in lines if line.strip()) if e.action == action]


def by_id(fed: LocalFederation, node_id: str) -> int:
    return next(i for i, n in enumerate(fed.nodes) if n.node_id == node_id)


async def take_down(fed: LocalFederation, index: int) -> None:
    await fed.nodes[index].stop()
    fed.down.add(index)
