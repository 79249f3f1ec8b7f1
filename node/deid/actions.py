"""DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile, federation flavour.

Pure: takes a pydicom Dataset, returns a new one, never touches files or the input.
Every attribute of Table E.1-1 gets its action (see `node/data/ps315_e1_1.json`), plus:
keyed UIDs and a keyed patient pseudonym that are the same at every member site (so a
patient and references link across sites without anyone holding a lookup table), and an
optional per-patient whole-day date shift.

Choices where the standard leaves room (we do not know each IOD's attribute types):
- X/Z → Z, X/D and X/Z/D and Z/D → D, X/Z/U* → keep the sequence and map the UIDs inside:
  the last alternative is conformant whatever the attribute's type in the IOD.
- D on a sequence keeps its items, applies the table inside them and then replaces every
  remaining value with a dummy (UIDs not in the table, i.e. class/scheme UIDs, stay; table
  UIDs are mapped): nothing free-text survives, yet the structure stays valid.
- D on a UI is the keyed UID (a dummy that stays unique).
- C (clean) is only supported for dates under retain_longitudinal_modified_dates (DA/DT
  shifted, TM kept since whole-day shifts leave times valid); any other C — descriptors,
  AE titles under device identity, free text under patient characteristics — falls back
  to the basic profile action, as no cleaner is implemented.
- Options giving K keep the value, except that a date kept by Retain Device Identity is
  still shifted when dates are modified (a real calibration date would undo the shift).
- With modified dates, DA/DT attributes not in the table are shifted too (all dates of a
  patient move together); any date that cannot be shifted exactly falls back to the basic
  action (zero length when not in the table).
- All private attributes and all curve (50xx) and overlay (60xx) groups are removed, as are
  group lengths (they would be stale). Nested PatientID/PatientName get the table action;
  only the top-level ones carry the pseudonym.
- The file meta is rebuilt: SOP class and transfer syntax kept, MediaStorageSOPInstanceUID
  set to the new SOPInstanceUID, sender AE titles and private meta dropped.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
from dataclasses import dataclass, field
from enum import Enum

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from node.deid.profile import Profile, ProfileRule, default_profile
from node.deid.values import concrete_vr, dummy_value, empty_value, shift_dates

MIN_KEY_BYTES = 16
MAX_SHIFT_DAYS = 365
_DATE_VRS = frozenset({"DA", "DT"})
_TIME_VRS = frozenset({"DA", "DT", "TM"})


class DeidError(Exception):
    """An instance cannot be de-identified; the message names no patient data."""


class BurnedInAnnotationRefused(DeidError):
    """The pixels themselves may show identity; header de-identification cannot fix that."""


class MissingPatientId(DeidError):
    """Without a patient ID there is no pseudonym, so the instance could never be linked."""


class DeidKeyError(DeidError):
    """Federation keys are missing or too short."""


@dataclass(frozen=True)
class DeidKeys:
    """The federation's keys: every member must hold the same two to link patients/UIDs."""

    uid_key: bytes = field(repr=False)
    patient_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        for name in ("uid_key", "patient_key"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) < MIN_KEY_BYTES:
                raise DeidKeyError(f"federation {name} must be at least {MIN_KEY_BYTES} random bytes")


@dataclass(frozen=True)
class DeidOptions:
    """PS3.15 E.3 options this node supports (codes 113107/113108/113109) + burned-in override."""

    retain_longitudinal_modified_dates: bool = False
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    allow_burned_in: bool = False


@dataclass
class DeidReport:
    """What was done to one instance (counts of elements, nested ones included)."""

    removed: int = 0
    zeroed: int = 0
    dummied: int = 0
    kept: int = 0
    uids_mapped: int = 0
    dates_shifted: int = 0
    fallbacks: int = 0
    private_removed: int = 0
    graphics_removed: int = 0
    date_shift_days: int | None = None


class Action(Enum):
    REMOVE = "X"
    ZERO = "Z"
    DUMMY = "D"
    KEEP = "K"
    UID = "U"
    SHIFT = "C"


_BASIC: dict[str, Action] = {
    "X": Action.REMOVE,
    "Z": Action.ZERO,
    "D": Action.DUMMY,
    "K": Action.KEEP,
    "C": Action.DUMMY,  # no basic-profile row is C; a dummy is the safe reading
    "U": Action.UID,
    "X/Z": Action.ZERO,
    "X/D": Action.DUMMY,
    "X/Z/D": Action.DUMMY,
    "Z/D": Action.DUMMY,
    "X/Z/U*": Action.UID,
}


def _mac(key: bytes, domain: bytes, message: str) -> bytes:
    return hmac.new(key, domain + b"\x00" + message.encode("utf-8"), hashlib.sha256).digest()


def _normalise(text: str) -> str:
    return text.strip().upper()


def pseudonym(patient_id: str, issuer: str, key: bytes) -> str:
    """Federation pseudonym: same (ID, issuer) → same string at every member; 80 bits."""
    digest = _mac(key, b"medfed-pseudonym-v1", _normalise(patient_id) + "\x1f" + _normalise(issuer))
    return "PSN-" + base64.b32encode(digest[:10]).decode("ascii")


def patient_pseudonym_for(ds: Dataset, keys: DeidKeys) -> str:
    """Pseudonym of the dataset's patient (PatientID + IssuerOfPatientID)."""
    patient_id = str(ds.get("PatientID", "") or "")
    if not patient_id.strip():
        raise MissingPatientId("instance has no PatientID: it cannot be pseudonymised or linked; fix it at the source")
    return pseudonym(patient_id, str(ds.get("IssuerOfPatientID", "") or ""), keys.patient_key)


def keyed_uid(uid: str, key: bytes) -> str:
    """'2.25.' + 128-bit HMAC as decimal: ≤ 44 chars, valid, same everywhere, irreversible."""
    digest = _mac(key, b"medfed-uid-v1", uid.strip("\x00 "))
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def date_shift_days(pseudonym_text: str, key: bytes) -> int:
    """Per-patient shift in [-365, -1] days, derived from the pseudonym so all sites agree."""
    digest = _mac(key, b"medfed-dateshift-v1", pseudonym_text)
    return -(int.from_bytes(digest[:8], "big") % MAX_SHIFT_DAYS + 1)


def resolve_action(rule: ProfileRule | None, options: DeidOptions, vr: str) -> tuple[Action, Action]:
    """(action, fallback) for one attribute; fallback is used when a date cannot be shifted."""
    shifting = options.retain_longitudinal_modified_dates and vr in _TIME_VRS
    if rule is None:
        return (Action.SHIFT, Action.ZERO) if shifting and vr in _DATE_VRS else (Action.KEEP, Action.KEEP)
    basic = _BASIC[rule.basic]
    if shifting and rule.option("rtn_long_modif_dates") == "C":
        return Action.SHIFT, basic
    if options.retain_patient_characteristics and rule.option("rtn_pat_chars") == "K":
        return Action.KEEP, basic
    if options.retain_device_identity and rule.option("rtn_dev_id") == "K":
        return Action.KEEP, basic
    return basic, basic


def _is_graphics_group(group: int) -> bool:
    return group & 0xFF00 in (0x5000, 0x6000)


@dataclass
class _Walk:
    """One de-identification pass; holds the per-instance context, no global state."""

    profile: Profile
    options: DeidOptions
    uid_key: bytes
    shift: int | None
    report: DeidReport

    def dataset(self, src: Dataset, dummy: bool) -> Dataset:
        out = Dataset()
        for elem in src:
            new = self.element(elem, dummy)
            if new is not None:
                out.add(new)
        return out

    def element(self, elem: DataElement, dummy: bool) -> DataElement | None:
        tag = elem.tag
        if tag.is_private:
            self.report.private_removed += 1
            return None
        if _is_graphics_group(tag.group):
            self.report.graphics_removed += 1
            return None
        if tag.element == 0:  # group length: stale once anything changes
            return None
        action, fallback = resolve_action(self.profile.rule_for(tag), self.options, elem.VR)
        if dummy and action in (Action.KEEP, Action.SHIFT) and elem.VR != "UI":
            action = Action.DUMMY
        return self.apply(elem, action, fallback, dummy)

    def apply(self, elem: DataElement, action: Action, fallback: Action, dummy: bool) -> DataElement | None:
        vr = elem.VR
        if action is Action.SHIFT:
            if vr not in _DATE_VRS or self.shift is None:
                action = Action.KEEP
            else:
                shifted = shift_dates(vr, elem.value, self.shift)
                if shifted is not None:
                    self.report.dates_shifted += 1
                    return DataElement(elem.tag, vr, shifted)
                self.report.fallbacks += 1
                return self.apply(elem, fallback, fallback, dummy)
        if vr == "SQ":
            return self.sequence(elem, action, dummy)
        if action is Action.REMOVE:
            self.report.removed += 1
            return None
        if action is Action.ZERO:
            self.report.zeroed += 1
            return DataElement(elem.tag, concrete_vr(vr), empty_value(vr))
        if action in (Action.UID, Action.DUMMY) and vr == "UI":
            self.report.uids_mapped += 1
            return DataElement(elem.tag, vr, self.map_uids(elem.value))
        if action is Action.KEEP:
            self.report.kept += 1
            value = copy.deepcopy(elem.value) if isinstance(elem.value, MultiValue) else elem.value
            return DataElement(
                elem.tag, vr, value, is_undefined_length=elem.is_undefined_length, already_converted=True
            )
        self.report.dummied += 1  # DUMMY, or U on a non-UID value
        return DataElement(elem.tag, concrete_vr(vr), dummy_value(vr))

    def sequence(self, elem: DataElement, action: Action, dummy: bool) -> DataElement | None:
        if action is Action.REMOVE:
            self.report.removed += 1
            return None
        if action is Action.ZERO:
            self.report.zeroed += 1
            return DataElement(elem.tag, "SQ", Sequence())
        inner_dummy = dummy or action is Action.DUMMY
        return DataElement(elem.tag, "SQ", Sequence([self.dataset(item, inner_dummy) for item in elem.value or []]))

    def map_uids(self, value: object) -> object:
        if value is None or value == "":
            return value
        if isinstance(value, (MultiValue, list, tuple)):
            return [keyed_uid(str(v), self.uid_key) for v in value]
        return keyed_uid(str(value), self.uid_key)


def _method_codes(options: DeidOptions) -> list[tuple[str, str]]:
    chosen = [codes.DCM.BasicApplicationConfidentialityProfile]
    if options.retain_longitudinal_modified_dates:
        chosen.append(codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption)
    if options.retain_patient_characteristics:
        chosen.append(codes.DCM.RetainPatientCharacteristicsOption)
    if options.retain_device_identity:
        chosen.append(codes.DCM.RetainDeviceIdentityOption)
    return [(c.value, c.meaning) for c in chosen]


def _mark(out: Dataset, psn: str, profile: Profile, options: DeidOptions) -> None:
    """Pseudonym in the patient module, and the PS3.15 E.1.1 de-identification record."""
    out.PatientID = psn
    out.PatientName = psn
    out.PatientIdentityRemoved = "YES"
    edition = profile.edition.split(",")[0][:64]
    out.DeidentificationMethod = [edition, "medfed keyed UIDs and federation pseudonym"]
    items = []
    for value, meaning in _method_codes(options):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
        items.append(item)
    out.DeidentificationMethodCodeSequence = items
    out.LongitudinalTemporalInformationModified = (
        "MODIFIED" if options.retain_longitudinal_modified_dates else "REMOVED"
    )


def _file_meta(src: Dataset, out: Dataset, uid_key: bytes) -> FileMetaDataset | None:
    old = getattr(src, "file_meta", None)
    if old is None:
        return None
    meta = FileMetaDataset()
    sop_class = out.get("SOPClassUID") or old.get("MediaStorageSOPClassUID")
    if sop_class:
        meta.MediaStorageSOPClassUID = sop_class
    sop_instance = out.get("SOPInstanceUID") or old.get("MediaStorageSOPInstanceUID")
    if sop_instance:
        meta.MediaStorageSOPInstanceUID = (
            sop_instance if "SOPInstanceUID" in out else keyed_uid(str(sop_instance), uid_key)
        )
    if "TransferSyntaxUID" in old:
        meta.TransferSyntaxUID = old.TransferSyntaxUID
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def deidentify_with_report(
    ds: Dataset, keys: DeidKeys, options: DeidOptions = DeidOptions(), profile: Profile | None = None
) -> tuple[Dataset, DeidReport]:
    """De-identify `ds` into a new dataset and say what was done."""
    if not options.allow_burned_in and str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES":
        raise BurnedInAnnotationRefused(
            "BurnedInAnnotation is YES: the pixels may show patient identity, so the instance was not "
            "de-identified; scrub the pixels first, or allow burned-in annotation explicitly"
        )
    profile = profile or default_profile()
    psn = patient_pseudonym_for(ds, keys)
    shift = date_shift_days(psn, keys.patient_key) if options.retain_longitudinal_modified_dates else None
    report = DeidReport(date_shift_days=shift)
    out = _Walk(profile, options, keys.uid_key, shift, report).dataset(ds, dummy=False)
    _mark(out, psn, profile, options)
    meta = _file_meta(ds, out, keys.uid_key)
    if meta is not None:
        out.file_meta = meta
    implicit, little = ds.original_encoding
    if implicit is not None:
        out.set_original_encoding(implicit, little, ds.original_character_set)
    return out, report


def deidentify(ds: Dataset, keys: DeidKeys, options: DeidOptions = DeidOptions()) -> Dataset:
    """De-identify `ds` (PS3.15 basic profile + chosen options); the input is not modified."""
    return deidentify_with_report(ds, keys, options)[0]
