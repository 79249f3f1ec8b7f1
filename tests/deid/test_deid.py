"""PS3.15 Annex E de-identification: every Table E.1-1 row, options, keys, linkage, files."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import config
from pydicom.datadict import DicomDictionary, dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from pydicom.valuerep import validate_value

from node.deid.actions import (
    BurnedInAnnotationRefused,
    DeidKeyError,
    DeidKeys,
    DeidOptions,
    MissingPatientId,
    date_shift_days,
    deidentify,
    deidentify_with_report,
    keyed_uid,
    patient_pseudonym_for,
    pseudonym,
)
from node.deid.files import FolderError, deidentify_folder
from node.deid.profile import ProfileError, convert_innolitics, default_profile, load_profile, parse_profile

KEYS = DeidKeys(uid_key=bytes(range(32)), patient_key=bytes(range(100, 132)))
OTHER_KEYS = DeidKeys(uid_key=bytes(range(1, 33)), patient_key=bytes(range(101, 133)))
DOC = json.loads(resources.files("node").joinpath("data/ps315_e1_1.json").read_text("utf-8"))
ROWS = [r for r in DOC["attributes"] if r["tag"] != "private"]
CANARY_RE = re.compile(rb"CANARY[TNPX]\d{4}|1\.2\.826\.0\.1\.3680043\.9[89]\.\d{4}")
SET_BY_DEID = {tag_for_keyword(k) for k in ("PatientID", "PatientName")}
TEXT_VRS = {"AE", "CS", "SH", "LO", "ST", "LT", "UT", "UC", "PN"}
BYTES_VRS = {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}
PRIV_GROUP = 0x0009

# ---------------------------------------------------------------- building the full dataset


def _instance_tags(tag_text: str) -> list[int]:
    """Wildcard rows become concrete repeating-group tags (group 50xx/60xx → 5002/6002)."""
    group, element = tag_text[:4].replace("xx", "02"), tag_text[4:]
    return [int(group + ("3000" if element == "xxxx" else element), 16)]


def _item(i: int, creator: str = "CANARY PRIV") -> Dataset:
    item = Dataset()
    item.PatientName = f"CANARYN{i:04d}"
    item.ReferencedSOPClassUID = CTImageStorage
    item.ReferencedSOPInstanceUID = f"1.2.826.0.1.3680043.98.{1000 + i}"
    item.CodeValue = f"NEUTRAL{i:04d}"
    item.private_block(PRIV_GROUP, creator, create=True).add_new(0x01, "LO", f"CANARYP{i:04d}")
    return item


@dataclass
class Planted:
    ds: Dataset
    rows: dict[int, dict[str, Any]]  # tag → table row
    vrs: dict[int, str]
    canaries: dict[int, bytes]


def _value(i: int, vr: str, date: dt.date) -> tuple[Any, bytes | None]:
    text = f"CANARYT{i:04d}"
    if vr in TEXT_VRS:
        return text, text.encode()
    if vr == "UR":
        return f"http://h.example/{text}", text.encode()
    if vr in ("DA", "DT"):
        day = date.strftime("%Y%m%d")
        return (day if vr == "DA" else day + "101112"), day.encode()
    if vr == "UI":
        uid = f"1.2.826.0.1.3680043.99.{1000 + i}"
        return uid, uid.encode()
    if vr in BYTES_VRS:
        return (text + "X").encode(), text.encode()
    simple = {"TM": "101112", "DS": f"{i}.5", "IS": str(i), "AS": "045Y", "AT": 0x00100010, "FL": i + 0.5, "FD": i + 0.5}
    return simple.get(vr, i), None


def build_full() -> Planted:
    """One dataset holding every Table E.1-1 attribute (command/meta groups aside)."""
    ds, rows, vrs, canaries = Dataset(), {}, {}, {}
    date = dt.date(1900, 1, 1)
    for i, row in enumerate(ROWS):
        for tag in _instance_tags(row["tag"]) if "x" in row["tag"] else [int(row["tag"], 16)]:
            if tag >> 16 in (0x0000, 0x0002):
                continue
            vr = dictionary_VR(tag).split(" or ")[0]
            date += dt.timedelta(days=400)  # gaps > max shift: a shifted date never equals another canary
            value, canary = (Sequence([_item(i)]), None) if vr == "SQ" else _value(i, vr, date)
            ds.add_new(tag, vr, value)
            rows[tag], vrs[tag] = row, vr
            if canary:
                canaries[tag] = canary
    ds.SOPClassUID = CTImageStorage
    ds.add_new(0x60020010, "US", 16)  # overlay rows: whole overlay group must go
    ds.add_new(0x50020005, "US", 1)  # curve dimensions
    ds.private_block(PRIV_GROUP, "CANARY PRIV", create=True).add_new(0x02, "LO", "CANARYP9999")
    ds.PatientID, ds.IssuerOfPatientID = "CANARYX0001", "CANARYX0002"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return Planted(ds, rows, vrs, canaries)


@pytest.fixture(scope="module")
def full() -> Planted:
    return build_full()


# ---------------------------------------------------------------- expected outcome, from the raw table

BASIC_OUTCOME = {"X": "removed", "Z": "empty", "D": "dummy", "U": "uid", "X/Z": "empty", "X/D": "dummy",
                 "X/Z/D": "dummy", "Z/D": "dummy", "X/Z/U*": "kept"}


def expected_outcome(row: dict[str, Any], vr: str, opts: DeidOptions) -> str:
    options = row.get("options", {})
    if opts.retain_longitudinal_modified_dates and options.get("rtn_long_modif_dates") == "C" and vr in ("DA", "DT", "TM"):
        return "kept" if vr == "TM" else "shifted"
    if opts.retain_patient_characteristics and options.get("rtn_pat_chars") == "K":
        return "kept"
    if opts.retain_device_identity and options.get("rtn_dev_id") == "K":
        return "kept"
    outcome = BASIC_OUTCOME[row["basic"]]
    if vr == "UI" and outcome == "dummy":
        return "uid"
    return "kept" if vr == "SQ" and outcome == "uid" else outcome


OPTION_SETS = {
    "basic": DeidOptions(),
    "dates": DeidOptions(retain_longitudinal_modified_dates=True),
    "patient": DeidOptions(retain_patient_characteristics=True),
    "device": DeidOptions(retain_device_identity=True),
    "all": DeidOptions(True, True, True),
}


def _check_sequence(orig: Sequence, new: Sequence, dummied: bool) -> None:
    assert len(new) == len(orig) == 1
    item, src = new[0], orig[0]
    assert item.PatientName == ""
    assert item.ReferencedSOPClassUID == src.ReferencedSOPClassUID
    assert item.ReferencedSOPInstanceUID == keyed_uid(src.ReferencedSOPInstanceUID, KEYS.uid_key)
    assert (item.CodeValue == "ANONYMIZED") if dummied else (item.CodeValue == src.CodeValue)
    assert not any(e.tag.is_private for e in item)


def check_attribute(outcome: str, orig: pydicom.DataElement, out: Dataset, shift: int | None) -> None:
    tag = orig.tag
    if outcome == "removed":
        assert tag not in out
        return
    new = out[tag]
    if outcome == "empty":
        assert new.is_empty and len(new.value or []) == 0
    elif orig.VR == "SQ":
        _check_sequence(orig.value, new.value, dummied=outcome == "dummy")
    elif outcome == "dummy":
        assert not new.is_empty and new.value != orig.value and "CANARY" not in str(new.value)
    elif outcome == "kept":
        assert new.value == orig.value
    elif outcome == "uid":
        assert new.value == keyed_uid(orig.value, KEYS.uid_key) != orig.value
    else:
        assert outcome == "shifted" and shift is not None and -365 <= shift <= -1
        day = dt.datetime.strptime(orig.value[:8], "%Y%m%d").date() + dt.timedelta(days=shift)
        assert new.value == day.strftime("%Y%m%d") + orig.value[8:]


def _all_elements(ds: Dataset):
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _all_elements(item)


# ---------------------------------------------------------------- every attribute, every option


@pytest.mark.parametrize("name", OPTION_SETS)
def test_every_table_attribute_gets_its_action(full: Planted, name: str) -> None:
    opts = OPTION_SETS[name]
    out, report = deidentify_with_report(full.ds, KEYS, opts)
    assert len(full.rows) >= 600
    for tag, row in full.rows.items():
        if tag in SET_BY_DEID:
            continue
        try:
            check_attribute(expected_outcome(row, full.vrs[tag], opts), full.ds[tag], out, report.date_shift_days)
        except AssertionError as exc:
            raise AssertionError(f"{row['name']} {row['tag']} ({name})") from exc
    for elem in _all_elements(out):  # every value written is valid for its VR
        for value in elem.value if elem.VM > 1 else [elem.value]:
            validate_value(elem.VR, str(value) if elem.VR in ("DS", "IS") else value, config.RAISE)


def test_private_curves_overlays_and_meta(full: Planted) -> None:
    out, report = deidentify_with_report(full.ds, KEYS)
    assert not any(e.tag.is_private for e in _all_elements(out))
    assert not any(e.tag.group & 0xFF00 in (0x5000, 0x6000) for e in out)
    assert report.private_removed >= 2 and report.graphics_removed == 5
    assert out.PatientIdentityRemoved == "YES"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != full.ds.SOPInstanceUID
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert "IssuerOfPatientID" not in out


@pytest.mark.parametrize("name", OPTION_SETS)
def test_method_code_sequence_names_the_options(full: Planted, name: str) -> None:
    opts = OPTION_SETS[name]
    out = deidentify(full.ds, KEYS, opts)
    got = {(i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence}
    want = {"113100"} | {code for flag, code in [(opts.retain_longitudinal_modified_dates, "113107"),
                                                 (opts.retain_patient_characteristics, "113108"),
                                                 (opts.retain_device_identity, "113109")] if flag}
    assert got == {(c, "DCM") for c in want}
    assert any("2024b" in m for m in out.DeidentificationMethod)


@pytest.mark.parametrize("name", ["basic", "all", "device"])
def test_canary_scan_of_written_file(full: Planted, name: str) -> None:
    """Only canaries of attributes the options keep may survive into the written bytes."""
    opts = OPTION_SETS[name]
    out = deidentify(full.ds, KEYS, opts)
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, out, enforce_file_format=True)
    data = buf.getvalue()
    kept = {t for t in full.canaries if expected_outcome(full.rows[t], full.vrs[t], opts) == "kept"}
    found_uids_and_text = {m.decode() for m in CANARY_RE.findall(data)}
    expected = {full.canaries[t].decode() for t in kept if full.vrs[t] not in ("DA", "DT")}
    assert found_uids_and_text == expected
    dates_found = {t for t, c in full.canaries.items() if full.vrs[t] in ("DA", "DT") and c in data}
    assert dates_found == {t for t in kept if full.vrs[t] in ("DA", "DT")}
    assert (name == "device") == bool(dates_found)


def test_input_is_not_mutated(full: Planted) -> None:
    before = full.ds.to_json_dict()
    deidentify(full.ds, KEYS, OPTION_SETS["all"])
    assert full.ds.to_json_dict() == before


# ---------------------------------------------------------------- profile data


def test_profile_is_the_whole_table_with_edition() -> None:
    profile = default_profile()
    assert len(profile) == len(DOC["attributes"]) > 600
    assert "2024b" in profile.edition and "innolitics" in profile.source
    assert profile.rule_for(0x60023000).name == "Overlay Data"
    assert profile.rule_for(0x50021234).name == "Curve Data"
    assert profile.rule_for(0x00091001).basic == "X" and profile.rule_for(0x00100010).basic == "Z"
    assert profile.rule_for(tag_for_keyword("SOPClassUID")) is None


@pytest.mark.parametrize(
    "doc",
    [
        {"source": "s", "attributes": [{"tag": "private", "name": "p", "basic": "X"}]},
        {"edition": "e", "source": "s", "attributes": [{"tag": "private", "name": "p", "basic": "Q"}]},
        {"edition": "e", "source": "s", "attributes": [{"tag": "0010001", "name": "n", "basic": "X"}]},
        {"edition": "e", "source": "s", "attributes": [{"tag": "00100010", "name": "n", "basic": "X"}]},
        {"edition": "e", "source": "s", "attributes": [{"tag": "private", "name": "p", "basic": "X"},
                                                        {"tag": "00100010", "name": "n", "basic": "Z", "options": {"bogus": "K"}}]},
        {"edition": "e", "source": "s", "attributes": [{"tag": "private", "name": "p", "basic": "X"},
                                                        {"tag": "00100010", "name": "n", "basic": "Z"},
                                                        {"tag": "00100010", "name": "n", "basic": "X"}]},
        [1, 2],
    ],
)
def test_malformed_profiles_are_refused(doc: Any) -> None:
    with pytest.raises(ProfileError):
        parse_profile(doc)


def test_unreadable_profile_file(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text("{not json")
    with pytest.raises(ProfileError):
        load_profile(tmp_path / "p.json")
    with pytest.raises(ProfileError):
        load_profile(tmp_path / "missing.json")


def test_convert_innolitics_rows() -> None:
    rows = [
        {"name": "Overlay Data", "tag": "(60XX,3000)", "basicProfile": "X", "cleanGraphOpt": "C"},
        {"name": "Private Attributes", "tag": "(GGGG,EEEE) WHERE GGGG IS ODD", "basicProfile": "X"},
        {"name": "Study Date", "tag": "(0008,0020)", "basicProfile": "Z", "rtnLongModifDatesOpt": "C"},
    ]
    doc = convert_innolitics(rows, "ed", "src")
    assert [a["tag"] for a in doc["attributes"]] == ["00080020", "60xx3000", "private"]
    profile = parse_profile(doc)
    assert profile.rule_for(0x00080020).option("rtn_long_modif_dates") == "C"
    with pytest.raises(ProfileError):
        convert_innolitics([{"name": "n", "tag": "0008,0020", "basicProfile": "X"}], "ed", "src")


# ---------------------------------------------------------------- linkage across sites


def site_a(pid: str = " mrn-77 ", issuer: str = "hosp a") -> Dataset:
    ds = Dataset()
    ds.PatientID, ds.IssuerOfPatientID, ds.PatientName = pid, issuer, "Doe^Jane"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, "1.2.3.4.100"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.1"
    ds.StudyDate, ds.AcquisitionDateTime = "20240229", "20240229093000.250000+0100"
    ds.Modality = "CT"
    return ds


def site_b(pid: str = "MRN-77", issuer: str = "HOSP A ") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, "1.2.3.4.200"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.2"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = CTImageStorage, "1.2.3.4.100"
    ds.ReferencedImageSequence = [ref]
    ds.SourceImageSequence = [ref]
    ds.IssuerOfPatientID, ds.PatientID, ds.PatientBirthDate = issuer, pid, "19700101"
    ds.StudyDate, ds.Modality = "20240301", "MR"
    return ds


def test_same_patient_links_across_sites_and_references_hold() -> None:
    a, b = deidentify(site_a(), KEYS), deidentify(site_b(), KEYS)
    assert a.PatientID == b.PatientID == str(a.PatientName) == pseudonym("MRN-77", "HOSP A", KEYS.patient_key)
    assert re.fullmatch(r"PSN-[A-Z2-7]{16}", a.PatientID)
    assert a.StudyInstanceUID == b.StudyInstanceUID != "1.2.3.4"
    assert b.ReferencedImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    assert b.SourceImageSequence[0].ReferencedSOPInstanceUID == a.SOPInstanceUID
    for uid in (a.SOPInstanceUID, a.StudyInstanceUID, b.SeriesInstanceUID):
        assert UID(uid).is_valid and len(uid) <= 64 and uid.startswith("2.25.")
    assert b.ReferencedImageSequence[0].ReferencedSOPClassUID == CTImageStorage


def test_other_keys_or_issuer_do_not_link() -> None:
    base = deidentify(site_a(), KEYS)
    assert deidentify(site_a(), OTHER_KEYS).PatientID != base.PatientID
    assert deidentify(site_a(), OTHER_KEYS).SOPInstanceUID != base.SOPInstanceUID
    assert deidentify(site_a(issuer="hosp b"), KEYS).PatientID != base.PatientID
    assert deidentify(site_a(pid="mrn-78"), KEYS).PatientID != base.PatientID
    assert patient_pseudonym_for(site_a(issuer=""), KEYS) == pseudonym("MRN-77", "", KEYS.patient_key)


def test_date_shift_is_per_patient_and_consistent() -> None:
    opts = DeidOptions(retain_longitudinal_modified_dates=True)
    (a, ra), (b, rb) = (deidentify_with_report(d, KEYS, opts) for d in (site_a(), site_b()))
    assert ra.date_shift_days == rb.date_shift_days and -365 <= ra.date_shift_days <= -1
    gap = dt.date(2024, 3, 1) - dt.date(2024, 2, 29)
    assert dt.datetime.strptime(b.StudyDate, "%Y%m%d") - dt.datetime.strptime(a.StudyDate, "%Y%m%d") == gap
    expected_day = dt.date(2024, 2, 29) + dt.timedelta(days=ra.date_shift_days)
    assert a.AcquisitionDateTime == expected_day.strftime("%Y%m%d") + "093000.250000+0100"
    assert a.LongitudinalTemporalInformationModified == "MODIFIED"
    assert b.PatientBirthDate == ""  # not a longitudinal date: basic Z
    shifts = {date_shift_days(pseudonym(f"P{n}", "", KEYS.patient_key), KEYS.patient_key) for n in range(20)}
    assert len(shifts) > 5 and all(-365 <= s <= -1 for s in shifts)
    other = deidentify_with_report(site_a(pid="someone-else"), KEYS, opts)[1]
    assert other.date_shift_days != ra.date_shift_days


def test_unshiftable_and_unlisted_dates() -> None:
    opts = DeidOptions(retain_longitudinal_modified_dates=True)
    unlisted = next(t for t, v in DicomDictionary.items()
                    if v[0] == "DA" and not v[3] and default_profile().rule_for(t) is None)
    ds = site_a()
    ds.AcquisitionDateTime = "2024"  # year only: cannot be shifted by days
    with pytest.warns(UserWarning):
        ds.StudyDate = "2024.02.29"  # ACR-NEMA style, invalid for DA today
    ds.add_new(unlisted, "DA", "20240229")
    out, report = deidentify_with_report(ds, KEYS, opts)
    assert out.AcquisitionDateTime == "19000101000000" and out.StudyDate == ""
    assert report.fallbacks == 2
    assert out[unlisted].value == (dt.date(2024, 2, 29) + dt.timedelta(days=report.date_shift_days)).strftime("%Y%m%d")
    assert deidentify(ds, KEYS)[unlisted].value == "20240229"  # basic profile keeps unlisted attributes


# ---------------------------------------------------------------- refusals and bad input


def test_burned_in_annotation_is_refused_unless_allowed() -> None:
    ds = site_a()
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationRefused) as info:
        deidentify(ds, KEYS)
    assert "MRN" not in str(info.value) and "Doe" not in str(info.value)
    assert deidentify(ds, KEYS, DeidOptions(allow_burned_in=True)).BurnedInAnnotation == "YES"
    ds.BurnedInAnnotation = "NO"
    assert deidentify(ds, KEYS).PatientIdentityRemoved == "YES"


def test_missing_patient_id_and_bad_keys() -> None:
    ds = site_a(pid="  ")
    with pytest.raises(MissingPatientId):
        deidentify(ds, KEYS)
    with pytest.raises(DeidKeyError):
        DeidKeys(b"short", bytes(32))
    with pytest.raises(DeidKeyError):
        DeidKeys(bytes(32), "not bytes")  # type: ignore[arg-type]


# ---------------------------------------------------------------- folder edge


def _write(ds: Dataset, path: Path) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 8, 8, 7
    ds.SamplesPerPixel, ds.PixelRepresentation, ds.PhotometricInterpretation = 1, 0, "MONOCHROME2"
    ds.PixelData = bytes(range(16))
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def test_deidentify_folder(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _write(site_a(), src / "Doe^Jane" / "a.dcm")
    _write(site_b(), src / "b.dcm")
    burned = site_a()
    burned.SOPInstanceUID, burned.BurnedInAnnotation = "1.2.3.4.101", "YES"
    _write(burned, src / "c.dcm")
    (src / "notes.txt").write_text("Jane Doe, MRN-77")
    whole = (src / "b.dcm").read_bytes()
    (src / "truncated.dcm").write_bytes(whole[: len(whole) - 6])
    report = deidentify_folder(src, out, KEYS)
    status = {o.source: o.status for o in report.outcomes}
    assert status == {"Doe^Jane/a.dcm": "done", "b.dcm": "done", "c.dcm": "refused",
                      "notes.txt": "skipped", "truncated.dcm": "failed"}
    assert (report.done, report.refused, report.failed, report.skipped) == (2, 1, 1, 1)
    written = sorted(p for p in out.rglob("*") if p.is_file())
    assert len(written) == 2 and all(p.suffix == ".dcm" for p in written)
    for path in written:
        data = path.read_bytes()
        assert b"Doe" not in data and b"MRN-77" not in data and b"1.2.3.4.100" not in data
        ds = pydicom.dcmread(path)
        assert path.stem == ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert path.parent.name == ds.SeriesInstanceUID and ds.PixelData == bytes(range(16))
    assert all("MRN" not in o.reason and "Doe" not in o.reason for o in report.outcomes)


def test_folder_write_failure_leaves_no_partial_file(tmp_path: Path) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    _write(site_a(), src / "a.dcm")
    out.mkdir()
    (out / keyed_uid("1.2.3.4", KEYS.uid_key)).write_text("a file where the study folder should go")
    (out / ".deid-killed.part").write_bytes(b"half a file from a killed run")
    report = deidentify_folder(src, out, KEYS)
    assert report.failed == 1 and "file system" in report.outcomes[0].reason
    assert [p.name for p in out.rglob("*")] == [keyed_uid("1.2.3.4", KEYS.uid_key)]


def test_folder_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(FolderError):
        deidentify_folder(tmp_path / "missing", tmp_path / "out", KEYS)
    with pytest.raises(FolderError):
        deidentify_folder(tmp_path, tmp_path / "out", KEYS)
    (tmp_path / "in").mkdir()
    (tmp_path / "blocker").write_text("not a folder")
    with pytest.raises(FolderError):
        deidentify_folder(tmp_path / "in", tmp_path / "blocker", KEYS)
