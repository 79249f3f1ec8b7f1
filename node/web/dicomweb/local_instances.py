"""The local instances a WADO-RS URL names, from the store (one indexed query)."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from node.pacs.find import select_instances
from node.pacs.matching import MatchError

from .instances import InstanceView


async def local_instances(node: Any, study_uid: str, series_uid: str | None = None,
                          sop_uid: str | None = None) -> list[InstanceView]:
    """Instances with a local file, in series / instance-number order (may be empty)."""
    ident = Dataset()
    ident.QueryRetrieveLevel = "IMAGE" if sop_uid else "SERIES" if series_uid else "STUDY"
    ident.StudyInstanceUID = study_uid
    if series_uid:
        ident.SeriesInstanceUID = series_uid
    if sop_uid:
        ident.SOPInstanceUID = sop_uid
    try:
        rows = await select_instances(node.store, ident, "STUDY_ROOT")
    except MatchError:
        return []
    return [InstanceView(r.study_uid, r.series_uid, r.sop_uid, r.sop_class_uid,
                         r.transfer_syntax, path=node.files.path(r.path))
            for r in rows if r.path is not None]
