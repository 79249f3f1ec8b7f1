"""`medfed similar`, `medfed diagnose`, `medfed provenance verify|export`.

When the node runs ('medfed run'), these go through its control socket (it owns the
ports and the audit log, so it signs and audits); otherwise the command starts the
node's federation parts itself for the one call. Both paths run the same route code
(``node.similar.control``), so they answer alike.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import ConfigOpt, console, err, load_or_exit
from ..config.model import NodeConfig

provenance_app = typer.Typer(help="Provenance of similarity results and diagnoses.",
                             no_args_is_help=True)


class _Who:
    """The local user a command is made for: the record, a token, the stated purpose."""

    def __init__(self, cfg: NodeConfig, name: Optional[str], purpose: Optional[str],
                 password_stdin: bool) -> None:
        from .users import cli_user

        self.user, self.token = cli_user(cfg, name, password_stdin=password_stdin)
        self.purpose = purpose or self.user.purposes[0]

    def actor(self) -> Any:
        from ..control.wire import Actor
        return Actor(self.user.name, self.token, self.purpose)


UserOpt = typer.Option(None, "--user", help="Your user at this node (default: the one "
                                            "'medfed user login' saved).")
PurposeOpt = typer.Option(None, "--purpose", help="treatment, research or operations "
                                                  "(default: your first allowed).")
PasswordOpt = typer.Option(False, "--password-stdin", help="Read your password from stdin.")


async def _in_process(cfg: NodeConfig, route: str, body: dict[str, Any], who: _Who,
                      emit: Any) -> dict[str, Any]:
    from ..federation_wiring import load_node_membership
    from ..identity import NodeIdentity
    from ..node import Node
    from ..similar.control import ROUTES
    from ..similar.service import SimilarityError, SimilarityService

    if load_node_membership(NodeIdentity.load_or_create(cfg.key_dir), cfg.data_dir) is None:
        raise SimilarityError(f"node in {cfg.data_dir} has not joined a federation; "
                              "run 'medfed join' first")
    node = Node(cfg, with_dicom=False, services=[SimilarityService(index=False)])
    await node.start()
    try:
        await node.bootstrap_dht()
        svc = node.service(SimilarityService.name)
        assert isinstance(svc, SimilarityService)
        await svc.index_now()
        return await ROUTES[route](node, body, who.user, who.purpose, emit)
    finally:
        await node.stop()


def _call(cfg: NodeConfig, route: str, body: dict[str, Any], who: _Who, *, timeout_s: float,
          emit: Any = lambda event: None) -> dict[str, Any]:
    """Through the running node if there is one, else in this process; exits on refusal."""
    from ..audit.errors import AuditError
    from ..control import control_socket_path
    from ..control.client import ControlClient, ControlError
    from ..control.wire import BadRequest
    from ..identity import IdentityError
    from ..similar.service import SimilarityError

    client = ControlClient(control_socket_path(cfg.data_dir))
    try:
        if client.is_running():
            return client.service(route, body, who.actor(), timeout_s=timeout_s, on_event=emit)
        return asyncio.run(_in_process(cfg, route, body, who, emit))
    except ControlError as exc:
        err.print(f"[red]{route} failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1)
    except BadRequest as exc:
        err.print(f"[red]{route} refused:[/red] {escape(exc.reason)}")
        raise typer.Exit(2 if exc.status == 400 else 1)
    except (SimilarityError, IdentityError, AuditError) as exc:
        err.print(f"[red]{route} failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1)
    except OSError as exc:
        err.print(f"[red]{route} failed:[/red] {type(exc).__name__}: {exc.strerror or exc}")
        raise typer.Exit(1)


def _print_site(event: dict[str, Any]) -> None:
    console.print(f"  {escape(str(event.get('site')))}: {event.get('status')}"
                  f" ({event.get('matches', 0)} matches of {event.get('scanned', 0)} scanned, "
                  f"{float(event.get('latency_ms', 0)):.0f} ms)"
                  + (f" {escape(str(event.get('reason')))}" if event.get("reason") else ""),
                  highlight=False)


def _print_answer(answer: dict[str, Any]) -> None:
    table = Table(title=f"similar to {answer['query_ref']} ({answer['method']} v{answer['version']}, "
                        f"run {answer['run_id']})")
    for col in ("rank", "score", "site", "series (fetch with medfed fetch)", "modality",
                "body part", "month", "diagnosis"):
        table.add_column(col)
    for m in answer["matches"]:
        table.add_row(str(m["rank"]), f"{m['score']:.4f}", m["site"], m["fetch_ref"],
                      m.get("modality", ""), m.get("body_part", ""), m.get("study_month", ""),
                      escape(m.get("diagnosis", "")))
    console.print(table)
    ok = sum(s["status"] == "ok" for s in answer["sites"])
    console.print(f"{ok} of {len(answer['sites'])} site(s) answered in {answer['elapsed_ms']:.0f} ms; "
                  f"provenance record {answer['provenance']['record_id']}")


def similar(config: Path = ConfigOpt,
            series: str = typer.Option(..., "--series", help="Your case: a series stored at this "
                                       "node (SeriesInstanceUID or keyed UID from a query)."),
            modality: Optional[str] = typer.Option(None, "--modality"),
            body_part: Optional[str] = typer.Option(None, "--body-part"),
            top: int = typer.Option(10, "--top", help="How many matches to show."),
            method: str = typer.Option("hist", "--method", help="hist or embed (or a plug-in)."),
            broadcast: bool = typer.Option(False, "--all", help="Ask every member (no narrowing)."),
            as_json: bool = typer.Option(False, "--json", help="Print the answer as JSON."),
            user: Optional[str] = UserOpt, purpose: Optional[str] = PurposeOpt,
            password_stdin: bool = PasswordOpt,
            deadline: Optional[float] = typer.Option(None, "--deadline",
                                                     help="Seconds (default: [federation])")) -> None:
    """Find the most similar cases at every site; images stay where they are."""
    cfg = load_or_exit(config)
    body = {"series": series, "method": method, "modality": modality and modality.upper(),
            "body_part": body_part and body_part.upper(), "top": top, "broadcast": broadcast,
            "deadline_s": deadline}
    if not as_json:
        console.print("sites answering:")
    answer = _call(cfg, "similar", body, _Who(cfg, user, purpose, password_stdin),
                   timeout_s=(deadline or cfg.federation.query_deadline_s) + 60,
                   emit=(lambda e: None) if as_json else _print_site)
    if as_json:
        typer.echo(json.dumps(answer))
    else:
        _print_answer(answer)


def diagnose(config: Path = ConfigOpt,
             series: str = typer.Option(..., "--series", help="Your case (a series at this node)."),
             diagnosis: str = typer.Option(..., "--diagnosis", help="Short diagnosis text."),
             report: str = typer.Option("", "--report", help="Report text (kept at this node)."),
             run: str = typer.Option("", "--run", help="The similarity run it is based on."),
             match: list[int] = typer.Option([], "--match", help="Rank of a match used (repeat)."),
             user: Optional[str] = UserOpt, purpose: Optional[str] = PurposeOpt,
             password_stdin: bool = PasswordOpt) -> None:
    """Record a diagnosis for your case, linked to the similarity run and matches used."""
    cfg = load_or_exit(config)
    result = _call(cfg, "diagnose", {"series": series, "diagnosis": diagnosis, "report": report,
                                     "run": run, "matches": list(match)},
                   _Who(cfg, user, purpose, password_stdin), timeout_s=60)
    console.print(f"[green]recorded[/green]; provenance record {result['record']['record_id']}")


@provenance_app.command("verify")
def provenance_verify(config: Path = ConfigOpt,
                      run: str = typer.Option("", "--run", help="Only this run (default: all)."),
                      user: Optional[str] = UserOpt, password_stdin: bool = PasswordOpt) -> None:
    """Check every provenance record's signature, links and audit entry; exit 1 on a problem."""
    cfg = load_or_exit(config)
    result = _call(cfg, "provenance", {"action": "verify", "run": run},
                   _Who(cfg, user, None, password_stdin), timeout_s=120)
    verdict = "[green]intact[/green]" if result["ok"] else f"[red]{len(result['problems'])} problem(s)[/red]"
    console.print(f"{result['records']} provenance record(s): {verdict}")
    for problem in result["problems"]:
        console.print(f"  [red]-[/red] {escape(problem)}")
    if not result["ok"]:
        raise typer.Exit(1)


@provenance_app.command("export")
def provenance_export(config: Path = ConfigOpt,
                      run: str = typer.Option("", "--run", help="Only this run (default: all)."),
                      out: Optional[Path] = typer.Option(None, "--out", help="File (default: stdout)."),
                      user: Optional[str] = UserOpt, password_stdin: bool = PasswordOpt) -> None:
    """Write the provenance records as W3C PROV-JSON."""
    cfg = load_or_exit(config)
    result = _call(cfg, "provenance", {"action": "export", "run": run},
                   _Who(cfg, user, None, password_stdin), timeout_s=120)
    if out is None:
        typer.echo(result["prov_json"])
    else:
        out.write_text(result["prov_json"])
        console.print(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add `medfed similar`, `medfed diagnose` and `medfed provenance` to the main command."""
    app.command("similar")(similar)
    app.command("diagnose")(diagnose)
    app.add_typer(provenance_app, name="provenance")
