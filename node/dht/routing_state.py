"""The routing table on disk: JSON, written atomically, validated on load.

Upstream saved state with pickle, which executes code from the file on load; here the
file is plain JSON (``{"version", "node_id", "contacts": [{id, verify_key, host,
port}]}``) and every contact is re-checked (id == hash(key), IP literal, port range)
before it is trusted. A restarted node can rejoin from its last known peers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from node.dht.ids import Contact

STATE_VERSION = 1


class RoutingStateError(Exception):
    """The saved routing table cannot be used."""


def dump_contacts(node_id: bytes, contacts: list[Contact]) -> str:
    return json.dumps({
        "version": STATE_VERSION,
        "node_id": node_id.hex(),
        "contacts": [{"id": c.id.hex(), "verify_key": c.verify_key.hex(),
                      "host": c.ip, "port": c.port} for c in contacts],
    }, indent=1)


def _contact(entry: object) -> Contact:
    if not isinstance(entry, dict):
        raise ValueError("contact is not an object")
    contact = Contact(bytes.fromhex(str(entry["verify_key"])), str(entry["host"]),
                      int(entry["port"]))
    if contact.id.hex() != entry["id"]:
        raise ValueError("contact id is not the hash of its verify key")
    return contact


def load_contacts(text: str, node_id: bytes, where: str = "routing table") -> list[Contact]:
    hint = f"Delete {where} to start with an empty table (peers are re-learnt on bootstrap)."
    try:
        data = json.loads(text)
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported version {data.get('version')!r}")
        if data.get("node_id") != node_id.hex():
            raise RoutingStateError(
                f"{where} belongs to another node id ({str(data.get('node_id'))[:16]}…); "
                f"was the node key replaced? {hint}")
        return [_contact(entry) for entry in data["contacts"]]
    except RoutingStateError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RoutingStateError(f"{where} is corrupt ({exc}). {hint}") from exc


def save_routing_file(path: Path, node_id: bytes, contacts: list[Contact]) -> None:
    """Atomic: a crash leaves either the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(dump_contacts(node_id, contacts))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise RoutingStateError(f"cannot write DHT routing table {path}: {exc.strerror}. "
                                "Check the data folder is writable.") from exc


def load_routing_file(path: Path, node_id: bytes) -> list[Contact]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise RoutingStateError(f"cannot read DHT routing table {path}: {exc}") from exc
    return load_contacts(text, node_id, where=str(path))
