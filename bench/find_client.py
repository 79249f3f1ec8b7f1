"""A lean C-FIND SCU for the scale benchmark, and dcmtk findscu on one association.

Why not only pynetdicom: measured at 10^5 instances, pynetdicom's SCU spent ~3 ms per
response identifier of its own (one reactor step, event hooks and a pydicom decode per
PDU, all in the benchmark's process and under its GIL), so a lookup's p50 grew with its
match count for reasons on the client's side. This SCU speaks the same protocol
through the node's own PDU/DIMSE code (``node.pacs.association``): it sends the request
as a real SCU would, reads every response, checks its status and decodes each
identifier with pydicom. ``findscu_per_query`` times dcmtk's findscu (a separate C++
process) over one association: (N+1 queries - 1 query) / N, so the spawn and the
association set-up cancel out.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Iterator

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import (PatientRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelFind)

from node.pacs import codec, dimse
from node.pacs.association import Association, request_association

_PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True)
class Status:
    Status: int


class LeanFindSCU:
    """``send_c_find(ds, model)`` yields (status, identifier) like pynetdicom's."""

    def __init__(self, host: str, port: int, *, calling_ae: str, called_ae: str,
                 timeout: float = 600) -> None:
        contexts = [build_context(PatientRootQueryRetrieveInformationModelFind,
                                  [ExplicitVRLittleEndian]),
                    build_context(StudyRootQueryRetrieveInformationModelFind,
                                  [ExplicitVRLittleEndian])]
        self.assoc: Association = request_association(
            host, port, calling_ae=calling_ae, called_ae=called_ae, contexts=contexts,
            timeout=timeout)
        self._context = {str(cx.abstract_syntax): cid for cid, cx in self.assoc.contexts.items()}
        self._message_id = 0

    def send_c_find(self, ds: Dataset, model: Any) -> Iterator[tuple[Status, Dataset | None]]:
        cid = self._context[str(model)]
        self._message_id = (self._message_id + 1) & 0xFFFF
        command = dimse.encode(AffectedSOPClassUID=str(model), CommandField=dimse.C_FIND_RQ,
                               MessageID=self._message_id, Priority=0,
                               CommandDataSetType=dimse.HAS_DATASET)
        self.assoc.send(cid, command, codec.encode(ds, ExplicitVRLittleEndian))
        while True:
            msg = self.assoc.receive()
            code = int(msg.command.get("Status", 0xC000))
            ident = None
            if msg.dataset is not None:
                ident = codec.decode(msg.dataset.value(), ExplicitVRLittleEndian)  # type: ignore[attr-defined]
            yield Status(code), ident
            if code not in _PENDING:
                return

    def release(self) -> None:
        self.assoc.release()


def findscu_per_query(port: int, keys: dict[str, str], *, level: str = "STUDY",
                      repeat: int = 40, called_ae: str = "MEDFED") -> float:
    """Seconds per query of dcmtk findscu on one open association (Study Root); each
    run twice, the faster kept (the spawn time varies on a busy machine)."""
    args = ["findscu", "-S", "-aet", "FINDSCU", "-aec", called_ae,
            "-k", f"QueryRetrieveLevel={level}"]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}" if v else k]
    args += ["127.0.0.1", str(port)]
    env = dict(os.environ, TCP_NODELAY="1")   # Debian's dcmtk leaves Nagle on otherwise

    def run(n: int) -> float:
        t0 = time.perf_counter()
        subprocess.run([*args, "--repeat", str(n)], env=env, check=True, timeout=600,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0
    many = min(run(repeat + 1) for _ in range(2))
    one = min(run(1) for _ in range(2))
    return max(0.0, (many - one) / repeat)
