"""De-identifying a diagnosis or report text before it leaves the site (pure).

Free text is where PHI hides. Two passes: remove every PHI value this site knows for
the patient and study (name parts, IDs, accession number, birth date in its common
spellings), then patterns no release should carry whatever the patient (dates, long
digit runs such as record or phone numbers, e-mail addresses). What remains is cut to a
bounded length. It is a safety net under the site's own release decision, not a licence
to release raw reports.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

REMOVED = "[removed]"
_PATTERNS = (
    re.compile(r"\b\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\b"),
    re.compile(r"\b\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}\b"),
    re.compile(r"\b\d{5,}\b"),
    re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
    re.compile(r"\+?\d[\d ()-]{7,}\d"),
)


def _variants(value: str) -> set[str]:
    """A PHI value and the pieces it is written as (PN components, date spellings)."""
    value = value.strip()
    out: set[str] = set()
    if len(value) >= 2:
        out.add(value)
    for part in re.split(r"[\^\s,=]+", value):
        if len(part) >= 2:
            out.add(part)
    if re.fullmatch(r"\d{8}", value):
        y, m, d = value[:4], value[4:6], value[6:]
        out.update({f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}"})
    return out


def deidentify_text(text: str, phi_values: Iterable[str], *, limit: int = 2000) -> str:
    terms = sorted({v for value in phi_values if value for v in _variants(value)},
                   key=len, reverse=True)
    out = text
    for term in terms:
        out = re.sub(re.escape(term), REMOVED, out, flags=re.IGNORECASE)
    for pattern in _PATTERNS:
        out = pattern.sub(REMOVED, out)
    out = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", " ", out)
    return out[:limit]
