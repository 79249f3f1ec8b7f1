"""What every DICOMweb handler of one node shares: the node, its caches, who may ask."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import NotFound
from .instances import InstanceView, select
from .local_instances import local_instances
from .memory_cache import SeriesCache
from .metadata import MetadataCache
from .qido_local import PlannedQueries
from .remote_index import RemoteIndex
from .rendered_cache import RenderedCache
from .remote_series import RemoteSeriesSource
from .requester import Authenticate, Requester
from .searches import SearchBook


@dataclass
class DicomwebContext:
    node: Any
    authenticate: Authenticate
    prefix: str                                  # e.g. /dicomweb
    public_url: Callable[[], str]                # "" -> absolute-path URIs
    series_cache: SeriesCache = field(default_factory=SeriesCache)
    metadata: MetadataCache = field(default_factory=MetadataCache)
    index: RemoteIndex = field(default_factory=RemoteIndex)
    searches: SearchBook = field(default_factory=SearchBook)
    queries: PlannedQueries = field(default_factory=PlannedQueries)
    rendered: RenderedCache = field(default_factory=RenderedCache)
    sweeper: Any = None                          # MetadataSweeper, when kept on disk

    def __post_init__(self) -> None:
        self.remote = RemoteSeriesSource(self.node, self.series_cache, self.index)

    def base(self, federated: bool) -> str:
        """Where this DICOMweb root is, for URIs in answers (never from the Host header)."""
        root = self.prefix if federated else self.prefix + "/local"
        return self.public_url().rstrip("/") + root

    async def views(self, who: Requester, study_uid: str, series_uid: str | None = None,
                    sop_uid: str | None = None, *, federated: bool) -> list[InstanceView]:
        """Local instances, else (federated root) the remote series fetched into memory."""
        found = await local_instances(self.node, study_uid, series_uid, sop_uid)
        if found:
            return found
        if not federated:
            raise NotFound("no such study, series or instance at this node")
        return select(await self.remote.instances(who, study_uid, series_uid), sop_uid)

    def audit(self, action: str, who: Requester, outcome: str, **detail: Any) -> None:
        audit = getattr(self.node, "audit", None)
        if audit is not None:
            audit.append(action, who.handle[:64], outcome, **detail)
