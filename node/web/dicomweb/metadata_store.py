"""Instance metadata JSON kept on disk, made when an instance arrives, not when asked for.

WADO-RS series metadata is one DICOM JSON document per instance. Converting 300 headers
takes about half a second, so the documents are made at ingest (STOW-RS converts the
bytes it has just stored; instances that came by C-STORE are picked up by
``MetadataSweeper`` from the store's instance ids; a fronted PACS's instances are
converted when first asked for) and kept in a SQLite file of the node's data
directory, private to the node user like the DICOM files it describes. The first metadata request of a series is then as fast as later
ones, also after a restart.

Documents are stored with BulkDataURIs relative to the DICOMweb root
(``/studies/…/bulk/7FE00010``); ``with_base`` puts the configured base in front when
serving, so a changed port or public URL never leaves stale URIs. A document is keyed by
SOP Instance UID and the stored file's size: an instance deleted and stored again with
different bytes is converted again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from node.tasks import cancel_and_wait

from ..private_sqlite import open_private_sqlite
from .instances import InstanceView

log = logging.getLogger("medfed.dicomweb")

FILE = "dicomweb-metadata.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS instance_metadata (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    size INTEGER NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instance_metadata_series ON instance_metadata(series_uid);
CREATE TABLE IF NOT EXISTS sweep (
    name TEXT PRIMARY KEY,
    after_id INTEGER NOT NULL
);
"""
_URI_KEY = '"BulkDataURI":"'


def with_base(text: str, base: str) -> str:
    """A stored document (relative URIs) with ``base`` in front of every BulkDataURI.
    The key followed by a quote can only be a key: a quote inside a value is escaped."""
    if not base:
        return text
    escaped = base.replace("\\", "\\\\").replace('"', '\\"')
    return text.replace(_URI_KEY, _URI_KEY + escaped)


def view_size(view: InstanceView) -> int:
    if view.data is not None:
        return len(view.data)
    assert view.path is not None
    try:
        return view.path.stat().st_size
    except OSError:
        return -1


class MetadataFile:
    """The SQLite file of instance documents (blocking calls; safe from any thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = open_private_sqlite(path, SCHEMA)

    @classmethod
    def for_node(cls, node: Any) -> "MetadataFile | None":
        data_dir = getattr(getattr(node, "cfg", None), "data_dir", None)
        if data_dir is None:
            return None
        try:
            return cls(Path(data_dir) / "web" / FILE)
        except (OSError, sqlite3.Error) as exc:
            log.warning("series metadata is not kept on disk (%s); it is made when asked for",
                        type(exc).__name__)
            return None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def series(self, series_uids: Iterable[str]) -> dict[str, tuple[int, str]]:
        """sop_uid -> (size, document) for every stored instance of these series."""
        out: dict[str, tuple[int, str]] = {}
        with self._lock:
            for uid in set(series_uids):
                for sop, size, doc in self._conn.execute(
                        "SELECT sop_uid, size, doc FROM instance_metadata WHERE series_uid = ?",
                        (uid,)):
                    out[sop] = (int(size), str(doc))
        return out

    def put(self, items: Iterable[tuple[InstanceView, int, str]]) -> None:
        rows = [(v.sop_uid, v.series_uid, size, doc) for v, size, doc in items]
        if not rows:
            return
        with self._lock:
            with contextlib.suppress(sqlite3.Error):   # a full disk: made again when asked
                self._conn.execute("BEGIN")
                self._conn.executemany(
                    "INSERT OR REPLACE INTO instance_metadata(sop_uid, series_uid, size, doc) "
                    "VALUES (?,?,?,?)", rows)
                self._conn.execute("COMMIT")
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")

    def known(self, sop_uids: list[str]) -> set[str]:
        with self._lock:
            marks = ",".join("?" * len(sop_uids))
            return {str(r[0]) for r in self._conn.execute(
                f"SELECT sop_uid FROM instance_metadata WHERE sop_uid IN ({marks})", sop_uids)}

    def after_id(self, name: str) -> int:
        with self._lock:
            row = self._conn.execute("SELECT after_id FROM sweep WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def set_after_id(self, name: str, after: int) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO sweep(name, after_id) VALUES (?,?)",
                               (name, after))


_NEW_INSTANCES = """
SELECT i.id, st.study_uid, se.series_uid, i.sop_uid, i.sop_class_uid, i.transfer_syntax, i.path
FROM instances i JOIN series se ON se.id = i.series_id JOIN studies st ON st.id = se.study_id
WHERE i.id > ? AND i.path IS NOT NULL AND i.path NOT LIKE 'cache/%' ORDER BY i.id LIMIT ?"""


def pause_before_sweep(now: float, last_request: float, waited: float, *,
                       idle_s: float, max_defer_s: float) -> float:
    """Seconds to wait before a pass (0: sweep now). A pass converts about 0.55 ms of
    headers per instance holding the GIL that the DICOM associations need (a third of
    a C-STORE's own Python time per instance, issue 15): while DICOM requests or
    STOW-RS instances are arriving it waits until none came for ``idle_s``, but never
    more than ``max_defer_s`` in all, so the documents stay at most that far behind a
    steady stream."""
    if waited >= max_defer_s:
        return 0.0
    return max(0.0, min(idle_s - (now - last_request), max_defer_s - waited))


class MetadataSweeper:
    """Converts instances the store gained by any path other than STOW-RS (C-STORE,
    retrieves), in id order from where the last pass stopped, once a burst of DICOM
    traffic is over (``pause_before_sweep``). Files of a fronted PACS held in the
    scratch cache come and go: they are converted when asked for."""

    def __init__(self, node: Any, file: MetadataFile, build: Any, *, batch: int = 200,
                 poll_s: float = 2.0, idle_s: float = 1.0, max_defer_s: float = 30.0) -> None:
        self.node, self.file, self.build = node, file, build
        self.batch, self.poll_s = batch, poll_s
        self.idle_s, self.max_defer_s = idle_s, max_defer_s
        self._task: asyncio.Task[None] | None = None

    def _last_request(self) -> float:
        """When the node last received an instance or a DICOM request (monotonic)."""
        ingestor, dicom = getattr(self.node, "ingestor", None), getattr(self.node, "dicom", None)
        return max(getattr(ingestor, "last_received", 0.0), getattr(dicom, "last_request", 0.0))

    async def _after_dicom_burst(self) -> None:
        waited = 0.0
        while (pause := pause_before_sweep(time.monotonic(), self._last_request(), waited,
                                           idle_s=self.idle_s,
                                           max_defer_s=self.max_defer_s)) > 0:
            await asyncio.sleep(pause)
            waited += pause

    async def run_once(self) -> int:
        """One batch; returns how many instances were looked at."""
        after = await asyncio.to_thread(self.file.after_id, "instances")
        rows = await self.node.store.fetchall(_NEW_INSTANCES, (after, self.batch))
        if not rows:
            return 0
        views = [InstanceView(str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]),
                              path=self.node.files.path(str(r[6]))) for r in rows]

        def work() -> None:
            have = self.file.known([v.sop_uid for v in views])
            todo = [v for v in views if v.sop_uid not in have]
            self.file.put(self.build(todo))
            self.file.set_after_id("instances", int(rows[-1][0]))
        await asyncio.to_thread(work)
        return len(rows)

    async def _loop(self) -> None:
        while True:
            try:
                await self._after_dicom_burst()
                while await self.run_once() >= self.batch:
                    await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # keep sweeping; the next pass retries
                log.warning("series metadata pass failed: %s", type(exc).__name__)
            await asyncio.sleep(self.poll_s)

    def start(self) -> None:
        if self._task is None and getattr(self.node, "store", None) is not None:
            self._task = asyncio.create_task(self._loop(), name="medfed-dicomweb-metadata")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
