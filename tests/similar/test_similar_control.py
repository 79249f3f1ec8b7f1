"""`medfed similar` while the node runs: the similarity routes on the control socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node.control import control_socket_path
from node.control.client import ControlClient, ControlFailed, ControlRefused
from node.control.server import ControlService
from node.control.wire import Actor
from node.similar.service import SimilarityService
from node.store.ingest_local import ingest_dataset
from node.synth.generate import iter_datasets
from node.testing.federation import start_federation
from node.testing.users import local_user


async def test_search_streams_each_site_then_the_ranking_and_refuses_bad_bodies(tmp_path: Path) -> None:
    fed = await start_federation(tmp_path, ["a", "b"], services=lambda i, n: [
        SimilarityService(index=False), ControlService()])
    try:
        for i, node in enumerate(fed.nodes):
            for ds in iter_datasets(patients=2, series=1, slices=2, rows=16, cols=16, site_seed=i + 1):
                await ingest_dataset(node.store, node.files, ds)
            await node.service("similarity").index_now()  # type: ignore[union-attr]
        home = fed.nodes[0]
        uid = str((await home.store.fetchone("SELECT series_uid FROM series"))[0])
        user = local_user(home, "dr-a")
        actor = Actor("dr-a", home.tokens.issue_token(user, 300), "treatment")
        client = ControlClient(control_socket_path(home.cfg.data_dir))
        events: list[dict] = []  # type: ignore[type-arg]
        answer = await asyncio.to_thread(client.service, "similar", {"series": uid, "top": 3}, actor,
                                         timeout_s=30, on_event=events.append)
        assert sorted(e["site"] for e in events) == ["a", "b"]
        assert all(e["status"] == "ok" for e in events)
        assert len(answer["matches"]) == 3 and answer["provenance"]["kind"] == "similarity.rank"
        verified = await asyncio.to_thread(client.service, "provenance", {"action": "verify"},
                                           actor, timeout_s=30)
        assert verified["ok"] and verified["records"] == 3
        with pytest.raises(ControlFailed, match="top must be"):
            await asyncio.to_thread(client.service, "similar", {"series": uid, "top": 0}, actor,
                                    timeout_s=30)
        with pytest.raises(ControlRefused) as refused:
            await asyncio.to_thread(client.service, "similar", {"series": uid},
                                    Actor("dr-a", "forged-token", "treatment"), timeout_s=30)
        assert refused.value.status == 401
    finally:
        await fed.stop()
