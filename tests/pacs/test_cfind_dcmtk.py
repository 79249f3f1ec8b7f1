"""C-FIND against a running node with dcmtk findscu: images arrive by storescu, the
answers are read back from the files findscu extracts."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from node.synth.generate import generate
from tests.dicom_tools import dcmtk


def _store(node, tmp_path: Path) -> list[Dataset]:  # type: ignore[no-untyped-def]
    result = generate(tmp_path / "in", patients=2, studies=1, series=2, slices=3,
                      rows=16, cols=16)
    proc = dcmtk("storescu", "-aet", "STORESCU", "-aec", "MEDFED", "+sd", "+r",
                 "127.0.0.1", node.dicom_port, tmp_path / "in")
    assert proc.returncode == 0, proc.stderr
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in result.files]


def _findscu(node, out: Path, model: str, *keys: str) -> tuple[list[Dataset], str]:  # type: ignore[no-untyped-def]
    out.mkdir(parents=True, exist_ok=True)
    args: list[str | int | Path] = [model, "-d", "-aet", "FINDSCU", "-aec", "MEDFED", "-X",
                                    "-od", out]
    for key in keys:
        args += ["-k", key]
    proc = dcmtk("findscu", *args, "127.0.0.1", node.dicom_port, timeout=60)
    responses = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    return responses, proc.stdout + proc.stderr


def test_findscu_study_series_and_image_levels(start_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = start_node()
    sent = _store(node, tmp_path)
    studies: dict[str, list[Dataset]] = defaultdict(list)
    for ds in sent:
        studies[ds.StudyInstanceUID].append(ds)
    one = sent[0]
    name_prefix = str(one.PatientName)[:3].lower()
    expected = {uid for uid, items in studies.items()
                if str(items[0].PatientName).lower().startswith(name_prefix)}

    rsp, log = _findscu(node, tmp_path / "study", "-S", "QueryRetrieveLevel=STUDY",
                        f"PatientName={name_prefix}*", "StudyInstanceUID", "StudyDate",
                        "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                        "NumberOfStudyRelatedInstances", "InstanceAvailability")
    assert {r.StudyInstanceUID for r in rsp} == expected, log
    for r in rsp:
        items = studies[r.StudyInstanceUID]
        assert r.StudyDate == items[0].StudyDate
        assert r.NumberOfStudyRelatedInstances == len(items)
        assert r.NumberOfStudyRelatedSeries == len({i.SeriesInstanceUID for i in items})
        assert r.ModalitiesInStudy == items[0].Modality
        assert r.InstanceAvailability == "ONLINE"
        assert r.RetrieveAETitle == "MEDFED"

    series_uids = sorted({i.SeriesInstanceUID for i in studies[one.StudyInstanceUID]})
    rsp, log = _findscu(node, tmp_path / "series", "-P", "QueryRetrieveLevel=SERIES",
                        f"PatientID={one.PatientID}", f"StudyInstanceUID={one.StudyInstanceUID}",
                        "SeriesInstanceUID", "Modality", "NumberOfSeriesRelatedInstances")
    assert sorted(r.SeriesInstanceUID for r in rsp) == series_uids, log
    assert all(r.PatientID == one.PatientID and r.Modality == one.Modality for r in rsp)

    rsp, log = _findscu(node, tmp_path / "image", "-S", "QueryRetrieveLevel=IMAGE",
                        f"StudyInstanceUID={one.StudyInstanceUID}",
                        f"SeriesInstanceUID={one.SeriesInstanceUID}", "SOPInstanceUID",
                        "InstanceNumber", "Rows")
    want = sorted((int(i.InstanceNumber), i.SOPInstanceUID) for i in sent
                  if i.SeriesInstanceUID == one.SeriesInstanceUID)
    assert sorted((int(r.InstanceNumber), r.SOPInstanceUID) for r in rsp) == want, log
    assert all(r.Rows == one.Rows for r in rsp)


def test_findscu_malformed_query_gets_a_failure_status(start_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    node = start_node()
    _store(node, tmp_path)
    rsp, log = _findscu(node, tmp_path / "bad", "-S", "QueryRetrieveLevel=STUDY",
                        "StudyDate=20241340", "StudyInstanceUID")
    assert rsp == []
    assert "StudyDate: not a calendar date" in log, log
    rsp, log = _findscu(node, tmp_path / "deep", "-S", "QueryRetrieveLevel=STUDY",
                        "SeriesInstanceUID=1.2.3")
    assert rsp == [] and "below the STUDY level" in log, log
    # The node keeps answering after refusing.
    rsp, log = _findscu(node, tmp_path / "ok", "-S", "QueryRetrieveLevel=STUDY",
                        "StudyInstanceUID")
    assert len(rsp) == 2, log
