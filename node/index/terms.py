"""Which index terms a site holds: rows from its store → DHT keys with coarse counts.

Pure (no I/O). A term is a keyed hash, so the DHT never sees a pseudonym, modality or
month; the count is rounded UP to a power of two, so a record says "about this many"
without giving away exact figures. Rows whose values cannot be index keys (empty or
free-text body parts, malformed dates) are skipped and counted, never guessed at.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from node.deid.actions import pseudonym
from node.dht.index_keys import IndexKeyError, IndexKeys

PATIENT = "patient"
MODALITY_BODYPART = "modality+bodypart"
MODALITY_MONTH = "modality+month"


@dataclass(frozen=True)
class PatientRow:
    """One patient and how many studies the site has for it (PHI: never leaves here).
    ``pseudonym`` is the store's stored one when known (saves recomputing it);
    ``ref`` names the patient row, so a vanished patient's term can be withdrawn."""

    pid: str
    issuer: str
    studies: int
    pseudonym: str | None = None
    ref: str = ""


@dataclass(frozen=True)
class ModalityPartRow:
    modality: str
    body_part: str
    studies: int


@dataclass(frozen=True)
class ModalityMonthRow:
    modality: str
    month: str        # YYYYMM (or a full YYYYMMDD date)
    studies: int


@dataclass(frozen=True)
class TermRows:
    patients: tuple[PatientRow, ...] = ()
    modality_parts: tuple[ModalityPartRow, ...] = ()
    modality_months: tuple[ModalityMonthRow, ...] = ()


@dataclass(frozen=True)
class IndexTerms:
    """key → coarse count, plus how many rows could not be turned into a key."""

    counts: dict[bytes, int] = field(default_factory=dict)
    kinds: dict[bytes, str] = field(default_factory=dict)
    skipped: int = 0

    def kind_totals(self) -> dict[str, int]:
        totals: dict[str, int] = defaultdict(int)
        for kind in self.kinds.values():
            totals[kind] += 1
        return dict(totals)


def coarse_count(n: int) -> int:
    """Smallest power of two >= n (0 stays 0: a withdrawn term)."""
    if n < 0:
        raise ValueError("a count cannot be negative")
    return 0 if n == 0 else 1 << (n - 1).bit_length()


def is_coarse(n: int) -> bool:
    return n == 0 or (n & (n - 1)) == 0


def study_month(value: str) -> str:
    """'202403' or '20240315' → '2024-03'; raises IndexKeyError for anything else."""
    text = value.strip()
    if len(text) not in (6, 8) or not text.isdigit():
        raise IndexKeyError("study month must be YYYYMM or a YYYYMMDD date")
    return f"{text[:4]}-{text[4:6]}"


def _collect(pairs: Iterable[tuple[str, bytes, int]]) -> IndexTerms:
    exact: dict[bytes, int] = defaultdict(int)
    kinds: dict[bytes, str] = {}
    for kind, key, n in pairs:
        exact[key] += n
        kinds[key] = kind
    counts = {k: coarse_count(n) for k, n in exact.items() if n > 0}
    return IndexTerms(counts, {k: kinds[k] for k in counts})


@dataclass(frozen=True)
class TermEntry:
    kind: str
    ref: str       # patients.id for a patient term, else ''
    exact: int     # exact count (coarsened only when published)


def term_entries(rows: TermRows, keys: IndexKeys, linkage_key: bytes
                 ) -> tuple[dict[bytes, TermEntry], int]:
    """key -> entry for these rows (counts 0 included: terms to withdraw), and how many
    rows could not be keys. Rows that normalise to the same key are summed."""
    out: dict[bytes, TermEntry] = {}
    skipped = 0

    def add(kind: str, key: bytes, n: int, ref: str = "") -> None:
        old = out.get(key)
        out[key] = TermEntry(kind, ref or (old.ref if old else ""), n + (old.exact if old else 0))

    for p in rows.patients:
        try:
            if not p.pid.strip():
                raise IndexKeyError("patient without an ID")
            psn = p.pseudonym or pseudonym(p.pid, p.issuer, linkage_key)
            add(PATIENT, keys.patient_key(psn), p.studies, p.ref)
        except IndexKeyError:
            skipped += 1
    for m in rows.modality_parts:
        try:
            add(MODALITY_BODYPART, keys.modality_bodypart_key(m.modality, m.body_part), m.studies)
        except IndexKeyError:
            skipped += 1
    for d in rows.modality_months:
        try:
            add(MODALITY_MONTH, keys.modality_month_key(d.modality, study_month(d.month)),
                d.studies)
        except IndexKeyError:
            skipped += 1
    return out, skipped


def index_terms(rows: TermRows, keys: IndexKeys, linkage_key: bytes) -> IndexTerms:
    """The terms this site should publish. Rows that normalise to the same key (e.g.
    'ct' and 'CT') are summed before coarsening."""
    entries, skipped = term_entries(rows, keys, linkage_key)
    terms = _collect((e.kind, k, e.exact) for k, e in entries.items())
    return IndexTerms(terms.counts, terms.kinds, skipped)
