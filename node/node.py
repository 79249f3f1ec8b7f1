"""One hospital node: composes the parts and starts and stops them in order.

Nothing here is global, so the simulator can run many nodes in one process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from .audit import AuditLog
from .config import NodeConfig
from .identity import NodeIdentity
from .logsetup import guard_phi_loggers
from .pacs.ingest import Ingestor
from .pacs.scp import DicomService
from .query.local import LocalBackend
from .store.db import MetadataStore
from .store.files import ObjectFiles

log = logging.getLogger("medfed.node")


@dataclass
class NodePorts:
    dicom: int = 0


class Node:
    def __init__(self, cfg: NodeConfig, identity: NodeIdentity | None = None) -> None:
        self.cfg = cfg
        self.identity = identity or NodeIdentity.load_or_create(cfg.key_dir)
        self.store = MetadataStore(cfg.db_path, durability=cfg.durability)
        self.files = ObjectFiles(cfg.objects_dir)
        self.audit: AuditLog | None = None
        self.dicom: DicomService | None = None
        self.ports = NodePorts()
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        guard_phi_loggers()
        loop = asyncio.get_running_loop()
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        swept = self.files.sweep_temp_files()
        if swept:
            log.info("removed %d partial files left by an earlier crash", swept)
        await self.store.open()
        self.audit = AuditLog(self.cfg.audit_path, self.identity)
        ingestor = Ingestor(self.store, self.files, loop, series_idle_s=self.cfg.series_idle_s)
        backend = LocalBackend(self.store, self.files, self.cfg.dicom.ae_title)
        self.dicom = DicomService(self.cfg.dicom, ingestor=ingestor, backend=backend,
                                  audit=self.audit, loop=loop)
        self.ports.dicom = await asyncio.to_thread(self.dicom.start)
        self.audit.append("node.start", self.identity.node_id_hex[:16], "ok",
                          dicom_port=self.ports.dicom)

    async def stop(self) -> None:
        if self.dicom is not None:
            await asyncio.to_thread(self.dicom.stop)
            self.dicom = None
        if self.audit is not None:
            self.audit.append("node.stop", self.identity.node_id_hex[:16], "ok")
            self.audit.close()
            self.audit = None
        await self.store.close()

    async def __aenter__(self) -> "Node":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        await self._stopping.wait()
