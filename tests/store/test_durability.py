"""kill -9 a node in the middle of an association: every acknowledged instance survives,
nothing partial is ever served."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from node.synth.generate import iter_datasets
from tests.dicom_tools import free_port, scu


def _start(cfg: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "node.cli", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"node exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("node did not start listening")


def test_kill_9_mid_association_loses_no_acknowledged_instance(tmp_path: Path) -> None:
    port = free_port()
    subprocess.run([sys.executable, "-m", "node.cli", "init", str(tmp_path / "n"),
                    "--dicom-port", str(port), "--peer-port", str(free_port()),
                    "--dht-port", str(free_port()), "--http-port", str(free_port()),
                    "--allow", "PYNETDICOM@127.0.0.1"],
                   check=True, capture_output=True)
    cfg = tmp_path / "n" / "medfed.toml"
    proc = _start(cfg, port)
    acked: dict[str, bytes] = {}
    ae = scu(contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDFED")
    assert assoc.is_established
    # The kill lands at an arbitrary point of a C-STORE (mid-transfer, mid-write or
    # mid-commit), not between two of them.
    killer = threading.Timer(1.0, os.kill, (proc.pid, signal.SIGKILL))
    try:
        for n, ds in enumerate(iter_datasets(patients=1, series=4, slices=60, rows=256,
                                             cols=256)):
            if n == 3:
                killer.start()
            try:
                rsp = assoc.send_c_store(ds)
            except Exception:
                break
            if not assoc.is_established or "Status" not in rsp:
                break
            if rsp.Status == 0x0000:
                acked[ds.SOPInstanceUID] = ds.PixelData
    finally:
        if assoc.is_established:
            assoc.abort()
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert 3 <= len(acked) < 240, "the kill must land mid-stream"

    # Restart: the node sweeps temp files and serves only complete instances.
    proc = _start(cfg, port)
    try:
        data = tmp_path / "n" / "data"
        assert not list((data / "objects").rglob(".tmp-*")), "partial files left behind"
        db = sqlite3.connect(data / "medfed.sqlite")
        rows = dict(db.execute("SELECT sop_uid, path FROM instances").fetchall())
        sha = dict(db.execute("SELECT sop_uid, sha256 FROM instances").fetchall())
        db.close()
        missing = set(acked) - set(rows)
        assert not missing, f"{len(missing)} acknowledged instances lost"
        for uid, rel in rows.items():
            raw = (data / "objects" / rel).read_bytes()
            assert hashlib.sha256(raw).hexdigest() == sha[uid], "a stored file is partial"
            ds = pydicom.dcmread(data / "objects" / rel)
            if uid in acked:
                assert ds.PixelData == acked[uid]
        # The restarted node accepts new work on the same store.
        ae2 = scu(contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
        assoc2 = ae2.associate("127.0.0.1", port, ae_title="MEDFED")
        extra = next(iter_datasets(patients=1, series=1, slices=1, rows=32, cols=32, seed=9))
        assert assoc2.send_c_store(extra).Status == 0x0000
        assoc2.release()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, "node did not shut down cleanly on SIGTERM"
