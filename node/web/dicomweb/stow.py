"""STOW-RS (PS3.18 10.5): instances into this node, validated and stored as C-STORE does.

Each part goes through the node's one ``Ingestor`` (the C-STORE path): the same
validation, the atomic file write and the metadata commit before the answer. The answer
lists stored and failed instances (ReferencedSOPSequence / FailedSOPSequence with a
FailureReason, PS3.18 Table 10.5.3-1): 200 when all were stored, 202 when some failed,
409 when none was stored; a body that is not multipart/related of application/dicom is
refused with 415/400 before anything is stored. Every request is audited.
"""

from __future__ import annotations

import asyncio
import io
import json
import warnings
from typing import Any

import pydicom
from aiohttp import web
from pydicom.errors import InvalidDicomError

from node.pacs import status
from node.pacs.ingest import Ingestor

from .context import DicomwebContext
from .dicom_json import DICOM_JSON
from .instances import InstanceView
from .metadata import stored_docs
from .metadata_store import MetadataFile
from .multipart import MultipartError, read_parts
from .requester import Requester
from .uids import checked_uid

MAX_BODY = 4 << 30
PARALLEL_INGESTS = 4             # as several C-STORE associations would
CANNOT_UNDERSTAND = 0xC000        # PS3.18 STOW failure: cannot understand
STUDY_MISMATCH = 0xA900           # instance not of the study named in the URL


def _ingestor(ctx: DicomwebContext) -> Ingestor:
    node = ctx.node
    ingestor = getattr(node, "ingestor", None)
    if ingestor is None:
        raise web.HTTPServiceUnavailable(text="this node does not accept instances now")
    return ingestor


def _failed(sop_class: str, sop_uid: str, reason: int) -> dict[str, Any]:
    item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [reason]}}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [sop_uid]}
    return item


def part10(data: bytes) -> bytes:
    """The part as a Part-10 file: some clients (pydicom's dcmwrite of a dataset read
    without one) send the file meta group without the 128-byte preamble and DICM."""
    if data[128:132] != b"DICM" and data[:2] == b"\x02\x00":
        return bytes(128) + b"DICM" + data
    return data


def store_one(ingestor: Ingestor, data: bytes, study_uid: str | None, base: str,
              keep: MetadataFile | None = None) -> tuple[bool, dict[str, Any], str]:
    """Ingest one Part-10 instance: (stored, response item, PHI-free reason). A newly
    stored instance's metadata document goes into ``keep`` at once (WADO-RS metadata
    is then ready before the first request)."""
    data = part10(data)
    try:
        with warnings.catch_warnings():   # pydicom warnings can quote values (PHI)
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data))
        meta = ds.file_meta
        sop_class = str(meta.MediaStorageSOPClassUID)
        sop_uid = str(meta.MediaStorageSOPInstanceUID)
        transfer_syntax = str(meta.TransferSyntaxUID)
    except (InvalidDicomError, AttributeError, ValueError, EOFError, OSError, KeyError,
            TypeError):
        return False, _failed("", "", CANNOT_UNDERSTAND), "not a DICOM Part-10 instance"
    if study_uid is not None and str(ds.get("StudyInstanceUID", "")) != study_uid:
        return False, _failed(sop_class, sop_uid, STUDY_MISMATCH), \
            "instance is not of the study named in the URL"
    outcome = ingestor.ingest(ds, data, context_sop_class=sop_class,
                              affected_sop_instance=sop_uid, transfer_syntax=transfer_syntax)
    if outcome.status != status.SUCCESS:
        return False, _failed(sop_class, sop_uid, outcome.status), outcome.reason
    series = str(ds.get("SeriesInstanceUID", ""))
    study = str(ds.get("StudyInstanceUID", ""))
    if keep is not None and not outcome.duplicate:
        keep.put(stored_docs([InstanceView(study, series, sop_uid, sop_class, transfer_syntax,
                                           data=data)]))
    return True, {
        "00081150": {"vr": "UI", "Value": [sop_class]},
        "00081155": {"vr": "UI", "Value": [sop_uid]},
        "00081190": {"vr": "UR", "Value": [
            f"{base}/studies/{study}/series/{series}/instances/{sop_uid}"]},
    }, ""


def _media_type(request: web.Request) -> tuple[str, str]:
    media, *params = [p.strip() for p in request.headers.get("Content-Type", "").split(";")]
    part_type = ""
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "type":
            part_type = value.strip().strip('"').lower()
    return media.lower(), part_type


async def store(ctx: DicomwebContext, request: web.Request, who: Requester,
                federated: bool) -> web.Response:
    study_uid = (checked_uid(request.match_info["study"], "StudyInstanceUID")
                 if "study" in request.match_info else None)
    media, part_type = _media_type(request)
    if media != "multipart/related" or part_type not in ("", "application/dicom"):
        ctx.audit("dicomweb.store", who, "refused", reason="unsupported media type")
        raise web.HTTPUnsupportedMediaType(
            text='STOW-RS takes multipart/related; type="application/dicom" (Part-10 '
                 "instances); JSON/XML metadata with bulk data is not accepted here")
    ingestor = _ingestor(ctx)
    base = ctx.base(True)
    gate = asyncio.Semaphore(PARALLEL_INGESTS)
    pending: list[asyncio.Future[tuple[bool, dict[str, Any], str]]] = []

    async def ingest(data: bytes) -> tuple[bool, dict[str, Any], str]:
        try:
            return await asyncio.to_thread(store_one, ingestor, data, study_uid, base,
                                           ctx.metadata.file)
        finally:
            gate.release()

    try:
        async for part in read_parts(request, max_total=MAX_BODY):
            ptype = part.content_type.split(";")[0].strip().lower()
            if ptype not in ("application/dicom", ""):
                done: asyncio.Future[tuple[bool, dict[str, Any], str]] = \
                    asyncio.get_running_loop().create_future()
                done.set_result((False, _failed("", "", CANNOT_UNDERSTAND),
                                 f"part of type {ptype[:40]} is not application/dicom"))
                pending.append(done)
                continue
            await gate.acquire()      # the next part is read while earlier ones are stored
            pending.append(asyncio.ensure_future(ingest(part.data)))
    except MultipartError as exc:
        results = await asyncio.gather(*pending)
        stored_before = sum(1 for ok, _item, _reason in results if ok)
        ctx.audit("dicomweb.store", who, "refused", reason=str(exc)[:120], stored=stored_before)
        raise web.HTTPBadRequest(text=f"{exc} ({stored_before} instance(s) stored before it)")
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    reasons: set[str] = set()
    for ok, item, reason in await asyncio.gather(*pending):
        (stored if ok else failed).append(item)
        if reason:
            reasons.add(reason)
    if not stored and not failed:
        ctx.audit("dicomweb.store", who, "refused", reason="no instances")
        raise web.HTTPBadRequest(text="the request holds no instances")
    answer: dict[str, Any] = {"00081190": {"vr": "UR", "Value": [base + "/studies"]}}
    if stored:
        answer["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        answer["00081198"] = {"vr": "SQ", "Value": failed}
    code = 200 if not failed else 202 if stored else 409
    outcome = "ok" if code == 200 else "partial" if code == 202 else "failed"
    ctx.audit("dicomweb.store", who, outcome, stored=len(stored), failed=len(failed),
              reason="; ".join(sorted(reasons))[:200])
    headers = {"Warning": "299 medfed \"" + "; ".join(sorted(reasons))[:200] + "\""} \
        if reasons else None
    return web.Response(body=json.dumps(answer).encode(), status=code, content_type=DICOM_JSON,
                        headers=headers)
