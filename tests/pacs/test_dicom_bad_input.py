"""Hostile and broken input on the DICOM port: fuzzed datasets, a full disk, PHI in logs."""

from __future__ import annotations

import re

import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from node.synth.generate import PhiOverrides, generate, iter_datasets
from tests.dicom_tools import dcmtk, encode, scu, send_raw_store

_BASE = next(iter_datasets(patients=1, series=1, slices=1, rows=16, cols=16, seed=3))
del _BASE.file_meta
_RAW = encode(_BASE)


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):  # type: ignore[no-untyped-def]
    from node.testing.nodes import NodeThread, loopback_config

    node = NodeThread(loopback_config(tmp_path_factory.mktemp("fuzz"))).start()
    ae = scu(contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="MEDFED")
    yield node, assoc
    if assoc.is_established:
        assoc.release()
    node.stop()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_dataset_bytes_never_crash_or_half_write(fuzz_target, data) -> None:  # type: ignore[no-untyped-def]
    node, assoc = fuzz_target
    raw = bytearray(_RAW)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    # (An empty payload is not a dataset at all: the DIMSE layer then waits for one.)
    cut = data.draw(st.one_of(st.none(), st.integers(1, len(raw))))
    payload = bytes(raw if cut is None else raw[:cut])
    rsp = send_raw_store(assoc, CTImageStorage, _BASE.SOPInstanceUID, payload)
    assert "Status" in rsp, "the node must answer every C-STORE"
    rows = node.call(node.node.store.fetchall("SELECT path, sha256 FROM instances"))
    files = [p for p in node.cfg.objects_dir.rglob("*") if p.is_file()] \
        if node.cfg.objects_dir.exists() else []
    # Whatever was accepted is complete: one row per file, no temp files.
    assert len(rows) == len(files)
    assert not [f for f in files if f.name.startswith(".tmp-")]
    if rsp.Status != 0:
        assert 0xA000 <= rsp.Status <= 0xCFFF
    # Clean up so the next example starts from an empty store.
    for rel, _sha in rows:
        (node.cfg.objects_dir / rel).unlink()
    if rows:
        node.call(node.node.store.run_in_transaction([("DELETE FROM instances", ())]))


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 1 MiB tmpfs, so the node's image folder really fills up."""
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_gets_out_of_resources_and_nothing_half_written(tiny_disk: Path,
                                                                  tmp_path: Path) -> None:
    from node.testing.nodes import NodeThread, loopback_config

    cfg = loopback_config(tmp_path / "n")
    # Images on the tiny disk, metadata on the normal one.
    objects = tiny_disk / "objects"
    node = NodeThread(cfg)
    node.node.files.root = objects
    node.start()
    try:
        ae = scu(contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="MEDFED")
        statuses = []
        for ds in iter_datasets(patients=1, series=1, slices=20, rows=256, cols=256):
            statuses.append(assoc.send_c_store(ds).Status)
        assoc.release()
        rows = node.call(node.node.store.fetchall("SELECT path, size FROM instances"))
    finally:
        node.stop()
    assert 0x0000 in statuses and 0xA700 in statuses, statuses
    assert len(rows) == statuses.count(0x0000)
    on_disk = {str(p.relative_to(objects)): p.stat().st_size
               for p in objects.rglob("*") if p.is_file()}
    assert on_disk == {rel: size for rel, size in rows}, "a failed store left a file behind"


def test_no_phi_in_logs_or_audit(start_node, tmp_path: Path) -> None:
    canary = PhiOverrides(patient_name="CANARYNAME{i}^ZQX", patient_id="CNRYID{i}77",
                          birth_date="19230417", accession="CNRYACC{i}{s}",
                          study_description="CANARY FREE TEXT {i}")
    generate(tmp_path / "in", patients=2, series=1, slices=2, rows=16, cols=16, phi=canary)
    node = start_node()
    log_file = tmp_path / "node.log"
    import logging
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "+sd", "+r", "127.0.0.1",
              node.dicom_port, tmp_path / "in", check=True)
        dcmtk("findscu", "-aet", "FINDSCU", "-aec", "MEDFED", "-S", "-k",
              "QueryRetrieveLevel=STUDY", "-k", "PatientName=CANARYNAME*", "-k",
              "PatientID", "-k", "AccessionNumber", "127.0.0.1", node.dicom_port, check=True)
        dcmtk("findscu", "-aet", "FINDSCU", "-aec", "MEDFED", "-S", "-k",
              "QueryRetrieveLevel=STUDY", "-k", "PatientBirthDate=1923-", "127.0.0.1",
              node.dicom_port, check=True)
        node.node.audit.sync()
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        logging.getLogger().setLevel(logging.WARNING)
    texts = {"log": log_file.read_text(), "audit": node.cfg.audit_path.read_text()}
    assert "dicom.find" in texts["audit"] and "dicom.store" in texts["audit"]
    for where, text in texts.items():
        for needle in ("CANARYNAME", "CNRYID", "19230417", "1923-", "CNRYACC", "CANARY FREE"):
            assert needle not in text, f"PHI {needle!r} leaked into the {where}"
        # the birth year alone, as a value (a bare "1923" also occurs inside hex digests)
        assert not re.search(r"(?<![0-9a-f])1923(?![0-9a-f])", text), \
            f"PHI birth year leaked into the {where}"
