"""A C-FIND identifier → one SQL statement and the list of return keys (PS3.4 C.4.1, C.6).

Pure: no I/O. Choices where the standard leaves room (documented for PACS teams):
- Upward relational: a query may match and return keys of any level above its own
  (e.g. PatientName at SERIES level) and may omit the unique keys above its level.
- Downward strict: a key below the query level that carries a value is refused
  (0xA900); the same key sent empty (return key only) is returned empty.
- A lone ``*`` is universal matching for every VR (many viewers send it for UIDs too).
- Unknown and sequence keys are not matched and come back empty; private keys are
  dropped (a private element without its creator would be meaningless).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from .qr_attributes import (ANY_LEVEL, ATTR_BY_KEYWORD, ATTR_BY_TAG, FROM, ORDER_BY,
                            UNIQUE_KEY, Attr, InfoModel, Kind, QueryLevel)
from .identifier import (QR_LEVEL, Identifier, charset_of, element_terms, element_vr,
                         key_tags, level_text)
from ..store.dialect import SQLITE, Dialect
from .value_match import IDENTIFIER_MISMATCH, Clause, Key, MatchError, key_clause

DEFAULT_LIMIT = 10000


@dataclass(frozen=True)
class ReturnKey:
    tag: int
    vr: str
    column: int | None   # index into the result row; None = always empty
    kind: Kind | None = None


@dataclass(frozen=True)
class SqlQuery:
    level: QueryLevel
    sql: str
    params: tuple[Any, ...]
    keys: tuple[ReturnKey, ...]
    charset: str | list[str] | None
    limit: int


def model_of(model: InfoModel | str) -> InfoModel:
    try:
        return InfoModel(model)
    except ValueError:
        raise MatchError("unknown query/retrieve information model",
                         IDENTIFIER_MISMATCH) from None


def level_of(identifier: Identifier, model: InfoModel) -> QueryLevel:
    text = level_text(identifier)
    if not text:
        raise MatchError("QueryRetrieveLevel (0008,0052) is missing", IDENTIFIER_MISMATCH,
                         QR_LEVEL)
    try:
        level = QueryLevel(text)
    except ValueError:
        raise MatchError("QueryRetrieveLevel must be PATIENT, STUDY, SERIES or IMAGE",
                         IDENTIFIER_MISMATCH, QR_LEVEL) from None
    if level not in model.levels():
        raise MatchError(f"level {level} does not exist in the Study Root model",
                         IDENTIFIER_MISMATCH, QR_LEVEL)
    return level


def attr_clause(attr: Attr, level: QueryLevel, terms: list[str],
                dialect: Dialect = SQLITE,
                terms_of: Callable[[str], list[str]] = lambda keyword: []) -> Clause | None:
    """Match condition for one known key (None = universal). ``terms_of(keyword)``: the
    identifier's values of another key (a set match repeats the ones its table copies)."""
    sm = attr.set_match
    if sm is None:
        return key_clause(Key(attr.expr_at(level), attr.kind, attr.keyword, attr.tag), terms,
                          dialect)
    inner = key_clause(Key(sm.member, sm.kind, attr.keyword, attr.tag), terms, dialect)
    if inner is None:
        return None
    sql, params = inner[0], list(inner[1])
    for keyword, column in sm.copies:
        other = ATTR_BY_KEYWORD[keyword]
        copied = key_clause(Key(column, other.kind, other.keyword, other.tag),
                            terms_of(keyword), dialect)
        if copied is not None:
            sql = f"({sql}) AND {copied[0]}"
            params.extend(copied[1])
    return sm.condition.format(sql), params


class _Builder:
    """Collects SELECT columns, WHERE clauses and return keys for one query."""

    def __init__(self, level: QueryLevel) -> None:
        self.level = level
        self.columns: list[str] = []
        self.where: list[str] = []
        self.params: list[Any] = []
        self.keys: list[ReturnKey] = []
        self.tags: set[int] = set()

    def add_key(self, attr: Attr | None, tag: int, vr: str) -> None:
        if tag in self.tags:
            return
        self.tags.add(tag)
        if attr is None:
            self.keys.append(ReturnKey(tag, vr, None))
            return
        self.columns.append(attr.expr_at(self.level))
        self.keys.append(ReturnKey(tag, vr, len(self.columns) - 1, attr.kind))

    def add_clause(self, clause: Clause | None) -> None:
        if clause is not None:
            self.where.append(clause[0])
            self.params.extend(clause[1])

    def sql(self, limit: int) -> tuple[str, tuple[Any, ...]]:
        where = " AND ".join(self.where) or "1 = 1"
        cols = ", ".join(self.columns) or "1"
        sql = (f"SELECT {cols} FROM {FROM[self.level]} WHERE {where} "
               f"ORDER BY {ORDER_BY[self.level]} LIMIT ?")
        return sql, (*self.params, limit + 1)


# Prepared statements by identifier shape: the same keys, each empty or one plain
# text/name value (no wildcard, range or list), give the same SQL with those values as
# its parameters. Other identifiers are translated each time.
_PLAIN_KINDS = (Kind.TEXT, Kind.PN)
_SHAPES: dict[tuple[Any, ...], SqlQuery] = {}
_SHAPES_MAX = 512


def _shape(identifier: Identifier, model: InfoModel, level: QueryLevel, limit: int,
           dialect: Dialect) -> tuple[tuple[Any, ...], list[str]] | None:
    """(shape key, plain values in key order), or None when not cacheable."""
    shape: list[Any] = [model, level, limit, dialect]
    values: list[str] = []
    for tag in key_tags(identifier):
        attr = ATTR_BY_TAG.get(tag)
        vr = element_vr(identifier, tag)
        terms = [t for t in element_terms(identifier, tag) if t] if attr is not None else []
        if not terms or vr == "SQ":
            shape.append((tag, vr, 0))
            continue
        kind = attr.set_match.kind if attr and attr.set_match else attr.kind if attr else None
        term = terms[0]
        if len(terms) > 1 or kind not in _PLAIN_KINDS or "*" in term or "?" in term:
            return None
        shape.append((tag, vr, 1))
        values.append(term)
    charset = charset_of(identifier)
    shape.append(tuple(charset) if isinstance(charset, list) else charset)
    return tuple(shape), values


def build_query(identifier: Identifier, model: InfoModel | str, *,
                limit: int = DEFAULT_LIMIT, dialect: Dialect = SQLITE) -> SqlQuery:
    """Translate a C-FIND identifier. Raises MatchError for a malformed identifier.
    The SQL fetches ``limit + 1`` rows so the caller can tell that it truncated."""
    if limit < 1:
        raise ValueError("the C-FIND result limit must be at least 1")
    model = model_of(model)
    level = level_of(identifier, model)
    found = _shape(identifier, model, level, limit, dialect)
    try:
        if found is not None:
            hash(found[0])
    except TypeError:  # an unhashable dialect: no cache
        found = None
    if found is None:
        return translate(identifier, model, level, limit, dialect)
    key, values = found
    cached = _SHAPES.get(key)
    if cached is not None:
        return SqlQuery(level, cached.sql, (*values, limit + 1), cached.keys, cached.charset,
                        limit)
    query = translate(identifier, model, level, limit, dialect)
    if query.params == (*values, limit + 1):
        if len(_SHAPES) >= _SHAPES_MAX:  # many shapes seen: start over (bounded memory)
            _SHAPES.clear()
        _SHAPES[key] = query
    return query


def translate(identifier: Identifier, model: InfoModel, level: QueryLevel, limit: int,
              dialect: Dialect = SQLITE) -> SqlQuery:
    """:func:`build_query` without the statement cache."""
    b = _Builder(level)
    for tag in key_tags(identifier):
        attr = ATTR_BY_TAG.get(tag)
        vr = element_vr(identifier, tag)
        if attr is None or vr == "SQ":
            b.add_key(None, tag, vr)
            continue
        terms = element_terms(identifier, tag)
        if model.level_of(attr).depth > level.depth and tag not in ANY_LEVEL:
            if any(terms):
                raise MatchError(f"{attr.keyword} is below the {level} level",
                                 IDENTIFIER_MISMATCH, tag)
            b.add_key(None, tag, vr)
            continue
        b.add_clause(attr_clause(attr, level, terms, dialect, lambda keyword: element_terms(
            identifier, ATTR_BY_KEYWORD[keyword].tag)))
        b.add_key(attr, tag, vr)
    for lv in model.levels():
        if lv.depth <= level.depth:
            unique = UNIQUE_KEY[lv]
            b.add_key(unique, unique.tag, dictionary_VR(unique.tag))
    sql, params = b.sql(limit)
    return SqlQuery(level, sql, params, tuple(b.keys), charset_of(identifier), limit)


# -- retrieve (C-GET / C-MOVE) -------------------------------------------------------
RETRIEVE_COLUMNS = ("i.sop_uid, i.sop_class_uid, i.transfer_syntax, i.path, i.size, "
                    "se.series_uid, st.study_uid, i.source")


def build_retrieve_query(identifier: Dataset, model: InfoModel | str,
                         dialect: Dialect = SQLITE) -> tuple[str, tuple[Any, ...]]:
    """The instances a C-GET/C-MOVE identifier names, by the unique keys of its level and
    the levels above (PS3.4 C.4.2.2.1). Other keys are ignored. The level's own key
    must hold a value: an empty one would silently mean 'everything'."""
    model = model_of(model)
    level = level_of(identifier, model)
    where: list[str] = []
    params: list[Any] = []
    for lv in model.levels():
        if lv.depth > level.depth:
            break
        attr = UNIQUE_KEY[lv]
        terms = [t for t in element_terms(identifier, attr.tag) if t]
        if lv is level and not terms:
            raise MatchError(f"{attr.keyword} is required for a {level} level retrieve",
                             IDENTIFIER_MISMATCH, attr.tag)
        if attr.kind is not Kind.UID and (len(terms) > 1 or any("*" in t or "?" in t
                                                                 for t in terms)):
            raise MatchError(f"{attr.keyword} must be a single value in a retrieve",
                             IDENTIFIER_MISMATCH, attr.tag)
        clause = key_clause(Key(attr.expr, attr.kind, attr.keyword, attr.tag), terms, dialect)
        if clause is None and terms:
            raise MatchError(f"{attr.keyword}: wildcards are not allowed in a retrieve",
                             IDENTIFIER_MISMATCH, attr.tag)
        if clause is not None:
            where.append(clause[0])
            params.extend(clause[1])
    sql = (f"SELECT {RETRIEVE_COLUMNS} FROM {FROM[QueryLevel.IMAGE]} "
           f"WHERE {' AND '.join(where)} ORDER BY st.id, se.series_number, se.id, "
           "i.instance_number, i.id")
    return sql, tuple(params)

