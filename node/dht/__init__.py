"""Kademlia DHT for the federation index: signed multi-publisher records over signed UDP.

Built on kademlia 2.2.3's node/heap/bucket structures; its single-value storage,
inexact neighbour search, 160-bit ids, unauthenticated 8 KB datagrams, fixed timeout
and pickled state are replaced (see each module's docstring).
"""

from node.dht.config import DHTConfig, DHTConfigError
from node.dht.index_keys import IndexKeyError, IndexKeys
from node.dht.link import LinkModel, UniformLink
from node.dht.membership import Membership, StaticMembership
from node.dht.records import PayloadKind, Record
from node.dht.server import DHTServer, DHTStateError, GetResult, PublishResult

__all__ = ["DHTConfig", "DHTConfigError", "DHTServer", "DHTStateError", "GetResult",
           "IndexKeyError", "IndexKeys", "LinkModel", "Membership", "PayloadKind",
           "PublishResult", "Record", "StaticMembership", "UniformLink"]
