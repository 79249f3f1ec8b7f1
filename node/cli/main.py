"""The `medfed` command."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import ConfigOpt, console, err, load_or_exit
from ..config.addresses import guess_advertise_host, is_wildcard
from ..config.model import AllowedPeer, ConfigError
from ..config.template import render_config
from ..datadir import DataFolderError, make_private_dir, restrict_umask
from ..ports import PortUnavailableError
from ..identity import IdentityError, NodeIdentity

app = typer.Typer(help="medfed: a peer-to-peer federation of hospital imaging nodes.",
                  no_args_is_help=True, add_completion=False)
audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@app.callback()
def _owner_only_files() -> None:
    # Every file a medfed command writes (database, keys, audit log, tokens, exports) is
    # readable by the node's OS user only, whatever umask the shell had.
    restrict_umask()


@app.command()
def init(directory: Path = typer.Argument(..., help="Folder for the node (created)."),
         ae_title: str = typer.Option("MEDFED", "--ae-title"),
         dicom_port: int = typer.Option(11112, "--dicom-port", min=0, max=65535),
         http_port: int = typer.Option(8080, "--http-port", min=0, max=65535),
         peer_port: int = typer.Option(8443, "--peer-port", min=0, max=65535),
         dht_port: int = typer.Option(8468, "--dht-port", min=0, max=65535),
         name: str = typer.Option("medfed node", "--name"),
         host: str = typer.Option("0.0.0.0", "--host", help="Interface the DICOM, peer and "
                                  "DHT ports listen on (0.0.0.0 = all; 127.0.0.1 = this "
                                  "machine only)."),
         advertise: Optional[str] = typer.Option(
             None, "--advertise", help="Host name or address other hospitals reach this "
                                       "node at (default: --host, or this machine's address "
                                       "when --host listens on all interfaces)."),
         allow: list[str] = typer.Option([], "--allow", help="Calling AE allowed, AE@HOST."),
         destination: list[str] = typer.Option([], "--destination",
                                                help="C-MOVE destination, AE=HOST:PORT."),
         force: bool = typer.Option(False, "--force", help="Overwrite an existing config.")) -> None:
    """Write a commented config and create the node's data folder and keys."""
    cfg_path = directory / "medfed.toml"
    if cfg_path.exists() and not force:
        err.print(f"[red]{cfg_path} exists[/red]; use --force to overwrite it")
        raise typer.Exit(1)
    try:
        for entry in allow:
            AllowedPeer.parse(entry)
        dests = dict(d.split("=", 1) for d in destination)
        advertise_host = advertise or (guess_advertise_host() if is_wildcard(host) else host)
    except (ConfigError, ValueError) as exc:
        err.print(f"[red]invalid option:[/red] {exc}")
        raise typer.Exit(2)
    directory.mkdir(parents=True, exist_ok=True)
    text = render_config(config_path=str(cfg_path), name=name, ae_title=ae_title,
                         dicom_host=host, dicom_port=dicom_port, http_port=http_port,
                         peer_port=peer_port, dht_port=dht_port, allow=list(allow),
                         destinations=dests, host=host, advertise=advertise_host)
    cfg_path.write_text(text)
    cfg = load_or_exit(cfg_path)
    make_private_dir(cfg.data_dir)
    ident = NodeIdentity.load_or_create(cfg.key_dir)
    if cfg.durability == "full":  # written once: every ingest flush is then data only
        from ..pacs.journal import Journal
        try:
            Journal(cfg.data_dir / "journal").prepare()
        except OSError as exc:
            err.print(f"[yellow]ingest journal not prepared ({exc.strerror or exc}); the "
                      "node prepares it while it ingests[/yellow]")
    console.print(f"[green]created[/green] {cfg_path}")
    console.print(f"node id  {ident.node_id_hex}")
    console.print(f"data dir {cfg.data_dir}")
    console.print(f"listens  {host} (DICOM {dicom_port}/tcp, peer API {peer_port}/tcp, "
                  f"DHT {dht_port}/udp); other sites reach it at {advertise_host}", highlight=False)


@app.command()
def run(config: Path = ConfigOpt,
        log_level: str = typer.Option("INFO", "--log-level")) -> None:
    """Run the node until SIGINT/SIGTERM."""
    from ..logsetup import setup_logging
    from ..node import Node

    cfg = load_or_exit(config)
    setup_logging(cfg.log_path, log_level)

    async def main() -> None:
        from ..services import default_services

        node = Node(cfg, services=default_services(cfg))
        await node.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.request_stop)
        console.print(f"[green]medfed node {cfg.name!r} running[/green]", highlight=False)
        for line in served_addresses(node):
            console.print(f"  {line}", highlight=False)
        web = node.service("web")
        if web is not None:
            console.print(f"web: {web.url}", highlight=False)  # type: ignore[attr-defined]
        try:
            await node.run_until_stopped()
        finally:
            await node.stop()
            console.print("node stopped cleanly")

    from ..store.db import StoreError
    from ..web.tls import WebConfigError

    try:
        asyncio.run(main())
    except (IdentityError, DataFolderError, PortUnavailableError, WebConfigError,
            StoreError) as exc:
        err.print(f"[red]the node did not start:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2)


def served_addresses(node) -> list[str]:  # type: ignore[no-untyped-def]
    """One line per address the running node serves (what a firewall must let through)."""
    from ..control import control_socket_path

    cfg = node.cfg
    lines = [f"DICOM      {cfg.dicom.host}:{node.ports.dicom}/tcp  AE {cfg.dicom.ae_title}"
             f" (federation: {cfg.dicom.federation_ae_title})"]
    if node.peer is not None and node.membership is not None:
        me = node.membership.roster.member(node.node_id)
        advertised = f" (members dial {me.peer_address})" if me else ""
        lines.append(f"peer API   {cfg.peer_host}:{node.ports.peer}/tcp mTLS{advertised}")
        if node.dht is not None:
            dial = f" (members dial {me.dht_address})" if me else ""
            lines.append(f"DHT        {cfg.dht_bind_host}:{node.ports.dht}/udp{dial}")
        if node.gossip is not None and node.gossip.revoked:
            lines.append("[red]this node is REVOKED from its federation; members refuse it[/red]")
    else:
        lines.append("federation not joined: no peer API or DHT ('medfed join')")
    lines.append(f"control    {control_socket_path(cfg.data_dir)} (this OS user only)")
    return lines


@app.command()
def status(config: Path = ConfigOpt,
           as_json: bool = typer.Option(False, "--json", help="The federation part as JSON.")
           ) -> None:
    """Counts, disk use, pending jobs; the federation: roster, members, publishing, shares."""
    from ..store.db import MetadataStore
    from .status import federation_status, live_status, print_federation, receivers_row

    cfg = load_or_exit(config)
    running = live_status(cfg)
    if as_json:
        import json

        doc, live = federation_status(cfg, running)
        typer.echo(json.dumps({"live": live, "federation": doc,
                               "dicom": (running or {}).get("dicom")}))
        return

    async def main():  # type: ignore[no-untyped-def]
        async with MetadataStore.for_config(cfg) as store:
            return await store.counts()

    counts = asyncio.run(main())
    import shutil

    free = shutil.disk_usage(cfg.data_dir).free  # no walk over the files: constant time
    table = Table(title=f"medfed node {cfg.name}", show_header=False)
    for label, value in (("patients", counts.patients), ("studies", counts.studies),
                         ("series", counts.series), ("instances", counts.instances),
                         ("image bytes (local + cache)", f"{counts.bytes:,}"),
                         ("free on that disk", f"{free / 1e9:,.1f} GB"),
                         ("pending jobs", counts.pending_jobs)):
        table.add_row(label, str(value))
    receivers = receivers_row(running)
    if receivers is not None:
        table.add_row("DICOM receivers", receivers)
    console.print(table)
    print_federation(*federation_status(cfg, running))


@audit_app.command("verify")
def audit_verify(config: Path = ConfigOpt) -> None:
    """Check the audit log's hash chain and signed head; exit 1 on any problem."""
    from ..audit.verify import verify

    cfg = load_or_exit(config)
    try:
        ident = NodeIdentity.load(cfg.key_dir)
    except IdentityError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2)
    r = verify(cfg.audit_path, ident.verify_key)
    table = Table(title=f"audit log {cfg.audit_path}", show_header=False)
    for label, value in (("entries", r.entries), ("last seq", r.last_seq),
                         ("signed head seq", r.head_seq if r.head_seq is not None else "none"),
                         ("head signature checked", "yes" if r.head_signature_checked else "no"),
                         ("result", "[green]intact[/green]" if r.ok else
                          f"[red]{len(r.problems)} problem(s)[/red]")):
        table.add_row(label, str(value))
    console.print(table)
    for problem in r.problems:
        console.print(f"  [red]-[/red] {problem}")
    if not r.ok:
        raise typer.Exit(1)


@app.command()
def synth(out: Optional[Path] = typer.Argument(
              None, help="Output folder (must not hold these files); not with --metadata-only."),
          patients: int = typer.Option(3), studies: int = typer.Option(1),
          series: int = typer.Option(2), slices: int = typer.Option(64),
          modality: str = typer.Option("CT", help="CT or MR"),
          size: int = typer.Option(256, help="rows = columns"),
          seed: int = typer.Option(1),
          metadata_only: bool = typer.Option(
              False, "--metadata-only", help="Fill a stopped node's store with a realistic "
              "archive's metadata (no pixel data) instead of writing files."),
          instances: int = typer.Option(0, help="With --metadata-only: how many instances."),
          config: Optional[Path] = typer.Option(None, "--config", "-c",
                                                help="With --metadata-only: the node's TOML.")
          ) -> None:
    """Write synthetic DICOM studies (fake patients with planted PHI) for tests and demos,
    or (--metadata-only) fill a stopped node's store for scale tests."""
    if metadata_only:
        from .synth_store import synth_metadata

        synth_metadata(config, instances, seed)
        return
    if out is None:
        err.print("[red]give an output folder (or --metadata-only --config ...)[/red]")
        raise typer.Exit(2)
    from ..synth.generate import SynthError, synth_command

    try:
        r = synth_command(out, patients, studies, series, slices, modality, size, seed)
    except SynthError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2)
    s = r.summary
    console.print(f"{s.instances} files ({s.bytes / 1e6:.1f} MB): {s.patients} patients, "
                  f"{s.studies} studies, {s.series} series -> {out}")


@app.command()
def sync(config: Path = ConfigOpt,
         full: bool = typer.Option(False, "--full",
                                   help="Ask for every study, not only recent ones.")) -> None:
    """Synchronise the upstream PACS's metadata into this node's index now (C-FIND)."""
    from rich.markup import escape

    from ..audit.errors import AuditLockedError
    from ..audit.log import AuditLog
    from ..pacs.upstream import UpstreamError, UpstreamService
    from ..store.db import MetadataStore

    cfg = load_or_exit(config)
    up = cfg.upstream
    if up is None:
        err.print("[red]no \\[upstream] section in the config[/red]: this node fronts no PACS")
        raise typer.Exit(2)

    async def main():  # type: ignore[no-untyped-def]
        async with MetadataStore.for_config(cfg) as store:
            with AuditLog(cfg.audit_path, NodeIdentity.load(cfg.key_dir)) as audit:
                service = UpstreamService(up, store=store, data_dir=cfg.data_dir,
                                          own_ae_title=cfg.dicom.ae_title, audit=audit)
                return await service.sync_once(full=full)

    try:
        report = asyncio.run(main())
    except AuditLockedError:
        err.print("[yellow]the node is running[/yellow] (its audit log is in use); it syncs "
                  f"by itself every {up.sync_interval_s:g} s")
        raise typer.Exit(2)
    except (UpstreamError, IdentityError) as exc:
        err.print(f"[red]sync failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1)
    table = Table(title=f"sync from {up.ae_title} at {up.host}:{up.port}"
                  + (" (full)" if full else ""), show_header=False)
    for label, value in (("studies seen", report.studies_seen),
                         ("new studies", report.studies_new),
                         ("new series", report.series_new),
                         ("new instances", report.instances_new),
                         ("seconds", f"{report.seconds:.1f}")):
        table.add_row(label, str(value))
    console.print(table)


@app.command()
def demo(workdir: Optional[Path] = typer.Option(None, "--dir", help="Keep files here."),
         base_port: int = typer.Option(0, "--base-port", min=0, max=65000,
                                       help="Web app on this port, every other port after it "
                                            "(default: free ports)."),
         no_wait: bool = typer.Option(False, "--no-wait",
                                      help="Exit at the end instead of keeping the web app up "
                                           "(the default when stdin is not a terminal).")) -> None:
    """Start a small local node and a 5-hospital federation with synthetic images, query and
    retrieve across them, then keep the web app up until Ctrl-C."""
    from .demo import run_demo

    wait = not no_wait and sys.stdin is not None and sys.stdin.isatty()
    sys.exit(run_demo(workdir, base_port=base_port, wait=wait))


from .federation import register as _register_federation  # noqa: E402
from .query import register as _register_query  # noqa: E402
from .sharing import register as _register_sharing  # noqa: E402
from .sim import register as _register_sim  # noqa: E402
from .similar import register as _register_similar  # noqa: E402

_register_federation(app)
_register_sharing(app)
_register_query(app)
_register_sim(app)
_register_similar(app)
