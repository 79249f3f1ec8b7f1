"""DICOM receiver processes (``[dicom] receivers``), as a site runs them: `medfed init`
+ `medfed run`, dcmtk and pynetdicom from outside. The first storage association at a
time is served by the main process, storage associations beside it by the receivers,
everything else by the main process; a receiver killed mid-stream loses nothing it
acknowledged, and a fresh one takes its place.

``_main_busy`` opens a storage association first and holds it open, so that what the
test sends next goes to a receiver."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import (CTImageStorage, StudyRootQueryRetrieveInformationModelFind,
                                  Verification)

from node.config.model import ConfigError, load_config
from node.synth.generate import generate
from tests.cli.node_process import NodeProcess
from tests.dicom_tools import dcmtk, free_port, scu

DEADLINE_S = 120.0   # generous: the machine may be loaded


def _init(folder: Path, receivers: int = 2) -> tuple[Path, int]:
    port = free_port()
    subprocess.run([sys.executable, "-m", "node.cli", "init", str(folder),
                    "--dicom-port", str(port), "--peer-port", str(free_port()),
                    "--dht-port", str(free_port()), "--http-port", str(free_port()),
                    "--allow", "STORESCU@127.0.0.1", "--allow", "FINDSCU@127.0.0.1",
                    "--allow", "PYNETDICOM@127.0.0.1"], check=True, capture_output=True)
    cfg = folder / "medfed.toml"
    text = cfg.read_text()
    assert "[dicom]" in text
    cfg.write_text(text.replace("[dicom]", f"[dicom]\nreceivers = {receivers}", 1))
    return cfg, port


def _site(tmp_path: Path, slices: int, size: int = 64) -> tuple[NodeProcess, int, list[Path]]:
    """A node with two receivers, started, and a synthetic series of ``slices`` files."""
    cfg, port = _init(tmp_path / "n")
    sent = tmp_path / "sent"
    generate(sent, patients=1, studies=1, series=1, slices=slices, rows=size, cols=size)
    node = NodeProcess(cfg)
    node.start()
    return node, port, sorted(sent.rglob("*.dcm"))


def _receiver_pids(node: NodeProcess) -> list[int]:
    assert node.proc is not None
    pids: list[int] = []
    for task in os.listdir(f"/proc/{node.proc.pid}/task"):
        with open(f"/proc/{node.proc.pid}/task/{task}/children") as fh:
            pids += [int(p) for p in fh.read().split()]
    out = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"node.pacs.receivers.worker" in cmdline:
            out.append(pid)
    return sorted(out)


@contextmanager
def _main_busy(port: int, *, outlives_node: bool = True) -> Iterator[None]:
    """A storage association held open: the main process serves it, so the storage
    associations opened meanwhile are handed to the receivers. ``outlives_node``
    False: the node is killed meanwhile, the association with it.

    A thread sends a C-ECHO on it every second, so that neither side's idle timeout
    (the node's 30 s network timeout, the SCU's 20 s) ends it while a loaded machine
    takes its time over what the test does meanwhile."""
    ae = scu(contexts=[(CTImageStorage, [ExplicitVRLittleEndian]),
                       (Verification, [ExplicitVRLittleEndian])])
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDFED")
    assert assoc.is_established
    stop = threading.Event()
    failures: list[str] = []

    def keep() -> None:
        while not stop.wait(1.0):
            status = assoc.send_c_echo() if assoc.is_established else None
            if getattr(status, "Status", None) != 0x0000:
                failures.append(f"C-ECHO on the held association answered {status!r}")
                return

    keeper = threading.Thread(target=keep, name="held-association", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join(timeout=30)
        if outlives_node:
            assert not failures, failures   # still served all along
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
        else:
            assoc.abort()


def _wait_for(what: str, check) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE_S
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {DEADLINE_S:.0f} s")
        time.sleep(0.1)


def _stored(data: Path) -> dict[str, str]:
    db = sqlite3.connect(data / "medfed.sqlite")
    try:
        rows = db.execute("SELECT sop_uid, path, sha256 FROM instances").fetchall()
    finally:
        db.close()
    for sop, rel, sha in rows:
        raw = (data / "objects" / rel).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == sha, f"stored file of {sop} is not whole"
    return {sop: sha for sop, _rel, sha in rows}


def _meta(data: Path) -> dict[str, str]:
    db = sqlite3.connect(data / "medfed.sqlite")
    try:
        return dict(db.execute("SELECT key, value FROM meta").fetchall())
    finally:
        db.close()


def test_storage_associations_are_served_by_the_receiver_processes(tmp_path: Path) -> None:
    node, port, files = _site(tmp_path, 32)
    try:
        assert len(_receiver_pids(node)) == 2
        status = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config",
                                 str(node.config), "--json"], capture_output=True, text=True,
                                timeout=DEADLINE_S, check=True)
        receivers = json.loads(status.stdout)["dicom"]["receivers"]
        assert receivers["configured"] == receivers["ready"] == 2
        assert sorted(receivers["pids"]) == _receiver_pids(node)
        table = subprocess.run([sys.executable, "-m", "node.cli", "status", "--config",
                                str(node.config)], capture_output=True, text=True,
                               timeout=DEADLINE_S, env=dict(os.environ, COLUMNS="200"))
        assert "DICOM receivers" in table.stdout and "2 of 2 ready" in table.stdout
        groups = [files[i::4] for i in range(4)]
        with _main_busy(port):
            procs = [subprocess.Popen(["/usr/bin/storescu", "-aet", "STORESCU", "-aec",
                                       "MEDFED", "127.0.0.1", str(port), *map(str, group)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                     for group in groups]
            for proc in procs:
                out, _ = proc.communicate(timeout=DEADLINE_S)
                assert proc.returncode == 0, out.decode(errors="replace")
        study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        find = dcmtk("findscu", "-aet", "FINDSCU", "-aec", "MEDFED", "-S",  # the main process
                     "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}",
                     "-k", "SOPInstanceUID", "127.0.0.1", port, check=True)
        assert (find.stdout + find.stderr).count("(0008,0018)") == len(files)
    finally:
        assert node.stop() == 0
    data = tmp_path / "n" / "data"
    want = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert set(_stored(data)) == want
    meta = _meta(data)
    # every instance went through a receiver's journal (checkpointed at stop), none
    # through the main process's own
    assert int(meta["ingest_journal_seq.r0"]) + int(meta["ingest_journal_seq.r1"]) == len(files)
    assert int(meta.get("ingest_journal_seq", "0")) == 0
    assert "did not stop in time" not in (data / "medfed.log").read_text()
    audit = (data / "audit.log").read_text()
    assert audit.count('"action":"dicom.store"') == len(files)
    assert audit.count('"action":"dicom.associate"') == 6   # holder, 4 storescu, findscu


def test_a_receiver_killed_mid_stream_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    node, port, files = _site(tmp_path, 40)
    datasets = [dcmread(p) for p in files]
    acked: list[str] = []
    holder = _main_busy(port)
    holder.__enter__()
    try:
        before = _receiver_pids(node)
        assert len(before) == 2
        ae = scu(contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDFED")
        assert assoc.is_established
        for ds in datasets[:15]:
            status = assoc.send_c_store(ds)
            assert status.Status == 0x0000
            acked.append(str(ds.SOPInstanceUID))
        for pid in before:   # one of them serves this association
            os.kill(pid, signal.SIGKILL)
        failed_after_kill = False
        for ds in datasets[15:20]:
            if not assoc.is_established:
                failed_after_kill = True
                break
            status = assoc.send_c_store(ds)
            if getattr(status, "Status", None) == 0x0000:
                acked.append(str(ds.SOPInstanceUID))
            else:
                failed_after_kill = True
                break
        assert failed_after_kill, "the association outlived its receiver process"
        assoc.abort()
        _wait_for("fresh receivers", lambda: len(_receiver_pids(node)) == 2
                  and not set(_receiver_pids(node)) & set(before))
        # the node goes on taking instances (a receiver is ready again, or the main
        # process serves while none is)
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDFED")
        assert assoc.is_established
        for ds in datasets[len(acked):]:
            assert assoc.send_c_store(ds).Status == 0x0000
            acked.append(str(ds.SOPInstanceUID))
        assoc.release()
        holder.__exit__(None, None, None)
    finally:
        assert node.stop() == 0
    log = (tmp_path / "n" / "data" / "medfed.log").read_text()
    assert "DICOM receiver" in log and "exited" in log
    stored = _stored(tmp_path / "n" / "data")
    assert set(acked) <= set(stored), "an acknowledged instance is missing"
    assert set(stored) == {str(ds.SOPInstanceUID) for ds in datasets}


def test_killing_the_main_process_stops_the_receivers_and_a_restart_replays_them(
        tmp_path: Path) -> None:
    node, port, files = _site(tmp_path, 24)
    assert node.proc is not None
    receivers = _receiver_pids(node)
    with _main_busy(port, outlives_node=False):
        store = dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "127.0.0.1", port,
                      *files)
        node.proc.send_signal(signal.SIGKILL)   # no checkpoint anywhere: right after the acks
        node.proc.wait(10)
    node.proc = None
    assert store.returncode == 0, store.stdout + store.stderr

    def gone(pid: int) -> bool:
        try:
            return b"node.pacs.receivers.worker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return True

    _wait_for("the receivers to exit", lambda: all(gone(pid) for pid in receivers))
    node.start()
    try:
        stored = _stored(tmp_path / "n" / "data")
        assert set(stored) == {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                               for p in files}
    finally:
        assert node.stop() == 0
    meta = _meta(tmp_path / "n" / "data")   # they came from a receiver's journal
    assert int(meta["ingest_journal_seq.r0"]) + int(meta["ingest_journal_seq.r1"]) \
        == len(files)


def test_one_instance_sent_on_two_associations_at_once_is_stored_once(tmp_path: Path) -> None:
    node, port, files = _site(tmp_path, 20)
    datasets = [dcmread(p) for p in files]
    statuses: list[int] = []
    try:
        def send_all() -> None:
            ae = scu(contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
            assoc = ae.associate("127.0.0.1", port, ae_title="MEDFED")
            assert assoc.is_established
            for ds in datasets:
                statuses.append(int(assoc.send_c_store(ds).Status))
            assoc.release()

        threads = [threading.Thread(target=send_all) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE_S)
    finally:
        assert node.stop() == 0
    assert statuses == [0] * (2 * len(datasets))
    data = tmp_path / "n" / "data"
    assert len(_stored(data)) == len(datasets)
    assert sum(1 for _ in (data / "objects").rglob("*.dcm")) == len(datasets)
    audit = (data / "audit.log").read_text()
    assert audit.count('"outcome":"duplicate"') == len(datasets)


def test_an_association_with_storage_and_query_contexts_stays_in_the_main_process(
        tmp_path: Path) -> None:
    node, port, files = _site(tmp_path, 3, size=32)
    datasets = [dcmread(p) for p in files]
    try:
        ae = scu(contexts=[(CTImageStorage, [ExplicitVRLittleEndian]),
                           (StudyRootQueryRetrieveInformationModelFind, [ExplicitVRLittleEndian])])
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDFED")
        assert assoc.is_established
        for ds in datasets:
            assert assoc.send_c_store(ds).Status == 0x0000
        query = dcmread(files[0], stop_before_pixels=True)
        from pydicom.dataset import Dataset
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = query.StudyInstanceUID
        answers = [rsp for rsp, _ in assoc.send_c_find(
            ident, StudyRootQueryRetrieveInformationModelFind)]
        assoc.release()
        assert answers[0].Status == 0xFF00 and answers[-1].Status == 0x0000
    finally:
        assert node.stop() == 0
    meta = _meta(tmp_path / "n" / "data")
    assert int(meta["ingest_journal_seq"]) == len(datasets)          # the main's journal
    assert int(meta.get("ingest_journal_seq.r0", "0")) == 0
    assert int(meta.get("ingest_journal_seq.r1", "0")) == 0


def test_malformed_pdus_on_a_handed_over_association_abort_it_only(tmp_path: Path) -> None:
    node, port, files = _site(tmp_path, 4, size=32)
    holder = _main_busy(port)
    holder.__enter__()
    try:
        ae = scu(contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDFED")
        assert assoc.is_established
        sock = assoc.dul.socket.socket
        sock.sendall(b"\x04\x00\x00\x00\x00\x10" + b"\xff" * 16)   # a P-DATA of garbage
        _wait_for("the abort", lambda: not assoc.is_alive())
        assert assoc.is_aborted
        pids = _receiver_pids(node)
        store = dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "127.0.0.1", port,
                      *files)
        assert store.returncode == 0, store.stdout + store.stderr
        assert _receiver_pids(node) == pids, "a receiver died of the garbage"
        holder.__exit__(None, None, None)
    finally:
        assert node.stop() == 0
    assert len(_stored(tmp_path / "n" / "data")) == len(files)


def test_one_sender_alone_is_served_by_the_main_process(tmp_path: Path) -> None:
    node, port, files = _site(tmp_path, 6, size=32)
    try:
        for _ in range(2):   # one after the other: never two at once
            dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "127.0.0.1", port,
                  *files, check=True)
    finally:
        assert node.stop() == 0
    meta = _meta(tmp_path / "n" / "data")
    assert int(meta["ingest_journal_seq"]) >= len(files)
    assert int(meta.get("ingest_journal_seq.r0", "0")) == 0
    assert int(meta.get("ingest_journal_seq.r1", "0")) == 0


@pytest.mark.parametrize("value", ["-2", "17"])
def test_an_impossible_receiver_count_is_refused_with_a_reason(tmp_path: Path,
                                                                value: str) -> None:
    cfg, _port = _init(tmp_path / "n", receivers=int(value))
    with pytest.raises(ConfigError, match="dicom.receivers"):
        load_config(cfg)
    run = subprocess.run([sys.executable, "-m", "node.cli", "run", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=DEADLINE_S)
    assert run.returncode != 0
    assert "dicom.receivers" in run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr


def test_receivers_commit_through_a_postgresql_store(tmp_path: Path, postgres_cluster) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    cfg, port = _init(tmp_path / "n")
    url = postgres_cluster.new_database()
    cfg.write_text(cfg.read_text() + f'\n[store]\nurl = "{url}"\n')
    sent = tmp_path / "sent"
    generate(sent, patients=1, studies=1, series=1, slices=12, rows=32, cols=32)
    files = sorted(sent.rglob("*.dcm"))
    node = NodeProcess(cfg)
    node.start()
    try:
        with _main_busy(port):
            dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "127.0.0.1", port,
                  *files, check=True)
    finally:
        assert node.stop() == 0
    with psycopg.connect(url) as conn:
        (count,) = conn.execute("SELECT count(*) FROM instances").fetchone()
        keys = dict(conn.execute("SELECT key, value FROM meta WHERE key LIKE "
                                 "'ingest_journal_seq.r%'").fetchall())
    assert count == len(files)
    assert sum(int(v) for v in keys.values()) == len(files)   # a receiver's journal
