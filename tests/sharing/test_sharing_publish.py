"""Publisher and retrieval in a real 6-node federation (mTLS peer API, DHT, SQLite, files).

k=3 of n=4 key shares, r=2 replicas. A series with planted PHI canaries is ingested at
the owner, published, and fetched by owner path and by replica path.
"""

from __future__ import annotations

import io
import time
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from node.bundle.stream import BundleTamperedError
from node.deid.actions import DeidKeys, deidentify, keyed_uid
from node.keyshare.service import KeyShareService
from node.net.assertion import issue_assertion
from node.node import Node
from node.replica.service import ReplicaService
from node.sharing.publisher import PublisherService, PublisherSettings
from node.sharing.retrieve import FetchError, FetchRefused, Retriever, SeriesRef, decode_into
from node.sharing.sinks import DicomFolderSink, sink_for
from node.store.ingest_local import encode_part10, ingest_dataset
from node.synth.generate import iter_datasets
from node.synth.plan import PhiOverrides
from node.testing.federation import LocalFederation, start_federation

NAMES = ["owner", "b", "c", "d", "e", "f"]
CANARIES = ("QZXNAME^CANARY", "QZXPID4471", "19130517", "QZXACC9182", "QZX INSTITUTE OF CANARIES",
            "QZX FREE TEXT WHISPER", "QZX PRIVATE RECON NOTE")
PHI = PhiOverrides(patient_name=CANARIES[0], patient_id=CANARIES[1], birth_date=CANARIES[2],
                   accession=CANARIES[3], institution=CANARIES[4], image_comments=CANARIES[5],
                   private_text=CANARIES[6])


def _configure(cfg):  # type: ignore[no-untyped-def]
    fed = replace(cfg.federation, shares_k=3, shares_n=4, replicas=2, repair_interval_s=0)
    return replace(cfg, federation=fed)


async def _federation(tmp_path: Path) -> LocalFederation:
    return await start_federation(
        tmp_path, NAMES, configure=_configure,
        services=lambda i, name: [KeyShareService(), ReplicaService(),
                                  PublisherService(PublisherSettings(), run_jobs=False)])


def _publisher(node: Node) -> PublisherService:
    service = node.service("publisher")
    assert isinstance(service, PublisherService)
    return service


async def _ingest(owner: Node) -> list[bytes]:
    """The Part-10 bytes as the owner stores them (what de-identification starts from)."""
    raws = []
    for ds in iter_datasets(patients=1, studies=1, series=1, slices=8, rows=32, cols=32, phi=PHI):
        await ingest_dataset(owner.store, owner.files, ds)
        raws.append(encode_part10(ds))
    return raws


def _expected(owner: Node, raws: list[bytes]) -> list[bytes]:
    """Independently: de-identify each original and write it as a Part-10 file."""
    secrets = owner.membership.secrets  # type: ignore[union-attr]
    keys = DeidKeys(uid_key=secrets.uid_key, patient_key=secrets.linkage_key)
    out = []
    for raw in raws:
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, deidentify(pydicom.dcmread(io.BytesIO(raw)), keys), enforce_file_format=True)
        out.append(buffer.getvalue())
    return sorted(out)


def _assertion(node: Node, role: str = "clinician"):  # type: ignore[no-untyped-def]
    return issue_assertion(node.identity, user="dr-test", role=role, department="radiology",
                           purpose="treatment", now=time.time())


def _files(paths: list[Path]) -> list[bytes]:
    return sorted(p.read_bytes() for p in paths)


async def _publish(fed: LocalFederation) -> tuple[Node, list[bytes], object]:
    owner = fed.nodes[0]
    raws = await _ingest(owner)
    assert await _publisher(owner).run_due() == 1
    catalog = _publisher(owner).catalog
    assert catalog is not None
    (entry,) = await catalog.entries()
    return owner, raws, entry


def _scan(root: Path, needles: tuple[str, ...]) -> list[tuple[str, str]]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits += [(str(path), n) for n in needles if n.encode() in data]
    return hits


async def test_publish_owner_fetch_and_no_phi_leaves_the_owner(tmp_path: Path) -> None:
    fed = await _federation(tmp_path)
    try:
        owner, raws, entry = await _publish(fed)
        # bundle, catalogue, 4 share holders with custody rows, 2 replicas
        assert entry.state == "published" and entry.instances == len(raws)
        bundle = owner.cfg.data_dir / "bundles" / f"{entry.bundle_id}.mfb"
        assert bundle.stat().st_size == entry.size
        assert len(entry.share_holders) == 4 and len(entry.replica_holders) == 2
        others = fed.nodes[1:]
        custody = [n for n in others
                   if await n.service("keyshare").custody.current(entry.bundle_id, owner.node_id)]
        assert sorted(n.node_id for n in custody) == sorted(entry.share_holders)
        holders = [n.node_id for n in others if n.service("replica").store.has(entry.bundle_id)]
        assert sorted(holders) == sorted(entry.replica_holders)
        ratio = entry.size / sum(len(r) for r in raws)
        print(f"compression_ratio (bundle bytes / raw DICOM bytes) = {ratio:.3f}")
        assert ratio < 1.0
        assert entry.keyed_series_uid == keyed_uid(str(pydicom.dcmread(io.BytesIO(raws[0])).SeriesInstanceUID),
                                                   owner.membership.secrets.uid_key)

        # owner path, by bundle id: byte-identical to de-identify(originals)
        requester = fed.nodes[5]
        retriever = Retriever(requester, deadline_s=30)
        out = tmp_path / "out"
        result = await retriever.fetch(SeriesRef(owner.node_id, entry.bundle_id), _assertion(requester),
                                       lambda bid: sink_for(out, bid, "dicom"))
        assert result.source == "owner" and result.instances == len(raws)
        assert _files(result.outputs) == _expected(owner, raws)

        # by keyed series UID alone: owner and bundle found through the DHT; as a volume
        result = await retriever.fetch(SeriesRef(keyed_series_uid=entry.keyed_series_uid),
                                       _assertion(requester), lambda bid: sink_for(out, bid, "nifti"))
        assert result.bundle_id == entry.bundle_id and result.outputs[0].name.endswith(".nii.gz")

        # the owner's policy decides: admins get counts only, so no images
        with pytest.raises(FetchRefused, match="policy"):
            await retriever.fetch(SeriesRef(owner.node_id, entry.bundle_id), _assertion(requester, "admin"),
                                  lambda bid: sink_for(out, "refused", "dicom"))
        assert not (out / "refused").exists()

        # canaries: present at the owner (the scan works), absent everywhere else
        assert _scan(owner.cfg.data_dir, CANARIES)
        for node in others:
            assert _scan(node.cfg.data_dir, CANARIES) == []
        assert _scan(out, CANARIES) == []
    finally:
        await fed.stop()


async def test_owner_down_replica_path_tamper_fallback_and_share_loss(tmp_path: Path) -> None:
    fed = await _federation(tmp_path)
    try:
        owner, raws, entry = await _publish(fed)
        await owner.stop()
        fed.down.add(0)
        requester = next(n for n in fed.nodes[1:] if n.node_id not in entry.share_holders)
        first, second = entry.replica_holders
        # tamper with the first replica: flip one byte in the middle
        holder = next(n for n in fed.nodes if n.node_id == first)
        path = holder.service("replica").store.path(entry.bundle_id)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))

        retriever = Retriever(requester, deadline_s=30)
        out = tmp_path / "out"
        result = await retriever.fetch(SeriesRef(owner.node_id, entry.bundle_id), _assertion(requester),
                                       lambda bid: sink_for(out, bid, "dicom"))
        assert result.source == f"replica:{second}"
        assert any(first[:12] in a for a in result.attempts)  # the tampered copy was tried first
        assert any("owner" in a for a in result.attempts)
        assert _files(result.outputs) == _expected(owner, raws)
        # asked again right away: the owner that just failed to connect is not retried
        again = await retriever.fetch(SeriesRef(owner.node_id, entry.bundle_id), _assertion(requester),
                                      lambda bid: sink_for(out, "second", "dicom"))
        assert again.source == f"replica:{second}"
        assert any("not asked first" in a for a in again.attempts)
        assert _files(again.outputs) == _expected(owner, raws)

        # the tampered copy itself, read raw off the holder, fails authentication
        key = await requester.service("keyshare").collect_key(
            entry.bundle_id, owner.node_id, _assertion(requester).to_dict(), k=3, deadline_s=10)
        stream = requester.client.stream(requester.membership.roster.member(first), "GET",
                                          f"/v1/bundles/{entry.bundle_id}", timeout=10)
        with pytest.raises(BundleTamperedError):
            await decode_into(stream, key, entry.bundle_id, DicomFolderSink(tmp_path / "bad"), None,
                              source="x", identified=False)
        assert not (tmp_path / "bad").exists()

        # more than n-k share holders down: a clear failure, nothing written
        for node in fed.nodes:
            if node.node_id in entry.share_holders[:2]:
                await node.stop()
                fed.down.add(fed.nodes.index(node))
        with pytest.raises(FetchError, match="key shares"):
            await retriever.fetch(SeriesRef(owner.node_id, entry.bundle_id), _assertion(requester),
                                  lambda bid: sink_for(out, "again", "dicom"))
        assert not (out / "again").exists()
    finally:
        await fed.stop()
