"""`medfed query`: one federated query from the command line, at the home node's config.

Runs in-process with the node's identity and membership from its data folder. The home
site's own SQLite answers locally (audited in its log); when the node daemon is running
and holds the audit log, the home site is asked over its own peer API instead, so every
answer is still audited by the site that served it.
"""

from __future__ import annotations

import asyncio
import json
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from .common import ConfigOpt, console, err, load_or_exit
from ..config.model import NodeConfig
from .users import cli_user

if TYPE_CHECKING:   # the query parts are imported when a query runs: other commands start fast
    from ..query.model import FederatedQuery
    from ..query.service import FederatedAnswer
    from ..users import User


async def run_query(cfg: NodeConfig, q: FederatedQuery, *, user: User, purpose: str,
                    broadcast: bool, deadline_s: float | None) -> FederatedAnswer:
    """Open the home site's parts, run the query, close them again."""
    from ..audit.errors import AuditLockedError
    from ..audit.log import AuditLog
    from ..federation_wiring import load_node_membership
    from ..identity import NodeIdentity
    from ..net.client import PeerClient
    from ..query.service import FederatedQueryError, FederatedQueryService, HomeSite
    from ..store.db import MetadataStore

    identity = NodeIdentity.load(cfg.key_dir)
    membership = load_node_membership(identity, cfg.data_dir)
    if membership is None:
        raise FederatedQueryError(f"node in {cfg.data_dir} has not joined a federation; "
                                  "run 'medfed join' first")
    store = await MetadataStore.for_config(cfg).open()
    audit: AuditLog | None
    try:
        audit = AuditLog(cfg.audit_path, identity)
    except AuditLockedError:
        audit = None  # the daemon runs: it answers for the home site over the peer API
    # a process that asks once and exits: its new connections carry the request in the
    # handshake (node.net.firstflight), 2 round trips to each site's answer instead of 3
    client = PeerClient(identity, membership.client_tls(), roster=membership.roster,
                        first_flight=True)
    service = FederatedQueryService(serve=False, local_answers=audit is not None)
    try:
        await service.start(HomeSite(cfg, identity, store, audit, membership, client))
        return await service.query(q, user=user, purpose=purpose, broadcast=broadcast,
                                   deadline_s=deadline_s)
    finally:
        await service.stop()
        await client.close()
        if audit is not None:
            audit.close()
        await store.close()


def _print_tables(answer: "FederatedAnswer") -> None:
    from rich.table import Table

    patients = Table(title=f"{len(answer.patients)} patient(s)")
    for col in ("patient", "sites", "records", "modalities", "when"):
        patients.add_column(col)
    for p in answer.patients:
        mods = sorted({m for r in p.records for m in r.get("modalities", [r.get("modality")]) if m})
        when = sorted({str(r.get("study_date") or r.get("study_month") or "") for r in p.records})
        patients.add_row(p.pseudonym, ", ".join(p.sites), str(len(p.records)), ", ".join(mods),
                         ", ".join(w for w in when if w))
    console.print(patients)
    _print_series_refs(answer)
    sites = Table(title=f"sites ({answer.plan.mode}, {answer.elapsed_ms:.0f} ms)")
    for col in ("site", "status", "level", "rows", "latency ms", "reason"):
        sites.add_column(col)
    for s in answer.sites:
        sites.add_row(s.site, s.status, s.level, str(s.rows), f"{s.latency_ms:.0f}", s.reason)
    console.print(sites)
    console.print("counts: " + ", ".join(f"{k} {c.display()}" for k, c in answer.counts.items()))


def query(config: Path = ConfigOpt,
          patient_id: Optional[str] = typer.Option(None, "--patient-id",
                                                   help="PatientID at this site (sent as pseudonym)."),
          issuer: Optional[str] = typer.Option(None, "--issuer", help="IssuerOfPatientID."),
          pseudonym: Optional[str] = typer.Option(None, "--pseudonym", help="Federation pseudonym."),
          name: Optional[str] = typer.Option(None, "--name", help="Patient name, * ? wildcards "
                                                                  "(identified answers only)."),
          modality: Optional[str] = typer.Option(None, "--modality"),
          body_part: Optional[str] = typer.Option(None, "--body-part"),
          date_from: Optional[str] = typer.Option(None, "--from", help="Study date YYYY-MM-DD."),
          date_to: Optional[str] = typer.Option(None, "--to", help="Study date YYYY-MM-DD."),
          level: str = typer.Option("study", "--level", help="patient, study or series."),
          limit: int = typer.Option(1000, "--limit"),
          broadcast: bool = typer.Option(False, "--all", help="Ask every member (no narrowing)."),
          as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
          user: Optional[str] = typer.Option(None, "--user", help="Your user at this node "
                                             "(default: the one 'medfed user login' saved)."),
          purpose: Optional[str] = typer.Option(None, "--purpose", help="treatment, research or "
                                                "operations (default: your first allowed)."),
          password_stdin: bool = typer.Option(False, "--password-stdin",
                                              help="Read your password from stdin."),
          deadline: Optional[float] = typer.Option(None, "--deadline",
                                                   help="Seconds (default: [federation])")) -> None:
    """Ask every site once; each answers under its own policy."""
    from ..audit.errors import AuditError
    from ..identity import IdentityError
    from ..net.admission import AdmissionError
    from ..query.model import FederatedQuery, QueryError
    from ..query.service import FederatedQueryError
    from ..store.db import StoreError

    cfg = load_or_exit(config)
    who, _token = cli_user(cfg, user, password_stdin=password_stdin)
    try:
        q = FederatedQuery.from_json({
            "patient_id": patient_id, "issuer": issuer, "patient_pseudonym": pseudonym,
            "patient_name": name, "modality": modality and modality.upper(),
            "body_part": body_part and body_part.upper(), "study_date_from": date_from,
            "study_date_to": date_to, "level": level, "limit": limit})
        answer = asyncio.run(run_query(cfg, q, user=who, purpose=purpose or who.purposes[0],
                                       broadcast=broadcast, deadline_s=deadline))
    except QueryError as exc:
        err.print(f"[red]invalid query:[/red] {exc}")
        raise typer.Exit(2)
    except (FederatedQueryError, IdentityError, AdmissionError, AuditError, StoreError,
            OSError) as exc:
        err.print(f"[red]cannot query:[/red] {exc}")
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(answer.to_json(), default=_json_default))
    else:
        _print_tables(answer)


def _json_default(value: object) -> str:
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def _print_series_refs(answer: "FederatedAnswer") -> None:
    """Series-level answers: the reference `medfed fetch` takes (OWNER_NODE_ID:SERIES_UID)."""
    from rich.table import Table

    owners = {s.site: s.node_id for s in answer.sites}
    rows = [(site, r) for p in answer.patients for r in p.records if r.get("series_uid")
            for site in r.get("sites", [r.get("site")]) if site in owners]
    if not rows:
        return
    table = Table(title="series (medfed fetch REF --out FOLDER)")
    for col in ("ref", "site", "modality", "body part", "instances"):
        table.add_column(col, overflow="fold")
    for site, r in rows:
        table.add_row(f"{owners[site]}:{r['series_uid']}", site, str(r.get("modality", "")),
                      str(r.get("body_part", "")), str(r.get("instances", "")))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add `medfed query` to the main command."""
    app.command("query")(query)
