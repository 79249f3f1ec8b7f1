"""Publisher durability and policy edges in a real 4-node federation (k=2, n=2, r=1):
resume after a crash, a grown series, burned-in refusal, a failed step keeps the job,
the identified owner path and its refusals."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from node.keyshare.service import KeyShareService
from node.net.assertion import issue_assertion
from node.node import Node
from node.replica.service import ReplicaService
from node.sharing.publisher import PublisherService, PublisherSettings, release_terms
from node.sharing.retrieve import FetchError, FetchRefused, Retriever, SeriesRef, parse_series_ref
from node.sharing.sinks import SinkError, sink_for
from node.policy import policy_from_dict
from node.store.ingest_local import encode_part10, ingest_dataset
from node.synth.generate import iter_datasets
from node.testing.federation import LocalFederation, start_federation

IDENTIFIED_POLICY = {"rule": [
    {"name": "d treats", "site": "d", "role": "clinician", "purpose": "treatment", "level": "identified"},
    {"name": "members", "site": "*", "role": ["clinician", "researcher"], "level": "deidentified"},
]}


def _configure(cfg):  # type: ignore[no-untyped-def]
    fed = replace(cfg.federation, shares_k=2, shares_n=2, replicas=1, repair_interval_s=0)
    return replace(cfg, federation=fed, policy=IDENTIFIED_POLICY)


async def _federation(tmp_path: Path) -> LocalFederation:
    return await start_federation(
        tmp_path, ["owner", "b", "c", "d"], configure=_configure,
        services=lambda i, name: [KeyShareService(), ReplicaService(),
                                  PublisherService(PublisherSettings(), run_jobs=False)])


def _pub(node: Node) -> PublisherService:
    service = node.service("publisher")
    assert isinstance(service, PublisherService)
    return service


def _assertion(node: Node):  # type: ignore[no-untyped-def]
    return issue_assertion(node.identity, user="dr-x", role="clinician", department="er",
                           purpose="treatment", now=time.time())


async def _job(node: Node, series_uid: str) -> tuple[str, int, str]:
    row = await node.store.fetchone("SELECT state, attempts, last_error FROM jobs WHERE kind='publish' AND ref=?",
                                    (series_uid,))
    assert row is not None
    return str(row[0]), int(row[1]), str(row[2])


async def test_resume_growth_burned_in_and_identified_path(tmp_path: Path) -> None:
    fed = await _federation(tmp_path)
    try:
        owner, pub = fed.nodes[0], _pub(fed.nodes[0])
        datasets = list(iter_datasets(patients=1, studies=1, series=2, slices=5, rows=16, cols=16))
        good = [ds for ds in datasets if ds.SeriesNumber == datasets[0].SeriesNumber]
        burned = [ds for ds in datasets if ds.SeriesNumber != datasets[0].SeriesNumber]
        for ds in burned:
            ds.BurnedInAnnotation = "YES"
        for ds in [d for d in datasets if d is not good[-1]]:  # the last good slice comes later
            await ingest_dataset(owner.store, owner.files, ds)
        assert await pub.run_due() == 1          # the burned-in series is refused, not published
        assert pub.catalog is not None
        (entry,) = await pub.catalog.entries()
        assert entry.instances == len(good) - 1 and entry.state == "published"
        assert await _job(owner, str(burned[0].SeriesInstanceUID)) == ("done", 0, "")
        assert "publish.refused" in owner.cfg.audit_path.read_text()

        # crash between steps: the catalogue says only "built", a partial file lies around
        bundle = owner.cfg.data_dir / "bundles" / f"{entry.bundle_id}.mfb"
        mtime = bundle.stat().st_mtime_ns
        await pub.catalog.advance(entry.bundle_id, "built")
        await owner.store.enqueue("publish", entry.series_uid)
        await pub.stop()
        (owner.cfg.data_dir / "bundles" / ".bundle-crash.part").write_bytes(b"half")
        await pub.start(owner)
        assert not (owner.cfg.data_dir / "bundles" / ".bundle-crash.part").exists()
        assert await pub.run_due() == 1
        resumed = await pub.catalog.by_series(entry.series_uid)
        assert resumed is not None and resumed.state == "published"
        assert resumed.bundle_id == entry.bundle_id and bundle.stat().st_mtime_ns == mtime  # not rebuilt

        # the series grows: a new bundle replaces the old one
        await ingest_dataset(owner.store, owner.files, good[-1])
        assert await pub.run_due() == 1
        grown = await pub.catalog.by_series(entry.series_uid)
        assert grown is not None and grown.instances == len(good) and grown.bundle_id != entry.bundle_id
        assert not bundle.exists()

        # identified: only the named site, original bytes (PHI) straight from the owner
        d, c = fed.by_name("d"), fed.by_name("c")
        out = tmp_path / "out"
        ref = SeriesRef(owner.node_id, grown.bundle_id)
        result = await Retriever(d, deadline_s=30).fetch(ref, _assertion(d), lambda b: sink_for(out, "id", "dicom"),
                                                         identified=True)
        assert result.identified and sorted(p.read_bytes() for p in result.outputs) == sorted(
            encode_part10(ds) for ds in good)
        with pytest.raises(FetchRefused, match="identified"):
            await Retriever(c, deadline_s=30).fetch(ref, _assertion(c), lambda b: sink_for(out, "no", "dicom"),
                                                    identified=True)
        await owner.stop()
        fed.down.add(0)
        with pytest.raises(FetchError, match="only from the owning site"):
            await Retriever(d, deadline_s=10).fetch(ref, _assertion(d), lambda b: sink_for(out, "no", "dicom"),
                                                    identified=True)
        assert not (out / "no").exists()
    finally:
        await fed.stop()


async def test_failed_step_keeps_the_job_pending(tmp_path: Path) -> None:
    fed = await _federation(tmp_path)
    try:
        owner = fed.nodes[0]
        for i in (1, 2):
            await fed.nodes[i].stop()
            fed.down.add(i)
        datasets = list(iter_datasets(patients=1, studies=1, series=1, slices=3, rows=16, cols=16))
        for ds in datasets:
            await ingest_dataset(owner.store, owner.files, ds)
        assert await _pub(owner).run_due() == 0
        state, attempts, error = await _job(owner, str(datasets[0].SeriesInstanceUID))
        assert (state, attempts) == ("pending", 1) and "SharingError" in error
        entry = await _pub(owner).catalog.by_series(str(datasets[0].SeriesInstanceUID))  # type: ignore[union-attr]
        assert entry is not None and entry.state == "built"
        assert (owner.cfg.data_dir / "bundles" / f"{entry.bundle_id}.mfb").exists()
    finally:
        await fed.stop()


def test_series_refs_and_bad_input(tmp_path: Path) -> None:
    owner, bundle = "a" * 64, "b" * 64
    assert parse_series_ref(f"{owner}:{bundle}") == SeriesRef(owner, bundle_id=bundle)
    assert parse_series_ref("2.25.123") == SeriesRef(keyed_series_uid="2.25.123")
    for bad in ("", "xyz:2.25.1", "not a ref", f"{owner}:Smith^John"):
        with pytest.raises(FetchError):
            parse_series_ref(bad)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_bytes(b"x")
    with pytest.raises(SinkError):
        sink_for(tmp_path, "taken", "dicom")
    with pytest.raises(SinkError):
        sink_for(tmp_path, "x", "jpeg")


def test_release_terms_follow_the_site_policy() -> None:
    sites, roles, purposes = release_terms(policy_from_dict(IDENTIFIED_POLICY))
    assert sites == ("*",) and roles == ("clinician", "researcher")
    assert purposes == ("treatment", "research", "operations")
    narrow = {"rule": [{"name": "r", "site": "d", "role": "researcher", "purpose": "research",
                        "level": "deidentified"}, {"name": "c", "site": "*", "level": "count"}]}
    assert release_terms(policy_from_dict(narrow)) == (("d",), ("researcher",), ("research",))
    assert release_terms(policy_from_dict({"rule": []})) == ((), (), ())
