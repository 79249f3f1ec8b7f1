"""HTTP side of fetch jobs: start one, follow its progress (server-sent events), take its file."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from aiohttp import web

from .audit import audit_web
from .jobs import Job, JobRefused, JobRunner
from .accounts import UserRefused
from .keys import ACCOUNTS_KEY, JOBS_KEY, NODE_KEY
from .principal import Principal, authenticate

CHUNK = 1 << 20


async def _me(request: web.Request) -> Principal:
    principal = await authenticate(request)
    assert principal is not None   # the gate lets no anonymous request reach here
    return principal


def _job(request: web.Request, principal: Principal) -> Job:
    job = request.config_dict[JOBS_KEY].get(request.match_info["job"], principal)
    if job is None:   # someone else's job is not there either
        raise web.HTTPNotFound(text="no such transfer")
    return job


async def start_job(request: web.Request) -> web.Response:
    principal = await _me(request)
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError
    except ValueError:
        return web.json_response({"error": "bad_request", "reason": "send a JSON object"},
                                 status=400)
    try:
        user = await request.config_dict[ACCOUNTS_KEY].current(
            principal, request.config_dict[NODE_KEY].audit)
        job = request.config_dict[JOBS_KEY].start(principal, user, body)
    except UserRefused as exc:
        return web.json_response({"error": "refused", "reason": exc.reason}, status=403)
    except JobRefused as exc:
        audit_web(request, "fetch", "refused", reason=exc.reason[:80])
        return web.json_response({"error": "refused", "reason": exc.reason}, status=exc.status)
    audit_web(request, "fetch", "started", job.id, kind=job.action, format=job.fmt,
              destination=job.destination)
    return web.json_response(job.public(), status=202)


def _event(kind: str, doc: dict[str, object]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(doc)}\n\n".encode()


async def job_events(request: web.Request) -> web.StreamResponse:
    principal = await _me(request)
    job = _job(request, principal)
    runner = request.config_dict[JOBS_KEY]
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-store"})
    await response.prepare(request)
    updates: AsyncIterator[Job] = runner.events(job)
    async for current in updates:
        if current.state == "running":
            await response.write(_event("progress", current.public()))
    if job.state == "done":
        doc = job.public()
        if job.file is not None:
            doc["download"] = f"/api/jobs/{job.id}/file"
        audit_web(request, "fetch", "ok", job.bundle_id, job=job.id, kind=job.action,
                  format=job.fmt, instances=job.instances)
        await response.write(_event("done", doc))
    else:
        audit_web(request, "fetch", "failed", job.bundle_id, job=job.id, kind=job.action)
        await response.write(_event("failed", {"reason": job.message}))
    return response


async def job_file(request: web.Request) -> web.StreamResponse:
    principal = await _me(request)
    job = _job(request, principal)
    if job.file is None or job.state != "done":
        raise web.HTTPNotFound(text="this transfer has no file (not finished, or already taken)")
    path, runner = job.file, request.config_dict[JOBS_KEY]
    kind = "application/zip" if job.fmt == "dicom" else "application/gzip"
    response = web.StreamResponse(headers={
        "Content-Type": kind, "Content-Length": str(path.stat().st_size),
        "Content-Disposition": f'attachment; filename="{job.filename}"',
        "Cache-Control": "no-store"})
    await response.prepare(request)
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                await response.write(chunk)
    finally:
        runner.take(job)
    audit_web(request, "download", "ok", job.bundle_id, job=job.id, format=job.fmt)
    await response.write_eof()
    return response


async def _jobs_context(app: web.Application) -> AsyncIterator[None]:
    runner = JobRunner(app[NODE_KEY])
    app[JOBS_KEY] = runner
    yield
    await runner.close()


def add_job_routes(app: web.Application) -> None:
    app.cleanup_ctx.append(_jobs_context)
    app.router.add_post("/api/jobs", start_job)
    app.router.add_get("/api/jobs/{job}/events", job_events)
    app.router.add_get("/api/jobs/{job}/file", job_file)
