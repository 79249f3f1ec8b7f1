"""C-STORE into a running node with dcmtk storescu and a raw pynetdicom SCU."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian, RLELossless)

from node.synth.generate import generate, iter_datasets
from tests.dicom_tools import dcmtk, encode, scu, send_raw_store


def _rows(node, sql: str, params=()):  # type: ignore[no-untyped-def]
    return node.call(node.node.store.fetchall(sql, params))


def _counts(node):  # type: ignore[no-untyped-def]
    return node.call(node.node.store.counts())


def _object_files(node) -> list[Path]:  # type: ignore[no-untyped-def]
    root = node.cfg.objects_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_echo(start_node) -> None:
    node = start_node()
    proc = dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "MEDFED", "127.0.0.1", node.dicom_port)
    assert proc.returncode == 0, proc.stderr


def test_storescu_multi_series_study_round_trip(start_node, tmp_path: Path) -> None:
    node = start_node()
    result = generate(tmp_path / "in", patients=2, studies=1, series=2, slices=6, rows=64, cols=64)
    proc = dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "+sd", "+r",
                 "127.0.0.1", node.dicom_port, tmp_path / "in")
    assert proc.returncode == 0, proc.stderr
    counts = _counts(node)
    assert (counts.patients, counts.studies, counts.series, counts.instances) == (2, 2, 4, 24)
    # Every stored file carries the exact pixel bytes that were sent.
    for src in result.files:
        sent = pydicom.dcmread(src)
        row = _rows(node, "SELECT path, sha256 FROM instances WHERE sop_uid=?",
                    (sent.SOPInstanceUID,))
        assert row, "instance missing"
        stored = pydicom.dcmread(node.cfg.objects_dir / row[0][0])
        assert stored.PixelData == sent.PixelData
        assert stored.PatientID == sent.PatientID
    # Files were written atomically: no temp files are left.
    assert not [p for p in _object_files(node) if p.name.startswith(".tmp-")]
    # A publish job was queued per series, in the same transaction as its instances.
    jobs = _rows(node, "SELECT count(*) FROM jobs WHERE kind='publish'")
    assert jobs[0][0] == 4


def test_resend_is_idempotent(start_node, tmp_path: Path) -> None:
    node = start_node()
    generate(tmp_path / "in", patients=1, studies=1, series=1, slices=3, rows=32, cols=32)
    for _ in range(2):
        proc = dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "+sd", "+r",
                     "127.0.0.1", node.dicom_port, tmp_path / "in")
        assert proc.returncode == 0, proc.stderr
    assert _counts(node).instances == 3
    assert len(_object_files(node)) == 3


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian,
                                    DeflatedExplicitVRLittleEndian, RLELossless])
def test_transfer_syntaxes_stored_as_received(start_node, syntax: str) -> None:
    node = start_node()
    ds = next(iter_datasets(patients=1, series=1, slices=1, rows=32, cols=32,
                            transfer_syntax=syntax))
    ae = scu(contexts=[(CTImageStorage, [syntax])])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="MEDFED")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert rsp.Status == 0x0000
    path = _rows(node, "SELECT path, transfer_syntax FROM instances")
    assert path[0][1] == syntax
    stored = pydicom.dcmread(node.cfg.objects_dir / path[0][0])
    assert stored.file_meta.TransferSyntaxUID == syntax
    assert stored.PixelData == ds.PixelData  # compressed data kept as received


def test_unknown_calling_ae_rejected_and_audited(start_node, tmp_path: Path) -> None:
    node = start_node()
    generate(tmp_path / "in", patients=1, series=1, slices=2, rows=32, cols=32)
    proc = dcmtk("storescu", "-aet", "INTRUDER", "-aec", "MEDFED", "+sd", "+r",
                 "127.0.0.1", node.dicom_port, tmp_path / "in")
    assert proc.returncode != 0
    assert "Calling AE Title Not Recognized" in proc.stderr + proc.stdout
    assert _counts(node).instances == 0
    node.node.audit.sync()
    entries = [json.loads(line) for line in node.cfg.audit_path.read_text().splitlines()]
    assert any(e["action"] == "dicom.associate" and e["outcome"] == "rejected"
               and e["actor"].startswith("INTRUDER") for e in entries)


def test_allowed_ae_from_wrong_host_rejected(start_node, tmp_path: Path) -> None:
    node = start_node(allow=("STORESCU@127.0.0.2",))
    generate(tmp_path / "in", patients=1, series=1, slices=1, rows=32, cols=32)
    proc = dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "+sd", "+r",
                 "127.0.0.1", node.dicom_port, tmp_path / "in")
    assert proc.returncode != 0
    assert _counts(node).instances == 0


def test_wrong_called_ae_rejected(start_node) -> None:
    node = start_node()
    proc = dcmtk("echoscu", "-aet", "ECHOSCU", "-aec", "NOTME", "127.0.0.1", node.dicom_port)
    assert proc.returncode != 0
    assert "Called AE Title Not Recognized" in proc.stderr + proc.stdout


def test_unsupported_sop_class_gets_no_context(start_node) -> None:
    node = start_node()
    ae = scu(contexts=[("1.2.3.4.5.6.7.8.9", [ExplicitVRLittleEndian]),
                       (CTImageStorage, [ExplicitVRLittleEndian])])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="MEDFED")
    try:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
    finally:
        assoc.release()
    assert "1.2.3.4.5.6.7.8.9" in rejected and "1.2.3.4.5.6.7.8.9" not in accepted
    assert CTImageStorage in accepted


def _one(**kw):  # type: ignore[no-untyped-def]
    ds = next(iter_datasets(patients=1, series=1, slices=1, rows=16, cols=16, **kw))
    del ds.file_meta
    return ds


def _bad_cases():  # type: ignore[no-untyped-def]
    missing_sop = _one()
    sop_uid = missing_sop.SOPInstanceUID
    del missing_sop.SOPInstanceUID
    yield "missing SOP Instance UID", missing_sop, sop_uid, 0xC211
    no_study = _one()
    del no_study.StudyInstanceUID
    yield "missing Study UID", no_study, no_study.SOPInstanceUID, 0xC211
    empty_pixels = _one()
    empty_pixels.PixelData = b""
    yield "zero-length pixel data", empty_pixels, empty_pixels.SOPInstanceUID, 0xC212
    short_pixels = _one()
    short_pixels.PixelData = short_pixels.PixelData[:100]
    yield "pixel data shorter than rows x columns", short_pixels, short_pixels.SOPInstanceUID, 0xC212
    wrong_class = _one()
    wrong_class.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR in a CT context
    yield "SOP class differs from context", wrong_class, wrong_class.SOPInstanceUID, 0xA900
    meta_in_body = _one()
    meta_in_body.add_new(0x00020010, "UI", "1.2.840.10008.1.2.1")
    yield "file meta element inside the dataset", meta_in_body, meta_in_body.SOPInstanceUID, 0xA900
    bad_uid = _one()
    bad_uid.SeriesInstanceUID = "1.2.abc.4"
    yield "invalid series UID", bad_uid, bad_uid.SOPInstanceUID, 0xA900


@pytest.mark.parametrize("label,ds,sop_uid,expected", list(_bad_cases()),
                         ids=[c[0] for c in _bad_cases()])
def test_invalid_instances_get_failure_status_and_leave_store_unchanged(
        start_node, label: str, ds, sop_uid: str, expected: int) -> None:  # type: ignore[no-untyped-def]
    node = start_node()
    ae = scu(contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="MEDFED")
    try:
        rsp = send_raw_store(assoc, CTImageStorage, sop_uid, encode(ds))
    finally:
        assoc.release()
    assert rsp.Status == expected, label
    assert rsp.get("ErrorComment"), "a failure must say why"
    assert _counts(node).instances == 0
    assert _object_files(node) == []


def test_garbage_dataset_bytes_rejected(start_node) -> None:
    node = start_node()
    good = _one()
    raw = encode(good)
    ae = scu(contexts=[(CTImageStorage, [ExplicitVRLittleEndian])])
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title="MEDFED")
    try:
        truncated = send_raw_store(assoc, CTImageStorage, good.SOPInstanceUID, raw[:301], 1)
        wrong_vr = bytearray(raw)
        idx = wrong_vr.find(b"PN")  # corrupt a VR code
        wrong_vr[idx:idx + 2] = b"\x00\x01"
        bad_vr = send_raw_store(assoc, CTImageStorage, good.SOPInstanceUID, bytes(wrong_vr), 3)
        ok = send_raw_store(assoc, CTImageStorage, good.SOPInstanceUID, raw, 5)
    finally:
        assoc.release()
    assert truncated.Status != 0x0000 and 0xA000 <= truncated.Status <= 0xCFFF
    assert bad_vr.Status != 0x0000
    assert ok.Status == 0x0000  # the node survived and the association still works
    assert _counts(node).instances == 1
