"""SQL for the DHT index publisher: the rows its terms come from, and its own state.

Why here: raw SQL stays in node/store/. The publisher (node/index/publisher.py) reads
every term once (first publish), then only what ``index_changes`` (filled by triggers)
says changed since the last run, with one indexed query per affected term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from node.index.terms import ModalityMonthRow, ModalityPartRow, PatientRow, TermRows

from .db import MetadataStore
from .writer import SqlConnection

_CHUNK = 500


@dataclass(frozen=True)
class Changes:
    """What moved since ``after``: patients (by id), (modality, body part) pairs and
    (modality, YYYYMM) pairs whose terms must be recounted."""

    seq: int
    patients: frozenset[int]
    parts: frozenset[tuple[str, str]]
    months: frozenset[tuple[str, str]]

    @property
    def empty(self) -> bool:
        return not (self.patients or self.parts or self.months)


@dataclass(frozen=True)
class StoredTerm:
    kind: str
    ref: str
    count: int
    published: int | None


async def change_cursor(store: MetadataStore) -> int:
    row = await store.fetchone("SELECT coalesce(max(seq), 0) FROM index_changes")
    return int(row[0]) if row else 0


async def changes_after(store: MetadataStore, after: int, limit: int = 20000) -> Changes:
    rows = await store.fetchall(
        "SELECT seq, patient_id, modality, body_part, study_date FROM index_changes "
        "WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
    patients: set[int] = set()
    parts: set[tuple[str, str]] = set()
    months: set[tuple[str, str]] = set()
    seq = after
    for s, patient, modality, body_part, date in rows:
        seq = int(s)
        if patient is not None:
            patients.add(int(patient))
        if modality is not None:
            parts.add((str(modality), str(body_part or "")))
            months.add((str(modality), str(date or "")[:6]))
    return Changes(seq, frozenset(patients), frozenset(parts), frozenset(months))


def _chunks(values: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]


_PATIENT_ROWS = ("SELECT p.id, pp.pid, pp.issuer, p.pseudonym, p.num_studies FROM patients p "
                 "JOIN patient_phi pp ON pp.patient_id = p.id")


def _patient(row: Sequence[object]) -> PatientRow:
    return PatientRow(str(row[1]), str(row[2]), int(row[4]),  # type: ignore[call-overload]
                      pseudonym=str(row[3]) if row[3] else None, ref=str(row[0]))


async def all_term_rows(store: MetadataStore) -> TermRows:
    """Every term's row, read once (first publish, or after the index key changed)."""
    patients = tuple([_patient(r) async for r in store.stream(
        f"{_PATIENT_ROWS} WHERE p.num_studies > 0", batch=2000)])
    parts = tuple(ModalityPartRow(str(m), str(b), int(n)) for m, b, n in await store.fetchall(
        "SELECT modality, body_part, count(DISTINCT study_id) FROM series "
        "GROUP BY modality, body_part"))
    months = tuple(ModalityMonthRow(str(m), str(d or ""), int(n)) for m, d, n in
                   await store.fetchall(
                       "SELECT modality, substr(study_date, 1, 6), count(*) FROM study_modalities "
                       "GROUP BY modality, substr(study_date, 1, 6)"))
    return TermRows(patients, parts, months)


def _month_bounds(prefix: str) -> tuple[str, str]:
    """Text range holding exactly the dates that start with ``prefix`` (YYYYMM)."""
    if not prefix:
        return "", ""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


async def term_rows_for(store: MetadataStore, changes: Changes) -> TermRows:
    """The current rows of the terms ``changes`` touches (one indexed query each).
    A patient that no longer exists comes back with 0 studies (to be withdrawn)."""
    found: dict[int, PatientRow] = {}
    for part in _chunks(sorted(changes.patients)):
        marks = ",".join("?" * len(part))
        for r in await store.fetchall(f"{_PATIENT_ROWS} WHERE p.id IN ({marks})", part):
            found[int(r[0])] = _patient(r)
    patients = tuple(found.get(pid, PatientRow("", "", 0, ref=str(pid)))
                     for pid in sorted(changes.patients))
    parts = []
    for modality, body_part in sorted(changes.parts):
        row = await store.fetchone("SELECT count(DISTINCT study_id) FROM series "
                                   "WHERE modality = ? AND body_part = ?", (modality, body_part))
        parts.append(ModalityPartRow(modality, body_part, int(row[0]) if row else 0))
    months = []
    for modality, prefix in sorted(changes.months):
        lo, hi = _month_bounds(prefix)
        if prefix:
            sql = ("SELECT count(*) FROM study_modalities WHERE modality = ? "
                   "AND study_date >= ? AND study_date < ?")
            params: tuple[str, ...] = (modality, lo, hi)
        else:
            sql = "SELECT count(*) FROM study_modalities WHERE modality = ? AND study_date = ''"
            params = (modality,)
        row = await store.fetchone(sql, params)
        months.append(ModalityMonthRow(modality, prefix, int(row[0]) if row else 0))
    return TermRows(patients, tuple(parts), tuple(months))


# -- the publisher's own state -------------------------------------------------------
async def load_state(store: MetadataStore) -> tuple[str, int, dict[bytes, StoredTerm]]:
    """(keys fingerprint, change cursor, terms) as the last run left them."""
    meta = dict(await store.fetchall(
        "SELECT key, value FROM meta WHERE key IN ('index_keys', 'index_seq')"))
    terms = {bytes(k): StoredTerm(str(kind), str(ref), int(c), None if p is None else int(p))
             async for k, kind, ref, c, p in store.stream(
                 "SELECT key, kind, ref, count, published FROM index_terms", batch=5000)}
    return str(meta.get("index_keys", "")), int(meta.get("index_seq", 0) or 0), terms


async def patient_terms(store: MetadataStore, refs: Sequence[str]) -> dict[str, bytes]:
    """Keys of the stored patient terms for these patients.id values."""
    out: dict[str, bytes] = {}
    for start in range(0, len(refs), _CHUNK):
        part = refs[start:start + _CHUNK]
        rows = await store.fetchall(
            f"SELECT ref, key FROM index_terms WHERE kind = 'patient' AND ref IN "
            f"({','.join('?' * len(part))})", part)
        out.update({str(r): bytes(k) for r, k in rows})
    return out


async def save_state(store: MetadataStore, terms: dict[bytes, tuple[str, str, int]], *,
                     seq: int, fingerprint: str, replace: bool = False) -> None:
    """Upsert terms (key -> kind, ref, count) and the cursor in one transaction;
    ``replace`` first marks every stored term as withdrawn (count 0)."""
    def work(conn: SqlConnection) -> None:
        if replace:
            conn.execute("UPDATE index_terms SET count = 0")
        for key, (kind, ref, count) in terms.items():
            conn.execute(
                "INSERT INTO index_terms(key, kind, ref, count) VALUES (?,?,?,?) "
                "ON CONFLICT(key) DO UPDATE SET kind=excluded.kind, ref=excluded.ref, "
                "count=excluded.count", (key, kind, ref, count))
        conn.execute("DELETE FROM index_terms WHERE count = 0 AND published IS NULL")
        for name, value in (("index_seq", str(seq)), ("index_keys", fingerprint)):
            conn.execute("INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) "
                         "DO UPDATE SET value=excluded.value", (name, value))
        conn.execute("DELETE FROM index_changes WHERE seq < ?", (seq,))  # keep the head
    await store.write(work)


async def mark_published(store: MetadataStore, published: dict[bytes, int]) -> None:
    """Record what the DHT accepted; a withdrawn term (0) that went out is forgotten."""
    def work(conn: SqlConnection) -> None:
        for key, count in published.items():
            if count == 0:
                conn.execute("DELETE FROM index_terms WHERE key = ? AND count = 0", (key,))
            else:
                conn.execute("UPDATE index_terms SET published = ? WHERE key = ?", (count, key))
    if published:
        await store.write(work)
