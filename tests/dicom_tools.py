"""Helpers to drive a node from the outside: dcmtk tools and a raw pynetdicom SCU."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from io import BytesIO
from pathlib import Path
from typing import Sequence

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from node.testing.nodes import free_port  # noqa: F401  (re-exported for callers of this module)

DCMTK = Path("/usr/bin")


def dcmtk(tool: str, *args: str | int | Path, timeout: float = 120,
          check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool by absolute path (pynetdicom ships shadowing names)."""
    env = dict(os.environ, TCP_NODELAY="1")
    proc = subprocess.run([str(DCMTK / tool), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{tool} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def wait_listening(port: int, host: str = "127.0.0.1", timeout: float = 60) -> None:
    """Block until something accepts TCP connections on host:port (a started SCP)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing listens on {host}:{port} after {timeout} s")
            time.sleep(0.05)



def encode(ds: Dataset) -> bytes:
    """The dataset (no file meta) in Explicit VR Little Endian."""
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def send_raw_store(assoc, sop_class: str, sop_instance: str, payload: bytes,  # type: ignore[no-untyped-def]
                   msg_id: int = 1) -> Dataset:
    """Send arbitrary dataset bytes as a C-STORE: what a broken modality might send."""
    context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class)
    req = C_STORE()
    req.MessageID = msg_id
    req.Priority = 2
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_instance
    req.DataSet = BytesIO(payload)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        pass
    try:
        assoc.dimse.send_msg(req, context.context_id)
        _cx, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    out = Dataset()
    if rsp is None:
        return out
    out.Status = rsp.Status
    if getattr(rsp, "ErrorComment", None):
        out.ErrorComment = rsp.ErrorComment
    return out


def scu(ae_title: str = "PYNETDICOM", contexts: Sequence[tuple[str, Sequence[str]]] = ()) -> AE:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    for sop, syntaxes in contexts:
        ae.add_requested_context(sop, list(syntaxes))
    return ae
