"""Fetch jobs a user starts from a search result: download (DICOM zip or NIfTI) or move to
the hospital PACS (``[dicom] home_pacs``, C-MOVE sub-operations from this node's AE). Each job runs as a task of the web app; its owner (and only its owner)
follows its progress and takes its file. Temporary files live under the node's cache
folder and go when the file is taken, when the job expires, or when the node stops.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.sharing.retrieve import FetchError, FetchRefused, Retriever, local_assertion, parse_series_ref
from node.sharing.sinks import SinkError, sink_for
from node.sharing.volume import VolumeError
from node.users import UserRefused

from .dicom_send import SendError, move_files
from .principal import Principal

if TYPE_CHECKING:
    from node.node import Node
    from node.users import User

log = logging.getLogger("medfed.web.jobs")
ACTIONS = ("download", "send")
FORMATS = ("dicom", "nifti")
KEEP_S = 600.0           # a finished job's file waits this long to be taken
MAX_JOBS_PER_USER = 8
EXPECTED = (FetchError, SinkError, VolumeError, SendError, OSError, ValueError)


class JobRefused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Job:
    id: str
    owner: str
    action: str
    fmt: str
    destination: str
    total: int
    state: str = "running"          # running | done | failed
    message: str = ""
    instances: int = 0
    bytes: int = 0
    file: Path | None = None
    filename: str = ""
    bundle_id: str = ""
    finished_at: float = 0.0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def progress(self, received: int, instances: int) -> None:
        self.bytes, self.instances = received, instances
        self.changed.set()

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "action": self.action, "format": self.fmt,
                "instances": self.instances, "total": self.total, "bytes": self.bytes,
                "message": self.message}


class JobRunner:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.root = node.cfg.cache_dir / "web-jobs"
        self._jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        shutil.rmtree(self.root, ignore_errors=True)
        self._jobs.clear()

    def get(self, job_id: str, principal: Principal) -> Job | None:
        job = self._jobs.get(job_id)
        return job if job is not None and job.owner == principal.handle else None

    def start(self, principal: Principal, user: "User", body: dict[str, Any]) -> Job:
        self._expire()
        action = str(body.get("action", ""))
        fmt = str(body.get("format", "") or "dicom")
        destination = str(body.get("destination", ""))
        purpose = str(body.get("purpose", "") or (user.purposes[:1] or ("",))[0])
        if action not in ACTIONS:
            raise JobRefused(400, f"action must be one of {', '.join(ACTIONS)}")
        if action == "download" and fmt not in FORMATS:
            raise JobRefused(400, f"format must be one of {', '.join(FORMATS)}")
        if not user.may_state(purpose):
            raise JobRefused(403, "your role does not allow that purpose of use")
        dest = None
        if action == "send":
            home = self.node.cfg.dicom.home_pacs
            if not home:
                raise JobRefused(400, "this node has no home PACS to move series to "
                                      "([dicom] home_pacs names one of [dicom.destinations])")
            destination = destination or home
            if destination != home:
                raise JobRefused(400, f"series are moved to the home PACS {home} only")
            dest = self.node.cfg.dicom.destination(home)
        try:
            ref = parse_series_ref(str(body.get("ref", ""))[:200])
            total = int(body.get("total") or 0)
        except (FetchError, ValueError) as exc:
            raise JobRefused(400, str(exc)) from None
        mine = [j for j in self._jobs.values() if j.owner == principal.handle and j.state == "running"]
        if len(mine) >= MAX_JOBS_PER_USER:
            raise JobRefused(429, f"you already have {len(mine)} transfers running; wait for one")
        try:
            assertion = local_assertion(self.node, user, purpose)
        except UserRefused as exc:
            raise JobRefused(403, exc.reason) from None
        job = Job(secrets.token_urlsafe(16), principal.handle, action, fmt, destination, total)
        self._jobs[job.id] = job
        task = asyncio.get_running_loop().create_task(self._run(job, assertion, ref, dest))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job: Job, assertion: Any, ref: Any, dest: Any) -> None:
        folder = self.root / job.id
        try:
            fmt = "dicom" if job.action == "send" else job.fmt
            result = await Retriever(self.node).fetch(
                ref, assertion, lambda bundle_id: sink_for(folder, bundle_id, fmt),
                progress=job.progress)
            job.bundle_id = result.bundle_id
            if job.action == "send":
                sent = await self._move(job, list(result.outputs), dest)
                shutil.rmtree(folder, ignore_errors=True)
                job.message = f"moved {sent} images to {dest.ae_title}"
            elif job.fmt == "dicom":
                job.file = await asyncio.to_thread(_zip, list(result.outputs), folder / "series.zip")
                job.filename = f"series-{result.bundle_id[:12]}.zip"
                job.message = f"{result.instances} images ready"
            else:
                job.file = Path(result.outputs[0])
                job.filename = f"series-{result.bundle_id[:12]}.nii.gz"
                job.message = f"volume of {result.instances} slices ready"
            job.instances = result.instances
            job.state = "done"
        except asyncio.CancelledError:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        except FetchRefused:
            job.state, job.message = "failed", "the owning site's policy does not release this series to you"
        except EXPECTED as exc:
            job.state, job.message = "failed", str(exc)[:300]
        except Exception as exc:   # never a traceback for the user; the log has the type
            log.error("web job failed unexpectedly (%s)", type(exc).__name__)
            job.state, job.message = "failed", f"internal error ({type(exc).__name__}); see the node log"
        finally:
            if job.state != "done":
                shutil.rmtree(folder, ignore_errors=True)
            job.finished_at = time.monotonic()
            job.changed.set()

    async def _move(self, job: Job, files: list[Path], dest: Any) -> int:
        """C-MOVE sub-operations to the home PACS, audited as the SCP audits a C-MOVE."""
        cfg = self.node.cfg.dicom
        audit = getattr(self.node, "audit", None)
        try:
            sent = await asyncio.to_thread(move_files, files, dest, cfg.ae_title, cfg.ae_title,
                                           timeout_s=cfg.dimse_timeout_s)
        except SendError as exc:
            if audit is not None:
                audit.append("dicom.move", job.owner[:64], "failed", job.bundle_id,
                             destination=dest.ae_title, reason=str(exc)[:160], via="web")
            raise
        if audit is not None:
            audit.append("dicom.move", job.owner[:64], "ok", job.bundle_id,
                         destination=dest.ae_title, instances=sent, via="web")
        return sent

    async def events(self, job: Job) -> AsyncIterator[Job]:
        """The job each time it changes (at most every 0.2 s), until it ends."""
        while True:
            job.changed.clear()
            yield job
            if job.state != "running":
                return
            await job.changed.wait()
            await asyncio.sleep(0.2)   # progress comes per chunk: no need to send each one

    def take(self, job: Job) -> None:
        """The file was handed out: forget it."""
        if job.file is not None:
            shutil.rmtree(self.root / job.id, ignore_errors=True)
            job.file = None

    def _expire(self) -> None:
        now = time.monotonic()
        for job in list(self._jobs.values()):
            if job.state != "running" and now - job.finished_at > KEEP_S:
                self.take(job)
                del self._jobs[job.id]


def _zip(files: list[Path], target: Path) -> Path:
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for n, path in enumerate(files, 1):
            archive.write(path, f"IM{n:05d}.dcm")
            path.unlink()
    return target
