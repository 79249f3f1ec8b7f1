"""The parts a production node runs beside its DICOM service, in start order.

Kept in one place so `medfed run`, the demo and the simulator build the same node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .control.server import ControlService
from .federation_wiring import membership_paths
from .service import NodeService
from .index.publisher import IndexPublisher
from .keyshare.service import KeyShareService
from .query.dht_planner import DhtPlanner
from .query.dicom_federation import FederationDicomBackend
from .query.service import FederatedQueryService
from .replica.service import ReplicaService
from .sharing.publisher import PublisherService
from .web.service import WebService
from .similar.service import SimilarityService

if TYPE_CHECKING:
    from .config.model import NodeConfig


def default_services(cfg: "NodeConfig") -> list[NodeService]:
    """The DHT index publisher, query serving and fan-out (DHT-narrowed), the
    federation C-FIND entry point, key custody, replicas and the series publisher — for a node that has joined a
    federation. A stand-alone hospital node (no `medfed join` yet) runs none of them."""
    if not membership_paths(cfg.data_dir).roster.exists():
        return [WebService(), ControlService()]
    # The control socket comes last: clients connect only once everything runs.
    return federated_services() + [WebService(), ControlService()]


def federated_services() -> list[NodeService]:
    return [
        IndexPublisher(),
        FederatedQueryService(planner_for=DhtPlanner),
        FederationDicomBackend(),
        KeyShareService(),
        ReplicaService(),
        PublisherService(),
        SimilarityService(),
    ]
