"""The real UIDs of this node's own studies behind the keyed UIDs its federated answer used.

The federated answer names every study by its keyed UID (the same at every site). The
viewer opens this node's own studies through DICOMweb by their real UIDs, so the search
page turns the home site's keyed study UIDs back into real ones, here, at home (the
mapping never leaves the node). It reads only the studies of the answer's patients
(by their stored pseudonym); rows whose pseudonym is not stored yet are found by one
bounded pass over the studies table.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from node.deid.actions import keyed_uid

MAX_LOOKUP = 500
MAX_SCAN = 200_000


async def real_study_uids(node: Any, rows: Iterable[dict[str, Any]]) -> dict[str, str]:
    """keyed study UID -> real study UID for the home site's answer rows."""
    membership = node.membership
    if membership is None or membership.secrets is None:
        return {}
    key = membership.secrets.uid_key
    wanted = {str(r["study_uid"]) for r in rows if "study_uid" in r and "patient" in r}
    patients = sorted({str(r["patient"]) for r in rows if "patient" in r})[:MAX_LOOKUP]
    found: dict[str, str] = {}
    if wanted and patients:
        marks = ",".join("?" * len(patients))
        for (uid,) in await node.store.fetchall(
                "SELECT s.study_uid FROM studies s JOIN patients p ON p.id = s.patient_id "
                f"WHERE p.pseudonym IN ({marks})", patients):
            keyed = keyed_uid(str(uid), key)
            if keyed in wanted:
                found[keyed] = str(uid)
    if len(found) < len(wanted):   # pseudonyms not stored yet: look through the studies
        scanned = 0
        async with contextlib.aclosing(node.store.stream("SELECT study_uid FROM studies")) as rows_:
            async for (uid,) in rows_:
                keyed = keyed_uid(str(uid), key)
                if keyed in wanted:
                    found[keyed] = str(uid)
                scanned += 1
                if len(found) == len(wanted) or scanned >= MAX_SCAN:
                    break
    return found
