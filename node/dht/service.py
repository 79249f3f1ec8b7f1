"""Answers incoming DHT requests (the server side of PING/STORE/FIND_NODE/FIND_VALUE).

Bodies are parsed strictly; a parse failure raises ``DecodeError`` which the protocol
counts and drops. A FIND_VALUE answer always fits one datagram (see ``ValuesResponse.fit``).
"""

from __future__ import annotations

from kademlia.node import Node

from node.dht.ids import Address, target
from node.dht.keeper import RecordKeeper
from node.dht.messages import (FindNodeRequest, FindValueRequest, Kind, NodesResponse,
                               StoreRequest, ValuesResponse, decode_empty, encode_store_ack)
from node.dht.protocol import Reply
from node.dht.routing import RoutingTable
from node.dht.wire import Datagram


class RequestService:
    def __init__(self, routing: RoutingTable, keeper: RecordKeeper, k: int) -> None:
        self.routing = routing
        self.keeper = keeper
        self.k = k

    async def handle(self, dgram: Datagram, address: Address) -> Reply | None:
        sender = Node(dgram.sender_id)
        if dgram.kind == Kind.PING:
            decode_empty(dgram.body)
            return Kind.PONG, b""
        if dgram.kind == Kind.STORE:
            request = StoreRequest.decode(dgram.body)
            return Kind.STORE_ACK, encode_store_ack(await self.keeper.accept(request.record))
        if dgram.kind == Kind.FIND_NODE:
            find = FindNodeRequest.decode(dgram.body)
            near = self.routing.find_neighbors(target(find.target), self.k, exclude=sender)
            return Kind.NODES, NodesResponse(near).encode()
        if dgram.kind == Kind.FIND_VALUE:
            ask = FindValueRequest.decode(dgram.body)
            near = (self.routing.find_neighbors(target(ask.key), self.k, exclude=sender)
                    if ask.want_contacts else [])
            records = await self.keeper.served(ask.key, ask.after)
            return Kind.VALUES, ValuesResponse.fit(ask.key, records, near).encode()
        return None
