"""The ingest journal: records survive a reopen until checkpointed, torn and cancelled
ones are skipped, segments are reused; and a node that lost every unflushed file and
row (as a power cut may leave it) restores each journalled instance at start."""

from __future__ import annotations

import asyncio
import hashlib
from io import BytesIO
from pathlib import Path

from pydicom import dcmread

from node.pacs.ingest import Ingestor
from node.pacs.journal import Journal
from node.store.db import MetadataStore
from node.store.files import ObjectFiles
from node.synth.generate import generate


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_records_until_checkpoint_torn_and_cancelled_skipped(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", segment_size=1 << 16)
    assert list(j.records(0)) == []
    j.start(0)
    blobs = [bytes([n]) * (5000 + n) for n in range(6)]
    seqs = [j.append(f"a/{n}.dcm", b, _sha(b)) for n, b in enumerate(blobs)]
    j.cancel(seqs[2])
    j.sync(seqs[-1])
    j.close()

    again = Journal(tmp_path / "j", segment_size=1 << 16)
    found = list(again.records(seqs[0]))  # the first one counts as checkpointed
    assert [r.rel for r in found] == ["a/1.dcm", "a/3.dcm", "a/4.dcm", "a/5.dcm"]
    assert [r.data for r in found] == [blobs[1], blobs[3], blobs[4], blobs[5]]

    # A torn last record (its data half written) is not replayed; those before are.
    seg = sorted((tmp_path / "j").glob("seg-*.mfj"))[-1]
    raw = bytearray(seg.read_bytes())
    raw[raw.rindex(blobs[5][:100]) + 10] ^= 0xFF
    seg.write_bytes(bytes(raw))
    assert [r.rel for r in Journal(tmp_path / "j").records(0)] == [
        "a/0.dcm", "a/1.dcm", "a/3.dcm", "a/4.dcm"]


def test_segments_are_reused_after_checkpoints(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", segment_size=1 << 16)
    list(j.records(0))
    j.start(0)
    blob = b"x" * 20000
    for n in range(60):
        seq = j.append(f"s/{n}.dcm", blob, _sha(blob))
        j.sync(seq)
        j.done(seq, f"s/{n}.dcm")
        if n % 5 == 4:
            upto, rels = j.finished_prefix()
            assert upto == seq and len(rels) == 5
            j.checkpointed(upto)
    assert len(list((tmp_path / "j").glob("seg-*.mfj"))) <= 5
    j.close()
    assert list(Journal(tmp_path / "j").records(60)) == []


def _store(ingestor: Ingestor, files: ObjectFiles, raw: bytes) -> None:
    ds = dcmread(BytesIO(raw))
    partial = files.begin()
    partial.write(raw)
    outcome = ingestor.ingest_received(
        ds, partial, context_sop_class=str(ds.SOPClassUID),
        affected_sop_instance=str(ds.SOPInstanceUID),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID), raw=raw)
    assert outcome.status == 0


def test_power_cut_after_acknowledgement_is_replayed_at_start(tmp_path: Path) -> None:
    series = tmp_path / "series"
    generate(series, patients=1, studies=1, series=1, slices=8, rows=64, cols=64)
    raws = [p.read_bytes() for p in sorted(series.rglob("*.dcm"))]
    files = ObjectFiles(tmp_path / "objects")

    async def first_life() -> list[tuple[str, str]]:
        store = await MetadataStore(tmp_path / "db.sqlite").open()
        ingestor = Ingestor(store, files, journal=Journal(tmp_path / "journal"))
        await asyncio.to_thread(ingestor.open_journal)
        assert ingestor._checkpointer is not None
        ingestor._checkpointer.close(final=False)  # the cut comes before any checkpoint
        for raw in raws:
            await asyncio.to_thread(_store, ingestor, files, raw)
        rows = await store.fetchall("SELECT sop_uid, path FROM instances ORDER BY sop_uid")
        # What a power cut may take: files and rows that were never flushed.
        for n, (sop, rel) in enumerate(rows):
            if n % 3 == 0:
                files.path(rel).unlink()
            elif n % 3 == 1:
                files.path(rel).write_bytes(files.path(rel).read_bytes()[:500])
            if n % 2 == 0:
                await store.run_in_transaction([("DELETE FROM instances WHERE sop_uid=?",
                                                 (sop,))])
        assert ingestor.journal is not None
        ingestor.journal.close()
        await store.close()
        return [(str(sop), str(rel)) for sop, rel in rows]

    async def next_life() -> tuple[int, list[tuple[str, str, str]]]:
        store = await MetadataStore(tmp_path / "db.sqlite").open()
        ingestor = Ingestor(store, files, journal=Journal(tmp_path / "journal"))
        restored = await asyncio.to_thread(ingestor.open_journal)
        rows = await store.fetchall(
            "SELECT sop_uid, path, sha256 FROM instances ORDER BY sop_uid")
        await asyncio.to_thread(ingestor.close)
        await store.close()
        return restored, [tuple(map(str, r)) for r in rows]  # type: ignore[misc]

    before = asyncio.run(first_life())
    restored, rows = asyncio.run(next_life())
    assert restored == len([n for n in range(len(before)) if n % 3 != 2 or n % 2 == 0])
    assert [(sop, rel) for sop, rel, _ in rows] == before
    by_sha = {_sha(raw): raw for raw in raws}
    for _sop, rel, sha in rows:
        assert files.path(rel).read_bytes() == by_sha[sha]
    # Checkpointed at start: the next start has nothing left to replay.
    assert asyncio.run(next_life())[0] == 0


def test_prepared_segments_are_used_first(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j", segment_size=1 << 16)
    assert j.prepare(2) == 2 << 16
    assert j.prepare(2) == 0  # already there
    (tmp_path / "j" / ".prep-00000009").write_bytes(b"cut short")
    list(j.records(0))
    j.start(0)
    blob = b"y" * 1000
    seq = j.append("p/1.dcm", blob, _sha(blob))
    j.sync(seq)
    j.close()
    names = sorted(p.name for p in (tmp_path / "j").iterdir())
    assert names == ["seg-00000001.mfj", "seg-00000002.mfj"]
    assert [r.rel for r in Journal(tmp_path / "j").records(0)] == ["p/1.dcm"]
