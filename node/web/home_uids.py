"""The real UIDs of this node's own studies behind the keyed UIDs its federated answer used.

The federated answer names every study by its keyed UID (the same at every site). The
viewer opens this node's own studies through DICOMweb by their real UIDs, so the search
page turns the home site's keyed study UIDs back into real ones, here, at home (the
mapping never leaves the node). One pass over the local studies table in SQLite.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from node.deid.actions import keyed_uid

FUNCTION = "medfed_web_keyed_uid"
MAX_LOOKUP = 500


async def real_study_uids(node: Any, keyed: Iterable[str]) -> dict[str, str]:
    """keyed study UID -> real study UID, for the given keyed UIDs of local studies."""
    wanted = sorted(set(keyed))[:MAX_LOOKUP]
    membership = node.membership
    if not wanted or membership is None or membership.secrets is None:
        return {}
    key = membership.secrets.uid_key
    await node.store.db.create_function(FUNCTION, 1, lambda uid: keyed_uid(uid or "", key),
                                        deterministic=True)
    marks = ",".join("?" * len(wanted))
    rows = await node.store.fetchall(
        f"SELECT {FUNCTION}(study_uid), study_uid FROM studies "
        f"WHERE {FUNCTION}(study_uid) IN ({marks})", wanted)
    return {str(k): str(real) for k, real in rows}
