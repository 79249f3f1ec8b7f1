"""`medfed federation …` and `medfed join`: membership (local users: ``cli/users.py``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Optional

from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from .common import ConfigOpt, console, err, load_or_exit
from ..net.admission import AdmissionError
from ..net.federation import FederationError
from ..net.roster import RosterError
from .users import user_app

if TYPE_CHECKING:   # the peer client (aiohttp) is imported by the commands that dial
    from ..identity import NodeIdentity
    from ..net.membership import Membership
    from ..net.roster import SignedRoster

federation_app = typer.Typer(help="Run a federation: its CA, admissions and revocations.",
                             no_args_is_help=True)

FedDirOpt = typer.Option(Path("."), "--dir", help="The federation operator's folder.")


@federation_app.command("create")
def federation_create(directory: Path = typer.Argument(..., help="Operator folder (created)."),
                      name: str = typer.Option(..., "--name", help="Federation name.")) -> None:
    """Create the federation CA, its secrets and an empty signed roster."""
    from ..net.federation import create_federation

    try:
        info = create_federation(directory, name)
    except FederationError as exc:
        err.print(f"[red]cannot create federation:[/red] {exc}")
        raise typer.Exit(1)
    console.print(f"[green]created[/green] federation {info.name!r} in {directory}")
    console.print(f"CA fingerprint {info.ca_fingerprint}")
    console.print("Keep this folder offline; read the fingerprint to each joining site.")


@federation_app.command("admit")
def federation_admit(request: Path = typer.Argument(..., help="File from 'medfed join --request'."),
                     out: Path = typer.Option(..., "--out", help="Where to write the bundle."),
                     name: Optional[str] = typer.Option(None, "--name", help="Member name."),
                     directory: Path = FedDirOpt) -> None:
    """Issue a node certificate and a member bundle for an admission request."""
    from ..net.federation import admit as federation_admit_member
    from ..net.files import write_atomic

    try:
        bundle = federation_admit_member(directory, request.read_bytes(), name=name)
        write_atomic(out, bundle.to_json(), private=True)
    except OSError as exc:
        err.print(f"[red]cannot read/write file:[/red] {exc}")
        raise typer.Exit(2)
    except (AdmissionError, FederationError) as exc:
        err.print(f"[red]not admitted:[/red] {exc}")
        raise typer.Exit(1)
    console.print(f"[green]admitted[/green] node {bundle.node_id[:16]}… -> {out}")


@federation_app.command("revoke")
def federation_revoke(node_id: str = typer.Argument(..., help="Hex node id to revoke."),
                      to: list[str] = typer.Option([], "--to", help="HOST:PORT of a running "
                                                   "member to hand the new roster to."),
                      directory: Path = FedDirOpt) -> None:
    """Sign a roster without this node; hand it to a running member (--to) to spread it."""
    from ..net.federation import revoke as federation_revoke_member

    try:
        signed = federation_revoke_member(directory, node_id.strip().lower())
    except (FederationError, RosterError) as exc:
        err.print(f"[red]cannot revoke:[/red] {exc}")
        raise typer.Exit(1)
    console.print(f"[green]revoked[/green]; roster version {signed.roster.version} in {directory}")
    if not to:
        console.print("hand it to any running member: medfed federation publish --to HOST:PORT "
                      f"--dir {directory}")
    _publish_to(directory, signed, to)


@federation_app.command("publish")
def federation_publish(roster: Optional[Path] = typer.Argument(
                           None, help="Signed roster file (default: the folder's current one)."),
                       to: list[str] = typer.Option(..., "--to",
                                                    help="HOST:PORT of a member's peer API "
                                                         "(repeat for several)."),
                       directory: Path = FedDirOpt) -> None:
    """Hand the current (or given) CA-signed roster to running members; they spread it."""
    from ..net.federation import current_roster, operator_ca
    from ..net.roster import verify_roster

    try:
        ca = operator_ca(directory)
        signed = (verify_roster(roster.read_bytes(), ca.cert) if roster is not None
                  else current_roster(directory))
    except OSError as exc:
        err.print(f"[red]cannot read {roster}:[/red] {exc.strerror}")
        raise typer.Exit(2)
    except (FederationError, RosterError) as exc:
        err.print(f"[red]cannot publish:[/red] {exc}")
        raise typer.Exit(1)
    _publish_to(directory, signed, to)


def _publish_to(directory: Path, signed: "SignedRoster", addresses: list[str]) -> None:
    """Offer ``signed`` to each address; exit 1 unless at least one member took it."""
    if not addresses:
        return
    from ..net.errors import PeerError
    from ..net.federation import operator_ca
    from ..net.handover import hand_over
    from ..net.tls import TLSSetupError

    ca = operator_ca(directory)
    version = signed.roster.version
    delivered = 0
    for address in addresses:
        try:
            held = asyncio.run(hand_over(ca, signed, address))
        except (PeerError, RosterError, TLSSetupError, OSError) as exc:
            err.print(f"[red]{address}: not delivered[/red]: {exc}. Is that member running? "
                      "Try another member with --to.")
            continue
        if held >= version:
            delivered += 1
            console.print(f"{address}: holds roster v{held}; it spreads the roster to the "
                          "other members within the gossip bound (see README)")
        else:
            err.print(f"[red]{address}: kept roster v{held}[/red] (offered v{version})")
    if not delivered:
        raise typer.Exit(1)



BOOTSTRAP_ATTEMPTS = 3
BOOTSTRAP_PAUSE_S = 2.0


def join(config: Path = ConfigOpt,
         request: Optional[Path] = typer.Option(None, "--request",
                                                help="Write an admission request to this file."),
         bundle: Optional[Path] = typer.Option(None, "--bundle",
                                               help="Install the operator's member bundle."),
         bootstrap: Optional[str] = typer.Option(
             None, "--bootstrap", help="HOST:PORT of a running member to announce to now "
                                       "(optional: a running node announces itself)."),
         ca_fingerprint: Optional[str] = typer.Option(
             None, "--ca-fingerprint", help="The CA fingerprint the operator read to you "
                                            "(required with --bundle)."),
         insecure_skip_ca_check: bool = typer.Option(
             False, "--insecure-skip-ca-check",
             help="Install a bundle without checking its CA fingerprint (tests only).")) -> None:
    """Join a federation: --request first, then --bundle (with --ca-fingerprint)."""
    from ..config.addresses import AddressError
    from ..identity import NodeIdentity
    from ..net.files import write_atomic
    from ..net.membership import MembershipPaths, create_request, install_bundle

    cfg = load_or_exit(config)
    ident = NodeIdentity.load_or_create(cfg.key_dir)
    paths = MembershipPaths.under(cfg.data_dir / "federation")
    if request is None and bundle is None:
        err.print("give --request FILE (step 1) or --bundle FILE (step 2)")
        raise typer.Exit(2)
    if bundle is not None and not ca_fingerprint and not insecure_skip_ca_check:
        err.print("[red]--ca-fingerprint is required[/red]: it is how you know the bundle comes "
                  "from your federation's operator. Ask the operator for the fingerprint "
                  "'medfed federation create' printed (or pass --insecure-skip-ca-check, "
                  "which no hospital should).")
        raise typer.Exit(2)
    try:
        if request is not None:
            req = create_request(ident, paths, name=cfg.name, peer_address=cfg.peer_advertise,
                                 dht_address=cfg.dht_advertise, dicom_ae=cfg.dicom.ae_title)
            write_atomic(request, req.to_json())
            console.print(f"admission request for node {ident.node_id_hex} -> {request}")
            console.print(f"  other sites will reach this node at peer {cfg.peer_advertise} "
                          f"(tcp) and DHT {cfg.dht_advertise} (udp); send the file to the "
                          "federation operator", highlight=False)
        if bundle is not None:
            membership = install_bundle(bundle.read_bytes(), ident, paths,
                                        expected_ca_fingerprint=ca_fingerprint)
    except OSError as exc:
        err.print(f"[red]cannot read/write file:[/red] {exc}")
        raise typer.Exit(2)
    except AddressError as exc:
        err.print(f"[red]no admission request written:[/red] {escape(str(exc))}")
        raise typer.Exit(2)
    except (AdmissionError, RosterError) as exc:
        err.print(f"[red]not joined:[/red] {escape(str(exc))}")
        raise typer.Exit(1)
    if bundle is None:
        return
    roster = membership.roster.current
    if insecure_skip_ca_check and not ca_fingerprint:
        err.print("[yellow]warning: the bundle's CA was not checked against a fingerprint[/yellow]")
    console.print(f"[green]joined[/green] {roster.federation!r} (roster v{roster.version}, "
                  f"{len(roster.active())} members).")
    if _node_running(cfg):
        err.print("[yellow]this node is running without the federation[/yellow]: it reads its "
                  "membership at start. Stop it (Ctrl-C or SIGTERM) and start it again with "
                  f"'medfed run --config {config}'.", highlight=False)
    else:
        console.print(f"Start the node with 'medfed run --config {config}': it introduces "
                      "itself to the running members and keeps the roster current.",
                      highlight=False)
    if bootstrap:
        _announce_with_retries(ident, membership, bootstrap)


def _node_running(cfg) -> bool:  # type: ignore[no-untyped-def]
    from ..control import control_socket_path
    from ..control.client import ControlClient, ControlDenied, ControlError

    try:
        return ControlClient(control_socket_path(cfg.data_dir)).is_running()
    except ControlDenied:
        return True
    except ControlError:
        return False


def _announce_with_retries(ident: "NodeIdentity", membership: "Membership",
                           bootstrap: str) -> None:
    """Tell one running member about us now; its absence is not an error (the node
    announces itself when it runs)."""
    from ..net.client import PeerClient
    from ..net.errors import PeerError
    from ..net.roster_sync import announce

    async def once() -> bool:
        async with PeerClient(ident, membership.client_tls()) as client:
            return await announce(client, membership.roster, bootstrap, timeout=10)

    problem = ""
    for attempt in range(1, BOOTSTRAP_ATTEMPTS + 1):
        try:
            known = asyncio.run(once())
        except RosterError as exc:
            err.print(f"[yellow]bootstrap not used:[/yellow] {exc}")
            return
        except PeerError as exc:
            problem = str(exc)
            if attempt < BOOTSTRAP_ATTEMPTS:
                err.print(f"bootstrap {bootstrap} not reachable yet (attempt {attempt} of "
                          f"{BOOTSTRAP_ATTEMPTS}): {problem}; retrying in "
                          f"{BOOTSTRAP_PAUSE_S:.0f} s")
                time.sleep(BOOTSTRAP_PAUSE_S)
            continue
        console.print(f"bootstrap {bootstrap}: "
                      + ("knows this node now" if known else "holds a newer roster (this node "
                         "fetches it when it runs)"))
        return
    err.print(f"[yellow]bootstrap {bootstrap} did not answer[/yellow] ({problem}). The membership "
              "is installed; when this node runs it offers its roster to the members itself, "
              "every few seconds, until they answer.")


def register(app: typer.Typer) -> None:
    app.add_typer(federation_app, name="federation")
    app.add_typer(user_app, name="user")
    app.command()(join)
