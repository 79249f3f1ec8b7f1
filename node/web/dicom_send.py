"""Move fetched instances to the hospital PACS as a C-MOVE of this node does.

The web app's "fetch to home PACS" ends here: the series was fetched for the user
(their assertion, each owner's policy, de-identified as released) and is handed over
exactly as the node's DICOM service answers a C-MOVE to ``[dicom] home_pacs``: one
sub-association from this node's AE title to that destination, each instance a
C-STORE sub-operation carrying the Move Originator AE title and Message ID (PS3.4
C.4.2.3), stored bytes sent as they are when the PACS accepts their transfer syntax.
The code is the SCP's own (``node.pacs.retrieve_scp.Sender``); nothing is re-encoded
here. Blocking: the web app calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pydicom.filereader import read_file_meta_info

from node.config.model import Destination
from node.pacs.association import Aborted, request_association
from node.pacs.backend import RetrieveItem
from node.pacs.retrieve_scp import Sender, SubOperationFailed, move_contexts

OK_STATUSES = (0x0000, 0xB000, 0xB006, 0xB007)
MOVE_MESSAGE_ID = 1


class SendError(Exception):
    """The destination could not be reached or refused the images (the message says which)."""


def _item(path: Path) -> RetrieveItem:
    meta = read_file_meta_info(path)
    return RetrieveItem(path, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))


def move_files(files: Sequence[Path], dest: Destination, node_ae: str, originator_ae: str, *,
               timeout_s: float = 30.0, progress: Callable[[int], None] = lambda n: None) -> int:
    """The C-MOVE sub-operations for ``files`` to ``dest``; returns how many it stored."""
    try:
        items = [_item(p) for p in files]
    except (OSError, ValueError) as exc:
        raise SendError(f"a fetched instance cannot be read ({type(exc).__name__})") from None
    try:
        sub = request_association(dest.host, dest.port, calling_ae=node_ae,
                                  called_ae=dest.ae_title, contexts=move_contexts(items),
                                  timeout=timeout_s)
    except ConnectionError as exc:
        raise SendError(f"{dest.ae_title} at {dest.host}:{dest.port}: {exc}") from None
    sent = failed = 0
    try:
        sender = Sender(sub, list(sub.contexts.values()),
                        move_originator=(originator_ae, MOVE_MESSAGE_ID))
        for item in items:
            try:
                code = sender.send(item)
            except SubOperationFailed:
                code = -1
            if code in OK_STATUSES:
                sent += 1
            else:
                failed += 1
            progress(sent)
    except Aborted:
        raise SendError(f"{dest.ae_title} ended the association after {sent} of "
                        f"{len(items)} images") from None
    finally:
        sub.release()
    if failed:
        raise SendError(f"{dest.ae_title} refused {failed} of {len(items)} images")
    return sent
