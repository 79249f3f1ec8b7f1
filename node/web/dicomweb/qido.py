"""QIDO-RS (PS3.18 10.6): this node's matches and, at the federated root, every site's.

The local part is answered first (about a millisecond), then the federation; the answer is local rows first, then
the other sites' rows, each tagged with its site (RetrieveAETitle, InstitutionName).
Sites that did not answer by the deadline are left out and named in the search record
(``X-Medfed-Search`` header -> ``GET {root}/searches/{id}``), so partial results are
visible as partial.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydicom.dataset import Dataset

from node.pacs.qr_attributes import QueryLevel

from .context import DicomwebContext
from .dicom_json import flat_json, json_response
from .errors import NotFound
from .qido_federated import federated_qido
from .qido_local import local_qido
from .qido_query import QidoRequest
from .requester import Requester
from .uids import checked_uid


def _path_filters(request: web.Request) -> dict[str, str]:
    info = request.match_info
    out: dict[str, str] = {}
    if "study" in info:
        out["StudyInstanceUID"] = checked_uid(info["study"], "StudyInstanceUID")
    if "series" in info:
        out["SeriesInstanceUID"] = checked_uid(info["series"], "SeriesInstanceUID")
    return out


async def search(ctx: DicomwebContext, request: web.Request, who: Requester,
                 federated: bool, level: QueryLevel) -> web.Response:
    q, sql = ctx.queries.plan(level, list(request.query.items()), _path_filters(request),
                              ctx.node.store.dialect)
    local = await local_qido(ctx.node, q, sql)
    remote, record = [], None
    if federated and level is QueryLevel.IMAGE and not local and "StudyInstanceUID" in q.filters:
        remote = await remote_instances(ctx, who, q)
    elif federated:
        # After the local part, not beside it: the federated query registers an SQLite
        # function on the same connection, which SQLite refuses while a statement runs.
        remote, record = await federated_qido(ctx.node, q, who, ctx.index)
    items = (local + remote)[:q.limit]
    headers: dict[str, str] = {}
    if record is not None:
        headers["X-Medfed-Search"] = ctx.searches.add(record)
        headers["X-Medfed-Sites"] = record.summary()
    ctx.audit("dicomweb.search", who, "partial" if record is not None and record.partial else "ok",
              level=level.value, local=len(local), remote=len(remote))
    return json_response(items, headers=headers)


INSTANCE_KEYS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID",
                 "InstanceNumber", "Rows", "Columns", "NumberOfFrames")


async def remote_instances(ctx: DicomwebContext, who: Requester, q: QidoRequest
                           ) -> list[dict[str, Any]]:
    """The instances of another site's study or series: listed from its series, fetched
    into the memory cache (as WADO-RS would); none when no site holds it."""
    study, series = q.filters["StudyInstanceUID"], q.filters.get("SeriesInstanceUID")
    if "\\" in study or (series and "\\" in series):
        return []
    try:
        entries = await ctx.remote.series_of(who, study, series)
        views = await ctx.remote.instances(who, study, series)
    except NotFound:
        return []
    sites = {e.target.keyed_series_uid: e for e in entries}
    site = next(iter(sites.values()))
    out: list[dict[str, Any]] = []
    for view in views[q.offset:q.offset + q.limit]:
        ds = Dataset()
        header = view.header
        for keyword in INSTANCE_KEYS:
            value = header.get(keyword) if header is not None else None
            if value is not None:
                setattr(ds, keyword, value)
        ds.RetrieveAETitle = site.site_ae
        ds.InstitutionName = site.site_name[:64]
        out.append(flat_json(ds))
    return out


async def search_status(ctx: DicomwebContext, request: web.Request, who: Requester,
                        federated: bool) -> web.Response:
    record = ctx.searches.get(request.match_info["search"], who.handle)
    if record is None:
        raise NotFound("no such search for this user (searches are kept for a while only)")
    return web.json_response(record.to_json())
