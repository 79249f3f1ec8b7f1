"""WADO-RS (PS3.18 10.4): instances as stored, metadata, frames, bulk data, rendered.

A series goes out as a stream of the stored Part-10 bytes (each file handed to the
kernel with sendfile, the body's length known up front), never decoded and re-encoded. Frames and bulk data are cut
from the stored pixel data; rendering reads and decodes one frame. The same handlers serve local
instances and other sites' instances held in the memory cache.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .accept import choose_bytes, choose_instances, choose_rendered
from .context import DicomwebContext
from .errors import NotFound
from .instances import InstanceView, describe
from .multipart import closing, content_type, multipart_body, new_boundary, part_head
from .pixels import PIXEL_DATA, bulk_of, frames_of, parse
from .rendered import render_instance, render_options
from .requester import Requester
from .uids import BadUid, checked_uid

DICOM = "application/dicom"


def path_uids(request: web.Request) -> tuple[str, str | None, str | None]:
    info = request.match_info
    study = checked_uid(info["study"], "StudyInstanceUID")
    series = checked_uid(info["series"], "SeriesInstanceUID") if "series" in info else None
    sop = checked_uid(info["instance"], "SOPInstanceUID") if "instance" in info else None
    return study, series, sop


def _sizes(views: list[InstanceView]) -> list[int]:
    return [v.path.stat().st_size if v.path is not None else len(v.data or b"") for v in views]


async def _send_file(request: web.Request, response: web.StreamResponse, view: InstanceView,
                     size: int) -> None:
    """One stored file onto the connection with sendfile(2) (no copy through Python);
    asyncio reads it in a worker thread where the transport cannot (TLS)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client went away")
    assert view.path is not None
    with open(view.path, "rb") as fh:
        if fh.seek(0, 2) != size:
            raise ConnectionResetError("a stored file changed while it was sent")
        await asyncio.get_running_loop().sendfile(transport, fh, 0, size)


async def stream_instances(request: web.Request, views: list[InstanceView]) -> web.StreamResponse:
    """The instances as one multipart/related body of known length: part heads written,
    local files sent by the kernel, remote ones from memory."""
    boundary = new_boundary()
    sizes = await asyncio.to_thread(_sizes, views)
    heads = [part_head(boundary, DICOM, first=i == 0) for i in range(len(views))]
    tail = closing(boundary)
    response = web.StreamResponse(headers={"Content-Type": content_type(DICOM, boundary)})
    response.content_length = sum(sizes) + sum(map(len, heads)) + len(tail)
    await response.prepare(request)
    for view, head, size in zip(views, heads, sizes):
        await response.write(head)
        if view.data is not None:
            await response.write(view.data)
        else:
            await _send_file(request, response, view, size)
    await response.write(tail)
    await response.write_eof()
    return response


async def retrieve(ctx: DicomwebContext, request: web.Request, who: Requester,
                   federated: bool) -> web.StreamResponse:
    study, series, sop = path_uids(request)
    views = await ctx.views(who, study, series, sop, federated=federated)
    mode = choose_instances(request.headers.get("Accept"), {v.transfer_syntax for v in views},
                            single=len(views) == 1)
    ctx.audit("dicomweb.retrieve", who, "ok", **describe(views))
    if mode == "single":
        return web.Response(body=await views[0].read(), content_type=DICOM)
    return await stream_instances(request, views)


async def metadata(ctx: DicomwebContext, request: web.Request, who: Requester,
                   federated: bool) -> web.Response:
    study, series, sop = path_uids(request)
    views = await ctx.views(who, study, series, sop, federated=federated)
    body = await ctx.metadata.series_json(views, ctx.base(federated))
    ctx.audit("dicomweb.metadata", who, "ok", **describe(views))
    return web.Response(body=body, content_type="application/dicom+json")


async def _one(ctx: DicomwebContext, request: web.Request, who: Requester,
               federated: bool) -> tuple[InstanceView, Any]:
    study, series, sop = path_uids(request)
    views = await ctx.views(who, study, series, sop, federated=federated)
    view = views[0]
    data = await view.read()
    ds = await asyncio.to_thread(parse, data)
    return view, ds


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError:
        raise BadUid("frame numbers must be 1-based whole numbers separated by commas") from None
    if not numbers or len(numbers) > 10000:
        raise BadUid("name 1 to 10000 frame numbers")
    return numbers


def _bytes_response(request: web.Request, parts: list[bytes], transfer_syntax: str) -> web.Response:
    mode, part_type = choose_bytes(request.headers.get("Accept"), transfer_syntax)
    if mode == "single":
        return web.Response(body=b"".join(parts), content_type=part_type)
    boundary = new_boundary()
    ts = transfer_syntax if part_type == "application/octet-stream" else None
    return web.Response(body=multipart_body(parts, part_type, boundary),
                        headers={"Content-Type": content_type(part_type, boundary, ts)})


async def frames(ctx: DicomwebContext, request: web.Request, who: Requester,
                 federated: bool) -> web.Response:
    numbers = _frame_numbers(request.match_info["frames"])
    view, ds = await _one(ctx, request, who, federated)
    parts = frames_of(ds, numbers)
    ctx.audit("dicomweb.frames", who, "ok", frames=len(numbers), remote=view.remote)
    return _bytes_response(request, parts, view.transfer_syntax)


async def bulk(ctx: DicomwebContext, request: web.Request, who: Requester,
               federated: bool) -> web.Response:
    view, ds = await _one(ctx, request, who, federated)
    tag = request.match_info["tag"].upper()
    value = bulk_of(ds, tag)
    ctx.audit("dicomweb.bulk", who, "ok", tag=tag, remote=view.remote)
    ts = view.transfer_syntax if int(tag, 16) == PIXEL_DATA else "1.2.840.10008.1.2.1"
    return _bytes_response(request, [value], ts)


async def rendered(ctx: DicomwebContext, request: web.Request, who: Requester,
                   federated: bool) -> web.Response:
    media_type = choose_rendered(request.headers.get("Accept"))
    opts = render_options(dict(request.query), media_type)
    numbers = _frame_numbers(request.match_info.get("frames", "1"))
    if len(numbers) != 1:
        raise NotFound("render one frame per request")
    study, series, sop = path_uids(request)
    view = (await ctx.views(who, study, series, sop, federated=federated))[0]
    image = await ctx.rendered.render(view, numbers[0], opts, render_instance)
    ctx.audit("dicomweb.rendered", who, "ok", remote=view.remote)
    return web.Response(body=image, content_type=media_type)
