"""One fetch the control API runs for a local user: the same Retriever call as the CLI's
in-process path, with progress kept where the streaming handler can read it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from node.control.wire import BadRequest, FetchRequest
from node.sharing.retrieve import FetchError, FetchResult, Retriever, local_assertion
from node.sharing.sinks import SinkError, sink_for
from node.sharing.volume import VolumeError

if TYPE_CHECKING:
    from node.node import Node
    from node.users import User

# What a failed fetch reports to its user word for word (as `medfed fetch` always did).
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (FetchError, SinkError, VolumeError, ValueError,
                                                    OSError)


@dataclass
class FetchProgress:
    latest: tuple[int, int] = (0, 0)    # (bytes received, instances decoded)

    def __call__(self, received: int, instances: int) -> None:
        self.latest = (received, instances)


def start_fetch(node: "Node", req: FetchRequest,
                user: "User") -> "tuple[asyncio.Task[FetchResult], FetchProgress]":
    """Check what can be checked before answering, then run the fetch as a task."""
    from node.users import UserRefused

    if req.out.exists() and not req.out.is_dir():
        raise BadRequest(400, "bad_out", f"{req.out} exists and is not a folder")
    try:
        assertion = local_assertion(node, user, req.actor.purpose)
        retriever = Retriever(node, deadline_s=req.deadline_s)
    except UserRefused as exc:
        raise BadRequest(403, exc.code, exc.reason) from None
    except ValueError as exc:
        raise BadRequest(400, "bad_actor", str(exc)) from None
    except FetchError as exc:
        raise BadRequest(409, "not_member", str(exc)) from None
    progress = FetchProgress()
    task = asyncio.get_running_loop().create_task(retriever.fetch(
        req.ref, assertion, lambda bundle_id: sink_for(req.out, bundle_id, req.fmt),
        identified=req.identified, progress=progress))
    return task, progress
