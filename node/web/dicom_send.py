"""Send fetched instances to a configured C-MOVE destination (the hospital PACS) by C-STORE.

Blocking (pynetdicom): the web app calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pydicom
from pynetdicom import AE, StoragePresentationContexts

from node.config.model import Destination


class SendError(Exception):
    """The destination could not be reached or refused the images (the message says which)."""


def send_files(files: Sequence[Path], dest: Destination, calling_ae: str, *,
               timeout_s: float = 30.0, progress: Callable[[int], None] = lambda n: None) -> int:
    """C-STORE every file on one association; returns how many the destination accepted."""
    ae = AE(ae_title=calling_ae)
    ae.requested_contexts = StoragePresentationContexts
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise SendError(f"{dest.ae_title} at {dest.host}:{dest.port} did not accept an association")
    sent = failed = 0
    try:
        for path in files:
            status = assoc.send_c_store(pydicom.dcmread(path))
            if status is not None and int(getattr(status, "Status", 0xC000)) in (0, 0xB000,
                                                                                  0xB007, 0xB006):
                sent += 1
            else:
                failed += 1
            progress(sent)
    finally:
        assoc.release()
    if failed:
        raise SendError(f"{dest.ae_title} refused {failed} of {len(files)} images")
    return sent
