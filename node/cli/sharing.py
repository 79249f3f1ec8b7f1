"""`medfed fetch` (a series from the federation) and `medfed deid` (a folder, offline)."""

from __future__ import annotations

import asyncio
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from .common import ConfigOpt, console, err, load_or_exit
from ..config.model import NodeConfig
from ..identity import NodeIdentity

from .users import cli_user

if TYPE_CHECKING:
    from ..control.client import Actor, ControlClient
    from ..deid.actions import DeidKeys
    from ..users import User


def _deid_keys(cfg: NodeConfig) -> tuple["DeidKeys", bool]:
    """(keys, federated?): the federation's keys once joined, else the site-local key."""
    from ..deid.actions import DeidKeys
    from ..deid.site_keys import site_deid_keys
    from ..federation_wiring import load_node_membership

    membership = load_node_membership(NodeIdentity.load_or_create(cfg.key_dir), cfg.data_dir)
    if membership is None or membership.secrets is None:
        return site_deid_keys(cfg.key_dir), False
    secrets = membership.secrets
    return DeidKeys(uid_key=secrets.uid_key, patient_key=secrets.linkage_key), True


async def _fetch(cfg: NodeConfig, ref_text: str, out: Path, fmt: str, identified: bool, user: "User",
                 purpose: str, deadline_s: float) -> None:
    from ..federation_wiring import load_node_membership
    from ..keyshare.service import KeyShareService
    from ..node import Node
    from ..replica.service import ReplicaService
    from ..sharing.retrieve import FetchError, Retriever, local_assertion, parse_series_ref
    from ..sharing.sinks import sink_for

    ref = parse_series_ref(ref_text)
    if load_node_membership(NodeIdentity.load_or_create(cfg.key_dir), cfg.data_dir) is None:
        raise FetchError("this node is not a federation member; join a federation first ('medfed join')")
    node = Node(cfg, with_dicom=False, services=[KeyShareService(), ReplicaService()],
                one_shot=True)
    await node.start()
    try:
        await node.bootstrap_dht()
        assertion = local_assertion(node, user, purpose)
        with _progress() as report:
            result = await Retriever(node, deadline_s=deadline_s).fetch(
                ref, assertion, lambda bundle_id: sink_for(out, bundle_id, fmt),
                identified=identified, progress=report)
    finally:
        await node.stop()
    _print_fetched(result.instances, result.stored_bytes, result.source, result.outputs)


@contextmanager
def _progress() -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar; yields the (bytes received, instances decoded) callback."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
               TextColumn("{task.fields[instances]} instances"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("fetching", total=None, instances=0)

        def report(received: int, instances: int) -> None:
            progress.update(task, completed=received, instances=instances)

        yield report


def _print_fetched(instances: int, stored_bytes: int, source: str, outputs: Sequence[Path]) -> None:
    console.print(f"[green]fetched[/green] {instances} instances "
                  f"({stored_bytes} bytes from {source.split(':')[0]})")
    for path in outputs[:3]:
        console.print(f"  {path}")
    if len(outputs) > 3:
        console.print(f"  … {len(outputs) - 3} more in {outputs[0].parent}")


def _fetch_via_node(client: "ControlClient", actor: "Actor", ref_text: str, out: Path, fmt: str,
                    identified: bool, deadline_s: float) -> None:
    """The running node fetches (it owns the ports and the audit log) and writes to ``out``."""
    with _progress() as report:
        result = client.fetch(ref_text, out, actor, fmt=fmt, identified=identified,
                              deadline_s=deadline_s, progress=report)
    _print_fetched(int(result["instances"]), int(result["stored_bytes"]), str(result["source"]),
                   [Path(p) for p in result["outputs"]])


def register(app: typer.Typer) -> None:
    @app.command()
    def fetch(series_ref: str = typer.Argument(..., help="[OWNER_NODE_ID:]BUNDLE_ID or [OWNER:]KEYED_SERIES_UID"),
              out: Path = typer.Option(..., "--out", help="Output folder."),
              fmt: str = typer.Option("dicom", "--format", help="dicom, nifti or nrrd."),
              identified: bool = typer.Option(False, "--identified",
                                              help="Ask the owner for identified images (its policy decides)."),
              user: Optional[str] = typer.Option(None, "--user", help="Your user at this node "
                                                 "(default: the one 'medfed user login' saved)."),
              purpose: Optional[str] = typer.Option(None, "--purpose",
                                                    help="Default: your first allowed purpose."),
              password_stdin: bool = typer.Option(False, "--password-stdin",
                                                  help="Read your password from stdin."),
              deadline: float = typer.Option(300.0, "--deadline", help="Seconds for the whole fetch."),
              config: Path = ConfigOpt) -> None:
        """Fetch one series from the federation (owner, else replicas + key shares).

        When the node runs ('medfed run'), it does the fetch through its control socket;
        otherwise this command starts the node's federation parts itself for the fetch."""
        from ..control import control_socket_path
        from ..control.client import Actor, ControlClient, ControlError
        from ..sharing.retrieve import FetchError
        from ..sharing.sinks import FORMATS, SinkError
        from ..sharing.volume import VolumeError
        from ..users import UserRefused

        if fmt not in FORMATS:
            err.print(f"[red]--format must be one of {', '.join(FORMATS)}[/red]")
            raise typer.Exit(2)
        cfg = load_or_exit(config)
        who, token = cli_user(cfg, user, password_stdin=password_stdin)
        purpose = purpose or who.purposes[0]
        client = ControlClient(control_socket_path(cfg.data_dir))
        actor = Actor(who.name, token, purpose)
        try:
            if client.is_running():
                _fetch_via_node(client, actor, series_ref, out, fmt, identified, deadline)
                return
        except ControlError as exc:
            err.print(f"[red]fetch failed:[/red] {exc}")
            raise typer.Exit(1)
        try:
            asyncio.run(_fetch(cfg, series_ref, out, fmt, identified, who, purpose, deadline))
        except (FetchError, SinkError, VolumeError, ValueError, UserRefused) as exc:
            err.print(f"[red]fetch failed:[/red] {exc}")
            raise typer.Exit(1)
        except OSError as exc:
            err.print(f"[red]fetch failed:[/red] {type(exc).__name__}: {exc.strerror or exc} "
                      "(is the node already running with this config? stop it or use its web UI)")
            raise typer.Exit(1)

    @app.command()
    def deid(in_dir: Path = typer.Argument(..., help="Folder of DICOM files (read recursively)."),
             out_dir: Path = typer.Argument(..., help="Output folder (STUDY/SERIES/SOP.dcm, keyed UIDs)."),
             allow_burned_in: bool = typer.Option(False, "--allow-burned-in"),
             config: Path = ConfigOpt) -> None:
        """De-identify a folder (PS3.15 basic profile) with the federation's keys, or a
        site-local key before joining (pseudonyms then link within this site only)."""
        from ..deid.actions import DeidOptions
        from ..deid.files import FolderError, deidentify_folder

        keys, federated = _deid_keys(load_or_exit(config))
        if federated:
            console.print("keys: the federation's (pseudonyms and UIDs link across its sites)")
        else:
            console.print("keys: [yellow]site-local[/yellow] (this node has not joined a "
                          "federation): pseudonyms and UIDs link within this site only, not "
                          "with other sites' exports")
        try:
            report = deidentify_folder(in_dir, out_dir, keys, DeidOptions(allow_burned_in=allow_burned_in))
        except FolderError as exc:
            err.print(f"[red]{exc}[/red]")
            raise typer.Exit(2)
        console.print(f"done {report.done}, refused {report.refused}, failed {report.failed}, "
                      f"skipped {report.skipped}")
        for outcome in report.outcomes:
            if outcome.status != "done":
                console.print(f"  {outcome.status}: {outcome.source}: {outcome.reason}")
        if report.refused or report.failed:
            raise typer.Exit(1)
