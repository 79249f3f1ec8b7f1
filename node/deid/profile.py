"""PS3.15 Table E.1-1 as data: the de-identification rules, loaded from package JSON.

The table is shipped whole (never a hand-typed subset) so that a new edition of the
standard is a data update, not a code change. `convert_innolitics` records how the
shipped JSON was made from the public machine-readable extraction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

# Our column keys → the innolitics/dicom-standard keys → the standard's column titles.
OPTION_COLUMNS: dict[str, tuple[str, str]] = {
    "rtn_safe_priv": ("rtnSafePrivOpt", "Retain Safe Private Option"),
    "rtn_uids": ("rtnUIDsOpt", "Retain UIDs Option"),
    "rtn_dev_id": ("rtnDevIdOpt", "Retain Device Identity Option"),
    "rtn_inst_id": ("rtnInstIdOpt", "Retain Institution Identity Option"),
    "rtn_pat_chars": ("rtnPatCharsOpt", "Retain Patient Characteristics Option"),
    "rtn_long_full_dates": ("rtnLongFullDatesOpt", "Retain Longitudinal Temporal Information with Full Dates Option"),
    "rtn_long_modif_dates": ("rtnLongModifDatesOpt", "Retain Longitudinal Temporal Information with Modified Dates Option"),
    "clean_desc": ("cleanDescOpt", "Clean Descriptors Option"),
    "clean_struct_cont": ("cleanStructContOpt", "Clean Structured Content Option"),
    "clean_graph": ("cleanGraphOpt", "Clean Graphics Option"),
}
BASIC_ACTIONS = frozenset({"D", "Z", "X", "K", "C", "U", "X/Z", "X/D", "X/Z/D", "Z/D", "X/Z/U*"})
OPTION_ACTIONS = frozenset({"K", "C"})
PRIVATE_TAG = "private"  # the table's "(gggg,eeee) where gggg is odd" row
_TAG_RE = re.compile(r"^[0-9a-fx]{8}$")
_PRIVATE_RE = re.compile(r"^\(gggg,eeee\)\s*where\s*gggg\s*is\s*odd$", re.IGNORECASE)


class ProfileError(ValueError):
    """The shipped (or supplied) Table E.1-1 data is malformed; de-identification cannot run."""


@dataclass(frozen=True)
class ProfileRule:
    """One row of Table E.1-1; `value`/`mask` match wildcard tags such as (60xx,3000)."""

    value: int
    mask: int
    name: str
    basic: str
    options: Mapping[str, str] = field(default_factory=dict)

    def option(self, column: str) -> str | None:
        return self.options.get(column)


@dataclass(frozen=True)
class Profile:
    """The whole table, indexed for lookup by concrete tag."""

    edition: str
    source: str
    exact: Mapping[int, ProfileRule]
    wildcard: tuple[ProfileRule, ...]
    private: ProfileRule

    def rule_for(self, tag: int) -> ProfileRule | None:
        """Private tags get the private row; concrete rows win over wildcard rows."""
        if (tag >> 16) % 2 == 1:
            return self.private
        rule = self.exact.get(tag)
        if rule is not None:
            return rule
        return next((r for r in self.wildcard if tag & r.mask == r.value), None)

    def __len__(self) -> int:
        return len(self.exact) + len(self.wildcard) + 1


def _parse_tag(text: str) -> tuple[int, int]:
    """'60xx3000' → (0x60003000, 0xFF00FFFF)."""
    if not _TAG_RE.match(text):
        raise ProfileError(f"tag {text!r} is not 8 hex digits (x for a wildcard digit)")
    value = int(text.replace("x", "0"), 16)
    mask = int("".join("0" if c == "x" else "f" for c in text), 16)
    return value, mask


def _parse_rule(row: Any, index: int) -> tuple[str, ProfileRule]:
    if not isinstance(row, Mapping):
        raise ProfileError(f"attribute #{index} is not an object")
    tag, name, basic = row.get("tag"), row.get("name"), row.get("basic")
    options = row.get("options", {})
    if not isinstance(tag, str) or not isinstance(name, str) or basic not in BASIC_ACTIONS:
        raise ProfileError(f"attribute #{index} needs string tag/name and a basic action in {sorted(BASIC_ACTIONS)}")
    if not isinstance(options, Mapping) or any(
        k not in OPTION_COLUMNS or v not in OPTION_ACTIONS for k, v in options.items()
    ):
        raise ProfileError(f"attribute #{index} ({name}) has unknown option columns or actions: {options!r}")
    if tag == PRIVATE_TAG:
        return tag, ProfileRule(0x00010000, 0x00010000, name, basic, dict(options))
    value, mask = _parse_tag(tag)
    return tag, ProfileRule(value, mask, name, basic, dict(options))


def parse_profile(doc: Any) -> Profile:
    """Validate the JSON document and index it; refuses a table without its edition."""
    if not isinstance(doc, Mapping):
        raise ProfileError("profile document must be a JSON object")
    edition, source, rows = doc.get("edition"), doc.get("source"), doc.get("attributes")
    if not isinstance(edition, str) or not edition or not isinstance(source, str) or not source:
        raise ProfileError("profile document must name its 'edition' and 'source'")
    if not isinstance(rows, list) or not rows:
        raise ProfileError("profile document has no 'attributes' list")
    exact: dict[int, ProfileRule] = {}
    wildcard: list[ProfileRule] = []
    private: ProfileRule | None = None
    for index, row in enumerate(rows):
        tag, rule = _parse_rule(row, index)
        if tag == PRIVATE_TAG:
            private = rule
        elif rule.mask != 0xFFFFFFFF:
            wildcard.append(rule)
        elif rule.value in exact:
            raise ProfileError(f"tag {tag} appears twice in the profile")
        else:
            exact[rule.value] = rule
    if private is None:
        raise ProfileError("profile has no private-attributes row")
    return Profile(edition, source, exact, tuple(wildcard), private)


def load_profile(path: Path | None = None) -> Profile:
    """Read a profile file; without a path, the table shipped in the package."""
    try:
        if path is None:
            text = resources.files("node").joinpath("data/ps315_e1_1.json").read_text("utf-8")
        else:
            text = path.read_text("utf-8")
        doc = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"cannot read the Table E.1-1 profile ({type(exc).__name__}: {exc})") from exc
    return parse_profile(doc)


@cache
def default_profile() -> Profile:
    """The shipped table, parsed once per process (immutable package data)."""
    return load_profile()


def _innolitics_tag(text: str) -> str:
    if _PRIVATE_RE.match(text.strip()):
        return PRIVATE_TAG
    m = re.fullmatch(r"\(([0-9A-Fa-fXx]{4}),([0-9A-Fa-fXx]{4})\)", text.strip())
    if not m:
        raise ProfileError(f"unrecognised tag {text!r} in source table")
    return (m.group(1) + m.group(2)).lower()


def convert_innolitics(rows: Iterable[Mapping[str, str]], edition: str, source: str) -> dict[str, Any]:
    """Turn innolitics/dicom-standard's confidentiality_profile_attributes.json into our format."""
    attributes = []
    for row in rows:
        options = {ours: row[theirs] for ours, (theirs, _) in OPTION_COLUMNS.items() if row.get(theirs)}
        item: dict[str, Any] = {"tag": _innolitics_tag(row["tag"]), "name": row["name"], "basic": row["basicProfile"]}
        if options:
            item["options"] = options
        attributes.append(item)
    attributes.sort(key=lambda a: a["tag"])
    doc = {
        "edition": edition,
        "source": source,
        "columns": {"basic": "Basic Profile", **{k: title for k, (_, title) in OPTION_COLUMNS.items()}},
        "attributes": attributes,
    }
    parse_profile(doc)  # never ship what we cannot load
    return doc
