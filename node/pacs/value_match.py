"""One key's value → one SQL condition, by the matching rules of PS3.4 C.2.2.2.

Pure: returns SQL text with ``?`` placeholders and the values to bind; user input
never becomes SQL text. Error messages name the attribute but never its value (a
query value may be a patient's name or birth date).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from ..store.dialect import SQLITE, Dialect
from .qr_attributes import Kind

Clause = tuple[str, list[object]]

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_TM_RE = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")
_DT_RE = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?$")
_LIKE_ESCAPES = {"*": "%", "?": "_", "%": "!%", "_": "!_", "!": "!!"}

# Failure statuses for a C-FIND/C-GET/C-MOVE answer (PS3.4 C.4.1.1.4).
IDENTIFIER_MISMATCH = 0xA900   # the identifier's structure does not fit the model
UNABLE_TO_PROCESS = 0xC000     # a key's value cannot be understood


class MatchError(Exception):
    """A query identifier the node cannot answer; ``reason`` fits in an ErrorComment
    (64 characters) and holds no PHI; ``tag`` is the offending element, if one."""

    def __init__(self, reason: str, status: int = UNABLE_TO_PROCESS,
                 tag: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.tag = tag

    @property
    def error_comment(self) -> str:
        return self.reason[:64]


@dataclass(frozen=True)
class Key:
    """A key to match: where its value is (SQL), how to match, and what it is called."""

    expr: str
    kind: Kind
    keyword: str
    tag: int | None = None

    def fail(self, what: str) -> MatchError:
        return MatchError(f"{self.keyword}: {what}", UNABLE_TO_PROCESS, self.tag)


def has_wildcard(term: str) -> bool:
    return "*" in term or "?" in term


def key_clause(key: Key, terms: list[str], dialect: Dialect = SQLITE) -> Clause | None:
    """The condition for a key with these values (backslash-separated in DICOM; any one
    may match). None means universal matching: no condition at all."""
    terms = [t for t in terms if t]
    if not terms or "*" in terms:
        return None
    if key.kind is Kind.UID:
        for t in terms:
            if len(t) > 64 or not _UID_RE.match(t):
                raise key.fail("not a valid UID")
        marks = ", ".join("?" * len(terms))
        return (f"{key.expr} = ?", list(terms)) if len(terms) == 1 else (
            f"{key.expr} IN ({marks})", list(terms))
    clauses = [term_clause(key, t, dialect) for t in terms]
    if len(clauses) == 1:
        return clauses[0]
    return ("(" + " OR ".join(sql for sql, _ in clauses) + ")",
            [p for _, params in clauses for p in params])


def term_clause(key: Key, term: str, dialect: Dialect = SQLITE) -> Clause:
    """One value of a key (no backslash)."""
    kind, expr = key.kind, key.expr
    if kind is Kind.INT:
        if not re.fullmatch(r"[+-]?\d{1,12}", term):
            raise key.fail("expected a whole number")
        return f"{expr} = ?", [int(term)]
    if kind in (Kind.DATE, Kind.TIME, Kind.DATETIME):
        return _range_clause(key, term)
    if kind is Kind.PN:
        if has_wildcard(term):
            return dialect.nocase_like(expr, "!"), [like_pattern(term)]
        return dialect.nocase_equals(expr), [term]
    if has_wildcard(term):
        like = dialect.case_like(expr, "!")
        if like is not None:
            return like, [like_pattern(term)]
        return f"{expr} GLOB ?", [glob_pattern(term)]
    return f"{expr} = ?", [term]


def glob_pattern(term: str) -> str:
    """DICOM ``*``/``?`` → GLOB (case-sensitive); ``[`` is GLOB's only other special
    character, so it is written as the one-character class ``[[]``."""
    return term.replace("[", "[[]")


def like_pattern(term: str) -> str:
    """DICOM ``*``/``?`` → LIKE ``%``/``_`` with ``!`` escaping literal ``%``, ``_``, ``!``."""
    return "".join(_LIKE_ESCAPES.get(c, c) for c in term)


# -- dates and times ---------------------------------------------------------------
def _range_clause(key: Key, term: str) -> Clause:
    lo, hi = _single_or_range(key, term)
    if lo == hi:
        return f"{key.expr} = ?", [lo]
    parts, params = [f"{key.expr} <> ''"], []
    if lo is not None:
        parts.append(f"{key.expr} >= ?")
        params.append(lo)
    if hi is not None:
        parts.append(f"{key.expr} <= ?")
        params.append(hi)
    return "(" + " AND ".join(parts) + ")", params


def _single_or_range(key: Key, term: str) -> tuple[str | None, str | None]:
    """(lowest, highest) comparable text the term selects; None = open end."""
    single = _parse_single(key, term)
    if single is not None:
        return single
    lo_text, _, hi_text = term.partition("-")
    if not (lo_text or hi_text) or ("-" in hi_text and key.kind is not Kind.DATETIME):
        raise key.fail(_FORMAT[key.kind])
    lo = _bounds(key, lo_text)[0] if lo_text else None
    hi = _bounds(key, hi_text)[1] if hi_text else None
    if lo is not None and hi is not None and lo > hi:
        raise key.fail("range starts after it ends")
    return lo, hi


_FORMAT = {
    Kind.DATE: "expected YYYYMMDD or a range A-B, A- or -B",
    Kind.TIME: "expected HHMMSS[.FFFFFF] or a range A-B, A- or -B",
    Kind.DATETIME: "expected YYYYMMDD[HHMMSS] or a range",
}


def _parse_single(key: Key, term: str) -> tuple[str, str] | None:
    """A single value as the (lowest, highest) stored text it stands for, or None if
    the term is a range. A DA names one day; a partial TM/DT names a period."""
    if key.kind is Kind.DATE:
        return (term, term) if "-" not in term and _valid_date(key, term) else None
    if "-" not in term or key.kind is Kind.DATETIME and _DT_RE.match(term) and \
            _valid_offset(term):
        return _bounds(key, term)
    return None


def _valid_date(key: Key, text: str) -> bool:
    if not re.fullmatch(r"\d{8}", text):
        raise key.fail(_FORMAT[Kind.DATE])
    try:
        dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise key.fail("not a calendar date") from None
    return True


def _valid_offset(term: str) -> bool:
    m = re.search(r"[+-](\d{2})(\d{2})$", term)
    return m is None or int(m.group(1)) <= 14 and int(m.group(2)) <= 59


def _bounds(key: Key, text: str) -> tuple[str, str]:
    """(lowest, highest) comparable text for one DA/TM/DT value."""
    if key.kind is Kind.DATE:
        _valid_date(key, text)
        return text, text
    if key.kind is Kind.TIME:
        m = _TM_RE.match(text)
        if m is None:
            raise key.fail(_FORMAT[Kind.TIME])
        return _pad_time(key, m.groups(), Kind.TIME)
    m = _DT_RE.match(text)
    if m is None or not _valid_offset(text):
        raise key.fail(_FORMAT[Kind.DATETIME])
    year, month, day, *clock = m.groups()[:7]   # the UTC offset is not compared
    lo_date = year + (month or "01") + (day or "01")
    hi_date = year + (month or "12") + (day or "31")
    if (month and not "01" <= month <= "12") or (day and not "01" <= day <= "31"):
        raise key.fail("not a calendar date")
    if clock[0] is None:
        return lo_date + "000000", hi_date + "235959.999999"
    lo_time, hi_time = _pad_time(key, tuple(clock), Kind.DATETIME)
    return lo_date + lo_time, hi_date + hi_time


def _pad_time(key: Key, parts: tuple[str | None, ...], kind: Kind) -> tuple[str, str]:
    hh, mm, ss, frac = parts
    if hh is None or int(hh) > 23 or mm and int(mm) > 59 or ss and int(ss) > 60:
        raise key.fail(_FORMAT[kind])
    lo = hh + (mm or "00") + (ss or "00") + (frac or "")
    hi = hh + (mm or "59") + (ss or "59") + (frac or ".999999")
    return lo, hi
