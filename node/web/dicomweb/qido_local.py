"""QIDO-RS answered from this node's own store, through the node's one C-FIND matcher.

A viewer repeats the same few queries (a worklist refreshes; OHIF asks a study's series
again), so the parsed request and its SQL are kept per query string (bounded): the
store is then one statement away.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement

from node.pacs.matching import MatchError, SqlQuery, build_query
from node.pacs.qr_attributes import InfoModel, QueryLevel
from node.pacs.response import response_dataset
from node.store.dialect import SQLITE, Dialect

from .dicom_json import flat_json
from .qido_query import QidoError, QidoRequest, parse_qido

INSTITUTION = 0x00080080

QueryKey = tuple[QueryLevel, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


class PlannedQueries:
    """(QIDO request, SQL) per query string; the oldest is forgotten first."""

    def __init__(self, capacity: int = 512) -> None:
        self.capacity = capacity
        self._plans: OrderedDict[QueryKey, tuple[QidoRequest, SqlQuery]] = OrderedDict()

    def plan(self, level: QueryLevel, params: list[tuple[str, str]],
             path_uids: dict[str, str], dialect: Dialect = SQLITE) -> tuple[QidoRequest, SqlQuery]:
        key: QueryKey = (level, tuple(params), tuple(sorted(path_uids.items())))
        found = self._plans.get(key)
        if found is not None:
            self._plans.move_to_end(key)
            return found
        q = parse_qido(level, params, path_uids=path_uids)
        try:
            sql = build_query(q.identifier, InfoModel.STUDY_ROOT, limit=q.offset + q.limit,
                              dialect=dialect)
        except MatchError as exc:
            raise QidoError(exc.reason) from None
        self._plans[key] = (q, sql)
        while len(self._plans) > self.capacity:
            self._plans.popitem(last=False)
        return q, sql


async def local_qido(node: Any, q: QidoRequest, sql: SqlQuery) -> list[dict[str, Any]]:
    """This node's matches, in the level's natural order, tagged with this site."""
    rows = await node.store.fetchall(sql.sql, sql.params)   # one pooled reader
    site = DataElement(INSTITUTION, "LO", node.cfg.name[:64], validation_mode=config.IGNORE)
    out: list[dict[str, Any]] = []
    for row in rows[q.offset:q.offset + q.limit]:
        ds = response_dataset(sql, row, node.cfg.dicom.ae_title)
        ds[INSTITUTION] = site
        out.append(flat_json(ds))
    return out
