"""kill -9 a node right after its success statuses (dcmtk storescu): every acknowledged
instance is there after the restart - its file, C-FIND (findscu) and C-GET (getscu)
byte for byte - whether or not the ingest journal's checkpoint had run."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from pydicom import dcmread

from node.synth.generate import generate
from tests.dicom_tools import dcmtk, free_port
from tests.store.test_durability import _start


def _dataset_digest(path: Path) -> str:
    """SHA-256 of a file's data set (meta header aside: getscu writes its own)."""
    ds = dcmread(path)
    return hashlib.sha256(ds.PixelData + str(ds.SOPInstanceUID).encode()).hexdigest()


def test_kill_9_right_after_success_statuses_keeps_every_instance(tmp_path: Path) -> None:
    port = free_port()
    subprocess.run([sys.executable, "-m", "node.cli", "init", str(tmp_path / "n"),
                    "--dicom-port", str(port), "--peer-port", str(free_port()),
                    "--dht-port", str(free_port()), "--http-port", str(free_port()),
                    "--allow", "STORESCU@127.0.0.1",
                    "--allow", "FINDSCU@127.0.0.1", "--allow", "GETSCU@127.0.0.1"],
                   check=True, capture_output=True)
    cfg = tmp_path / "n" / "medfed.toml"
    sent = tmp_path / "sent"
    generate(sent, patients=1, studies=1, series=1, slices=24, rows=128, cols=128)
    files = sorted(sent.rglob("*.dcm"))
    proc = _start(cfg, port)
    try:
        store = dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "127.0.0.1", port,
                      *files)
    finally:
        proc.send_signal(signal.SIGKILL)  # no shutdown checkpoint: straight after the acks
        proc.wait(10)
    assert store.returncode == 0, store.stdout + store.stderr
    assert proc.returncode == -signal.SIGKILL

    proc = _start(cfg, port)
    try:
        data = tmp_path / "n" / "data"
        db = sqlite3.connect(data / "medfed.sqlite")
        rows = dict(db.execute("SELECT sop_uid, sha256 FROM instances").fetchall())
        paths = [r[0] for r in db.execute("SELECT path FROM instances")]
        db.close()
        want = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
        assert set(rows) == want, "an acknowledged instance is missing"
        for rel in paths:
            raw = (data / "objects" / rel).read_bytes()
            assert hashlib.sha256(raw).hexdigest() in rows.values(), "a stored file is partial"
        study = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        find = dcmtk("findscu", "-aet", "FINDSCU", "-aec", "MEDFED", "-S",
                     "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}",
                     "-k", "SOPInstanceUID", "127.0.0.1", port, check=True)
        assert (find.stdout + find.stderr).count("(0008,0018)") == len(files)
        out = tmp_path / "got"
        out.mkdir()
        dcmtk("getscu", "-aet", "GETSCU", "-aec", "MEDFED", "-S",
              "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
              "-od", out, "127.0.0.1", port, check=True)
        got = sorted(p for p in out.iterdir() if p.is_file())
        assert sorted(map(_dataset_digest, got)) == sorted(map(_dataset_digest, files))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, "node did not shut down cleanly on SIGTERM"
