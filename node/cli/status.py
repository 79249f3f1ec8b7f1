"""The federation part of `medfed status`: live from the running node, else from its files."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.table import Table

from .common import console
from ..config.model import NodeConfig
from ..control.federation_status import (age, protection_status, publish_backlog,
                                         roster_status)


LIVE_STATUS_TIMEOUT_S = 30.0


def live_status(cfg: NodeConfig) -> dict[str, Any] | None:
    """The running node's status document (control socket), None when it is not running."""
    from ..control import control_socket_path
    from ..control.client import ControlClient, ControlError

    # one call; a busy node gets time to answer (a node that is not running refuses at once)
    client = ControlClient(control_socket_path(cfg.data_dir), timeout_s=LIVE_STATUS_TIMEOUT_S)
    try:
        return client.status()
    except ControlError:
        return None


def federation_status(cfg: NodeConfig, live: dict[str, Any] | None
                      ) -> tuple[dict[str, Any] | None, bool]:
    """(federation section, live?) — live from the running node's ``live`` document,
    else from the node's files."""
    if live is not None:
        return live.get("federation"), True
    return _offline(cfg), False


def receivers_row(live: dict[str, Any] | None) -> str | None:
    """`medfed status`'s line for the DICOM receiver processes (running node only)."""
    rec = ((live or {}).get("dicom") or {}).get("receivers")
    if not rec:
        return None
    pids = ", ".join(str(p) for p in rec.get("pids", []))
    return (f"{rec['ready']} of {rec['configured']} ready (pid {pids or '-'}), "
            f"{rec['associations']} association(s) open")


def _offline(cfg: NodeConfig) -> dict[str, Any] | None:
    from ..federation_wiring import membership_paths
    from ..net.membership import AdmissionError
    from ..net.pki import cert_from_pem
    from ..net.roster import RosterError
    from ..net.rosterbook import RosterBook
    from ..store.db import MetadataStore

    paths = membership_paths(cfg.data_dir)
    if not paths.roster.exists():
        return None
    try:
        book = RosterBook.load(paths.roster, cert_from_pem(paths.ca_cert.read_bytes()))
    except (OSError, RosterError, AdmissionError, ValueError):
        return None
    node_id = (cfg.key_dir / "node_id").read_text().strip() if (cfg.key_dir / "node_id").exists() else ""

    async def backlog() -> dict[str, Any]:
        async with MetadataStore(cfg.db_path) as store:
            return await publish_backlog(store)

    roster = book.current
    return {"roster": roster_status(roster, node_id, None),
            "protection": protection_status(cfg, len(roster.active())),
            "publish": asyncio.run(backlog())}


def print_federation(doc: dict[str, Any] | None, live: bool) -> None:
    if doc is None:
        console.print("federation: not joined ('medfed join' to take part in a federation)")
        return
    roster, protection, publish = doc["roster"], doc["protection"], doc["publish"]
    table = Table(title=f"federation {roster['federation']} "
                        f"({'live from the running node' if live else 'node not running'})",
                  show_header=False)
    state = ("[red]REVOKED: other members refuse this node; ask the operator[/red]"
             if roster["revoked_here"] else "member")
    table.add_row("this node", state)
    table.add_row("roster version", f"v{roster['version']}"
                  + (f" (adopted {age(roster['adopted_at'])})" if roster["adopted_at"] else ""))
    table.add_row("active members", str(roster["active"]))
    protect = (f"{protection['k']}-of-{protection['n']} key shares, "
               f"{protection['replicas']} replica(s)")
    table.add_row("key protection", protect)
    if protection["warning"]:
        table.add_row("[yellow]warning[/yellow]", f"[yellow]{protection['warning']}[/yellow]")
    table.add_row("publish backlog", f"{publish['pending']} series waiting")
    for item in publish.get("reasons", []):
        table.add_row("[red]last error[/red]", f"{item['jobs']} series: {item['reason']}")
    health = doc.get("bundles")
    if health:
        table.add_row("own bundles", f"{health['published']} published, "
                                     f"{health['unpublished']} not yet")
        table.add_row("shares / replicas below target",
                      f"{health['shares_below_target']} / {health['replicas_below_target']}"
                      + (f" ({health['holders_gone']} with holders gone)"
                         if health["holders_gone"] else ""))
    console.print(table)
    members = Table(title="members")
    for col in ("name", "status", "peer address", "last contact", "roster", "DHT",
                "last error"):
        members.add_column(col)
    for m in roster["members"]:
        status = "this node" if m["self"] else m["status"]
        in_dht = m.get("in_dht")
        members.add_row(m["name"], status, m["peer_address"],
                        "-" if m["self"] or not live else age(m["last_contact"]),
                        f"v{m['their_version']}" if m["their_version"] else "-",
                        "-" if m["self"] or in_dht is None else ("yes" if in_dht else "no"),
                        m["last_error"][:80])
    console.print(members)
