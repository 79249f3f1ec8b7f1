"""Fronting an existing PACS: sync, on-demand C-GET, the bounded cache — against a real
Orthanc started privately on loopback ports (tests/orthanc.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import threading
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from node.audit.log import AuditLog
from node.config.model import UpstreamConfig
from node.pacs import upstream_plan as plan
from node.pacs.upstream import (
    UpstreamConfigError,
    UpstreamRefused,
    UpstreamService,
    UpstreamUnavailable,
    resolve_for_serving,
)
from node.store import cache_rows
from node.store.cache_rows import InstanceRef
from node.store.db import MetadataStore
from node.store.files import ObjectFiles
from node.synth.generate import generate, iter_datasets
from tests.orthanc import ORTHANC_AE, Orthanc
from node.testing.nodes import free_port as _free_port

NODE_AE = "MEDFED"
SLICE_BYTES = 64 * 64 * 2


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Orthanc, dict[str, Path]]]:
    """One Orthanc with 2 patients × 2 series × 4 slices (explicit LE) and one RLE
    series; read-only for the tests that use it. Returns it and SOP UID → source file."""
    root = tmp_path_factory.mktemp("seed")
    files = generate(root / "a", patients=2, studies=1, series=2, slices=4, rows=64,
                     cols=64, seed=11).files
    files += generate(root / "b", patients=1, studies=1, series=1, slices=3, rows=64,
                      cols=64, seed=11, site_seed=5, patient_offset=2,
                      transfer_syntax=RLELossless).files
    with Orthanc({NODE_AE: ("127.0.0.1", 4242)}) as orthanc:
        orthanc.upload(files)
        yield orthanc, {str(dcmread(f).SOPInstanceUID): f for f in files}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[MetadataStore]:
    async with MetadataStore(tmp_path / "medfed.sqlite", durability="normal") as s:
        yield s


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit.log")
    yield log
    log.close()


def make_service(store: MetadataStore, audit: AuditLog, tmp_path: Path, port: int,
                 **overrides: object) -> UpstreamService:
    cfg = UpstreamConfig(**{"ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": port,
                            "timeout_s": 5.0, "sync_interval_s": 3600.0, **overrides})
    return UpstreamService(cfg, store=store, data_dir=tmp_path, own_ae_title=NODE_AE,
                           audit=audit)


async def sop_uids_of_series(store: MetadataStore, series_uid: str) -> list[str]:
    rows = await store.fetchall(
        "SELECT i.sop_uid FROM instances i JOIN series se ON se.id=i.series_id "
        "WHERE se.series_uid=? ORDER BY i.instance_number", (series_uid,))
    return [str(r[0]) for r in rows]


async def cache_state(store: MetadataStore, tmp_path: Path) -> tuple[int, int, int]:
    """(rows with a cache path, cache_entries total bytes, bytes of files on disk)."""
    row = await store.fetchone("SELECT count(*) FROM instances WHERE path LIKE 'cache/%'")
    on_disk = sum(p.stat().st_size for p in (tmp_path / "cache").rglob("*") if p.is_file())
    return int(row[0]), await cache_rows.cache_total(store), on_disk


def audit_entries(audit: AuditLog) -> list[dict[str, object]]:
    audit.sync()
    return [json.loads(line) for line in audit.path.read_text().splitlines()]


# -- pure planning -----------------------------------------------------------------
def test_date_floor_and_walk_decisions() -> None:
    noon = dt.datetime(2024, 3, 10, 12, tzinfo=dt.timezone.utc).timestamp()
    assert plan.date_floor(None, 3) == ""
    assert plan.date_floor(noon, 0) == "20240310"
    assert plan.date_floor(noon, 10) == "20240229"
    assert plan.study_query("20240301").StudyDate == "20240301-"
    assert plan.study_query("").StudyDate == ""
    assert plan.needs_walk(5, 5) is False
    assert plan.needs_walk(6, 5) is True
    assert plan.needs_walk(None, 5) is True
    assert plan.needs_walk(5, None) is True


def test_batches_and_contexts_stay_within_limits() -> None:
    wanted = [InstanceRef(i, f"1.2.{i}", f"1.2.840.10008.5.1.4.1.1.{i % 70}", "", "1.1",
                          f"1.1.{i % 3}", None, False) for i in range(2500)]
    got = plan.batches(wanted, max_uids=1000)
    assert sum(len(b.items) for b in got) == 2500
    assert {b.series_uid for b in got} == {"1.1.0", "1.1.1", "1.1.2"}
    assert max(len(b.items) for b in got) <= 1000
    pairs = plan.storage_contexts(wanted)
    assert len(pairs) == plan.MAX_CONTEXTS - 1
    assert len(set(pairs)) == len(pairs)
    # every class gets the uncompressed syntaxes before any class gets compressed ones
    assert {(c, ExplicitVRLittleEndian) for c in {w.sop_class_uid for w in wanted}} <= set(pairs)
    known = [InstanceRef(1, "1.2.1", "1.2.3", RLELossless, "1.1", "1.1.1", None, False)]
    assert plan.storage_contexts(known)[0] == ("1.2.3", RLELossless)
    single = plan.get_identifier("1.1", "1.1.1", ["1.2.1"])
    assert single.SOPInstanceUID == "1.2.1"
    assert list(plan.get_identifier("1.1", "1.1.1", ["1.2.1", "1.2.2"]).SOPInstanceUID) == [
        "1.2.1", "1.2.2"]


@pytest.mark.parametrize("bad, message", [
    ({"retrieve": "move"}, "C-GET only"), ({"cache_max_mb": 0.0}, "cache_max_mb"),
    ({"timeout_s": -1.0}, "timeout_s")])
def test_unusable_settings_are_refused_clearly(tmp_path: Path, bad: dict[str, object],
                                               message: str) -> None:
    cfg = UpstreamConfig(**{"ae_title": ORTHANC_AE, "host": "127.0.0.1", "port": 1, **bad})
    with AuditLog(tmp_path / "a.log") as audit, pytest.raises(UpstreamConfigError,
                                                              match=message):
        UpstreamService(cfg, store=MetadataStore(tmp_path / "x.sqlite"), data_dir=tmp_path,
                        own_ae_title=NODE_AE, audit=audit)


# -- sync -----------------------------------------------------------------------------
async def test_full_sync_records_everything_orthanc_has(
        seeded: tuple[Orthanc, dict[str, Path]], store: MetadataStore, audit: AuditLog,
        tmp_path: Path) -> None:
    orthanc, sources = seeded
    service = make_service(store, audit, tmp_path, orthanc.dicom_port)
    report = await service.sync_once()
    stats = orthanc.statistics()
    counts = await store.counts()
    assert (counts.patients, counts.studies, counts.series, counts.instances) == (
        stats["CountPatients"], stats["CountStudies"], stats["CountSeries"],
        stats["CountInstances"])
    assert (report.studies_new, report.series_new, report.instances_new) == (
        stats["CountStudies"], stats["CountSeries"], stats["CountInstances"])
    assert report.studies_seen == stats["CountStudies"]
    rows = await store.fetchall("SELECT sop_uid, sop_class_uid, path, source, rows "
                                "FROM instances")
    assert {r[0] for r in rows} == set(sources)
    for sop_uid, sop_class, path, source, n_rows in rows:
        assert path is None and source == "upstream" and n_rows == 64
        assert sop_class == str(dcmread(sources[sop_uid], stop_before_pixels=True).SOPClassUID)
    assert {r[0] for r in await store.fetchall("SELECT source FROM studies")} == {"upstream"}
    state = await cache_rows.get_sync_state(store, service.key)
    assert state is not None and state.studies_seen == stats["CountStudies"]
    # a second pass with nothing changed adds nothing
    again = await service.sync_once()
    assert (again.studies_new, again.series_new, again.instances_new) == (0, 0, 0)
    assert await store.counts() == counts
    entry = [e for e in audit_entries(audit) if e["action"] == "upstream.sync"]
    assert [e["outcome"] for e in entry] == ["ok", "ok"]
    # the audit trail names no patient
    names = {str(dcmread(f, stop_before_pixels=True).PatientName) for f in sources.values()}
    text = audit.path.read_text()
    assert not any(n and n in text for n in names)


def _today_files(out: Path, **params: object) -> list[Path]:
    """Synthetic instances dated today: what an incremental sync must pick up."""
    today = dt.date.today().strftime("%Y%m%d")
    out.mkdir(parents=True)
    paths = []
    for n, ds in enumerate(iter_datasets(**params)):
        ds.StudyDate = ds.SeriesDate = today
        path = out / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


async def test_incremental_sync_picks_up_new_study_without_duplicates(
        store: MetadataStore, audit: AuditLog, tmp_path: Path) -> None:
    with Orthanc({NODE_AE: ("127.0.0.1", 4242)}) as orthanc:
        orthanc.upload(generate(tmp_path / "old", patients=2, studies=1, series=1, slices=2,
                                rows=16, cols=16, seed=3).files)
        service = make_service(store, audit, tmp_path, orthanc.dicom_port,
                               sync_lookback_days=1)
        first = await service.sync_once()
        assert first.studies_new == 2
        new = _today_files(tmp_path / "new", patients=1, studies=1, series=2, slices=3,
                           rows=16, cols=16, seed=3, site_seed=9, patient_offset=5)
        orthanc.upload(new)
        second = await service.sync_once()
        # only studies dated within the window were asked for
        assert second.studies_seen == 1
        assert (second.studies_new, second.series_new, second.instances_new) == (1, 2, 6)
        stats = orthanc.statistics()
        counts = await store.counts()
        assert (counts.studies, counts.series, counts.instances) == (
            stats["CountStudies"], stats["CountSeries"], stats["CountInstances"])
        # one more instance in the known study: the count differs, so it is walked again
        extra = dcmread(new[0])
        extra.SOPInstanceUID = extra.SOPInstanceUID + ".1"
        extra.file_meta.MediaStorageSOPInstanceUID = extra.SOPInstanceUID
        extra.save_as(tmp_path / "extra.dcm", enforce_file_format=True)
        orthanc.upload([tmp_path / "extra.dcm"])
        third = await service.sync_once()
        assert (third.studies_new, third.series_new, third.instances_new) == (0, 0, 1)
        # an old-dated study arriving late is outside the window; a full sync finds it
        orthanc.upload(generate(tmp_path / "late", patients=1, studies=1, series=1,
                                slices=2, rows=16, cols=16, seed=3, site_seed=4,
                                patient_offset=7).files)
        assert (await service.sync_once()).studies_new == 0
        full = await service.sync_once(full=True)
        assert (full.studies_new, full.instances_new) == (1, 2)
        dupes = await store.fetchone("SELECT count(*) - count(DISTINCT sop_uid) FROM instances")
        assert dupes[0] == 0
        assert (await store.counts()).instances == orthanc.statistics()["CountInstances"]


async def test_periodic_sync_runs_on_start_and_stops_cleanly(
        seeded: tuple[Orthanc, dict[str, Path]], store: MetadataStore, audit: AuditLog,
        tmp_path: Path) -> None:
    orthanc, sources = seeded
    service = make_service(store, audit, tmp_path, orthanc.dicom_port, sync_interval_s=0.2)
    await service.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120          # generous: a loaded host syncs slowly
        while not ((await store.counts()).instances == len(sources) and len(
                [e for e in audit_entries(audit) if e["action"] == "upstream.sync"]) >= 2):
            assert loop.time() < deadline, "periodic sync did not run twice"
            await asyncio.sleep(0.05)
    finally:
        await service.stop()
    assert (await store.counts()).instances == len(sources)
    passes = [e for e in audit_entries(audit) if e["action"] == "upstream.sync"]
    assert len(passes) >= 2 and all(e["outcome"] == "ok" for e in passes)
    assert service._task is None


# -- retrieval ---------------------------------------------------------------------------
async def test_retrieve_is_byte_identical_and_keeps_transfer_syntax(
        seeded: tuple[Orthanc, dict[str, Path]], store: MetadataStore, audit: AuditLog,
        tmp_path: Path) -> None:
    orthanc, sources = seeded
    service = make_service(store, audit, tmp_path, orthanc.dicom_port)
    await service.sync_once()
    series = [str(r[0]) for r in await store.fetchall("SELECT series_uid FROM series")]
    wanted = [u for s in series for u in await sop_uids_of_series(store, s)]
    paths = await service.ensure_local(wanted)
    assert set(paths) == set(sources)
    for sop_uid, path in paths.items():
        got, sent = dcmread(path), dcmread(sources[sop_uid])
        assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert got.PixelData == sent.PixelData
        assert got.SOPInstanceUID == sop_uid
        assert path.is_relative_to(tmp_path / "cache")
    rows = await store.fetchall("SELECT sop_uid, path, transfer_syntax, sha256 FROM instances")
    for sop_uid, rel, ts, sha in rows:
        assert service.path(rel) == paths[sop_uid]
        assert ts == str(dcmread(sources[sop_uid], stop_before_pixels=True)
                         .file_meta.TransferSyntaxUID)
        assert len(sha) == 64
    retrieves = [e for e in audit_entries(audit) if e["action"] == "upstream.retrieve"]
    assert len(retrieves) == 1 and retrieves[0]["detail"]["received"] == len(sources)
    # cached copies are served without the PACS: a service whose PACS is unreachable
    offline = make_service(store, audit, tmp_path, _free_port())
    assert await offline.ensure_local(wanted[:3]) == {u: paths[u] for u in wanted[:3]}
    # unknown instances are simply absent; nothing is asked for
    assert await service.ensure_local(["1.2.3.4.5"]) == {}
    assert await service.ensure_local([]) == {}


async def test_cache_bound_evicts_least_recently_used_but_never_pinned(
        seeded: tuple[Orthanc, dict[str, Path]], store: MetadataStore, audit: AuditLog,
        tmp_path: Path) -> None:
    orthanc, sources = seeded
    bound = 3 * SLICE_BYTES + 3 * 3000  # room for three of the explicit-LE slices
    service = make_service(store, audit, tmp_path, orthanc.dicom_port,
                           cache_max_mb=bound / (1024 * 1024))
    await service.sync_once()
    explicit = [u for u, f in sources.items() if dcmread(
        f, stop_before_pixels=True).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian]
    rows = await store.fetchall("SELECT id, sop_uid FROM instances ORDER BY id")
    ids = {str(u): int(i) for i, u in rows}
    order = sorted(explicit, key=ids.__getitem__)
    assert len(order) == 16
    pinned_uid = order[0]
    pin = service.pin([ids[pinned_uid]])
    for uid in order[:3]:
        await service.ensure_local([uid])
    await service.ensure_local([order[1]])          # touch: order[2] is now the oldest
    await service.ensure_local([order[3]])          # over the bound → evict one
    assert await store.fetchone("SELECT path FROM instances WHERE sop_uid=?",
                                (order[2],)) == (None,)
    for uid in (order[0], order[1], order[3]):
        assert (await service.ensure_local([uid]))[uid].is_file()
    for uid in order[4:12]:
        await service.ensure_local([uid])
        n_rows, total, on_disk = await cache_state(store, tmp_path)
        assert total <= bound and total == on_disk
        assert (tmp_path / "cache").exists()
        pinned_row = await store.fetchone("SELECT path FROM instances WHERE sop_uid=?",
                                          (pinned_uid,))
        assert pinned_row[0] is not None and service.path(pinned_row[0]).is_file()
    # released: the pinned entry is now the oldest and goes on the next eviction
    pin.release()
    await asyncio.sleep(0.05)
    await service.ensure_local([order[12]])
    assert await store.fetchone("SELECT path FROM instances WHERE sop_uid=?",
                                (pinned_uid,)) == (None,)
    n_rows, total, on_disk = await cache_state(store, tmp_path)
    entries = await store.fetchone("SELECT count(*) FROM cache_entries")
    assert n_rows == entries[0] and total <= bound and total == on_disk


async def test_pins_can_hold_the_cache_above_its_bound_until_released(
        seeded: tuple[Orthanc, dict[str, Path]], store: MetadataStore, audit: AuditLog,
        tmp_path: Path) -> None:
    orthanc, _sources = seeded
    bound = 2 * SLICE_BYTES + 2 * 3000
    service = make_service(store, audit, tmp_path, orthanc.dicom_port,
                           cache_max_mb=bound / (1024 * 1024))
    await service.start()
    try:
        await service.sync_once()
        series = str((await store.fetchone(
            "SELECT se.series_uid FROM series se JOIN instances i ON i.series_id=se.id "
            "GROUP BY se.id HAVING count(*)=4"))[0])
        uids = await sop_uids_of_series(store, series)
        files = ObjectFiles(tmp_path / "objects")
        rows = await store.fetchall("SELECT sop_uid, path FROM instances WHERE sop_uid IN "
                                    f"({','.join('?' * len(uids))})", uids)
        serving = await resolve_for_serving(service, files, [_Row(*r) for r in rows])
        assert serving.missing == [] and len(serving.paths) == 4
        assert all(p.is_file() for p in serving.paths)   # all four, although bound is two
        _n, total, _disk = await cache_state(store, tmp_path)
        assert total > bound
        await asyncio.to_thread(serving.release)         # as from a pynetdicom thread
        for _ in range(50):
            if (await cache_state(store, tmp_path))[1] <= bound:
                break
            await asyncio.sleep(0.02)
        _n, total, on_disk = await cache_state(store, tmp_path)
        assert total <= bound and total == on_disk
    finally:
        await service.stop()


class _Row:
    def __init__(self, sop_uid: str, path: str | None) -> None:
        self.sop_uid, self.path = sop_uid, path


async def test_resolve_without_upstream_reports_pathless_rows_missing(tmp_path: Path) -> None:
    files = ObjectFiles(tmp_path / "objects")
    serving = await resolve_for_serving(None, files, [_Row("1.2.3", "1.2/1.3/1.2.3.dcm"),
                                                      _Row("1.2.4", None)])
    assert serving.paths == [tmp_path / "objects" / "1.2/1.3/1.2.3.dcm"]
    assert serving.missing == ["1.2.4"]


# -- failures ----------------------------------------------------------------------------
async def test_pacs_down_raises_unavailable_and_writes_nothing(
        seeded: tuple[Orthanc, dict[str, Path]], store: MetadataStore, audit: AuditLog,
        tmp_path: Path) -> None:
    orthanc, _sources = seeded
    await make_service(store, audit, tmp_path, orthanc.dicom_port).sync_once()
    state_before = await cache_rows.get_sync_state(store, plan.upstream_key(
        ORTHANC_AE, "127.0.0.1", orthanc.dicom_port))
    dead_port = _free_port()
    down = make_service(store, audit, tmp_path, dead_port)
    with pytest.raises(UpstreamUnavailable) as info:
        await down.sync_once()
    message = str(info.value)
    assert "cannot reach" in message and f"127.0.0.1:{dead_port}" in message
    assert "refused" in message.lower() and "[upstream]" in message
    assert not isinstance(info.value, UpstreamRefused)
    uids = [str(r[0]) for r in await store.fetchall("SELECT sop_uid FROM instances")]
    with pytest.raises(UpstreamUnavailable, match="cannot reach"):
        await down.ensure_local(uids)
    assert await cache_state(store, tmp_path) == (0, 0, 0)
    assert await cache_rows.get_sync_state(store, down.key) is None
    assert await cache_rows.get_sync_state(store, plan.upstream_key(
        ORTHANC_AE, "127.0.0.1", orthanc.dicom_port)) == state_before
    failed = [e for e in audit_entries(audit) if e["outcome"] == "failed"]
    assert {e["action"] for e in failed} == {"upstream.sync", "upstream.retrieve"}


async def test_pacs_dying_mid_retrieve_leaves_only_whole_recorded_files(
        store: MetadataStore, audit: AuditLog, tmp_path: Path) -> None:
    slices = 60
    with Orthanc({NODE_AE: ("127.0.0.1", 4242)}) as orthanc:
        sources = generate(tmp_path / "d", patients=1, studies=1, series=1, slices=slices,
                           rows=256, cols=256, seed=8).files
        orthanc.upload(sources)
        service = make_service(store, audit, tmp_path, orthanc.dicom_port, timeout_s=2.0)
        await service.sync_once()
        uids = [str(r[0]) for r in await store.fetchall("SELECT sop_uid FROM instances")]
        cache_dir = tmp_path / "cache"

        def kill_after_first_file() -> None:
            for _ in range(2000):
                if cache_dir.exists() and any(p.suffix == ".dcm" for p in cache_dir.rglob("*")):
                    break
                threading.Event().wait(0.002)
            orthanc.stop(graceful=False)

        killer = threading.Thread(target=kill_after_first_file)
        killer.start()
        try:
            with pytest.raises(UpstreamUnavailable, match="stopped answering|cannot reach"):
                await service.ensure_local(uids)
        finally:
            killer.join()
    n_rows, total, on_disk = await cache_state(store, tmp_path)
    assert 0 < n_rows < slices and total == on_disk
    by_uid = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in sources}
    for sop_uid, rel in await store.fetchall(
            "SELECT sop_uid, path FROM instances WHERE path IS NOT NULL"):
        assert dcmread(service.path(rel)).PixelData == dcmread(by_uid[sop_uid]).PixelData
    assert not [p for p in cache_dir.rglob(".tmp-*")]
    assert n_rows == len([p for p in cache_dir.rglob("*.dcm")])


async def test_pacs_refusing_our_ae_gives_an_actionable_error(
        seeded: tuple[Orthanc, dict[str, Path]], store: MetadataStore, audit: AuditLog,
        tmp_path: Path) -> None:
    orthanc, _sources = seeded
    stranger = make_service(store, audit, tmp_path, orthanc.dicom_port,
                            calling_ae_title="STRANGER")
    with pytest.raises(UpstreamRefused) as info:
        await stranger.sync_once()
    message = str(info.value)
    assert ("rejected" in message or "without accepting" in message) and "'STRANGER'" in message
    assert "modalities" in message and "calling_ae_title" in message
    with pytest.raises(UpstreamRefused):
        await stranger.echo()
    assert (await store.counts()).instances == 0
    assert await cache_rows.get_sync_state(store, stranger.key) is None
    await make_service(store, audit, tmp_path, orthanc.dicom_port).echo()  # the known AE works


async def test_start_sweeps_orphans_left_by_a_crash(
        seeded: tuple[Orthanc, dict[str, Path]], store: MetadataStore, audit: AuditLog,
        tmp_path: Path) -> None:
    orthanc, _sources = seeded
    service = make_service(store, audit, tmp_path, orthanc.dicom_port)
    await service.sync_once()
    uid = str((await store.fetchone("SELECT sop_uid FROM instances"))[0])
    kept = (await service.ensure_local([uid]))[uid]
    orphan = tmp_path / "cache" / "1.2" / "1.3" / "1.4.dcm"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"partial")
    temp = tmp_path / "cache" / ".tmp" / ".tmp-x.dcm.1.2"   # the temp area
    temp.parent.mkdir(exist_ok=True)
    temp.write_bytes(b"partial")
    assert await service.cache.sweep() == 2
    assert kept.is_file() and not orphan.exists() and not temp.exists()
    # a cached file deleted behind our back is fetched again, not served as missing
    os.unlink(kept)
    again = await service.ensure_local([uid])
    assert again[uid].is_file()


async def test_instances_deleted_on_the_pacs_are_absent_not_fatal(
        store: MetadataStore, audit: AuditLog, tmp_path: Path) -> None:
    with Orthanc({NODE_AE: ("127.0.0.1", 4242)}) as orthanc:
        ids = orthanc.upload(generate(tmp_path / "d", patients=1, studies=1, series=1,
                                      slices=4, rows=16, cols=16, seed=8).files)
        service = make_service(store, audit, tmp_path, orthanc.dicom_port)
        await service.sync_once()
        gone = orthanc.rest("GET", f"/instances/{ids[1]}")["MainDicomTags"]["SOPInstanceUID"]
        orthanc.rest("DELETE", f"/instances/{ids[1]}")
        uids = [str(r[0]) for r in await store.fetchall("SELECT sop_uid FROM instances")]
        paths = await service.ensure_local(uids)
    assert set(paths) == set(uids) - {gone}
    assert all(p.is_file() for p in paths.values())
    last = [e for e in audit_entries(audit) if e["action"] == "upstream.retrieve"][-1]
    assert last["outcome"] == "partial" and last["detail"]["received"] == 3
