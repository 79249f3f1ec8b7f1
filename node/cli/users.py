"""`medfed user …`: local users, and how the CLI logs one in for `query` and `fetch`.

Administering users is the node's OS user's job (whoever can read the data folder).
Federated commands are made for a registered user: they take a token from `medfed user
login` (kept in ``~/.config/medfed/``, mode 0600, or ``$MEDFED_TOKEN``), or ask for the
user's password and get a token that lives only for that command.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from .common import ConfigOpt, console, err, load_or_exit
from ..config.model import NodeConfig
from ..net.files import write_atomic
from ..users import AuthenticationFailed, TokenStore, User, UserError, UserStore

COMMAND_TOKEN_TTL_S = 300     # a token made from a typed password lives for one command
user_app = typer.Typer(help="Local users who may log in at this node.", no_args_is_help=True)


def _token_file(cfg: NodeConfig) -> Path:
    """Where `user login` keeps this node's token for the OS user running the CLI."""
    folder = Path(os.environ.get("MEDFED_TOKEN_DIR") or Path.home() / ".config" / "medfed")
    node = hashlib.sha256(str(cfg.data_dir.resolve()).encode()).hexdigest()[:16]
    return folder / f"token-{node}.json"


def _read_password(stdin: bool, *, confirm: bool = False) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("password", hide_input=True, confirmation_prompt=confirm)


def cli_user(cfg: NodeConfig, name: Optional[str], *, password_stdin: bool = False
             ) -> tuple[User, str]:
    """The user a federated command is made for, and a valid token for it.

    Order: ``$MEDFED_TOKEN``, the token saved by `medfed user login` (when ``name`` is
    not given or matches it), else the password of ``name`` (prompt or stdin)."""
    tokens = TokenStore(UserStore(cfg.users_path))
    saved = os.environ.get("MEDFED_TOKEN")
    if not saved:
        try:
            doc = json.loads(_token_file(cfg).read_text())
            saved = doc["token"] if name in (None, doc.get("user")) else None
        except (OSError, ValueError, KeyError, TypeError):
            saved = None
    if saved:
        user = tokens.verify_token(saved)
        if user is not None and name in (None, user.name):
            return user, saved
        if name is None:
            err.print("[red]your login has expired or was revoked[/red]: run "
                      "'medfed user login NAME' again")
            raise typer.Exit(1)
    if name is None:
        err.print("[red]no user logged in[/red]: run 'medfed user login NAME' first, "
                  "or give --user NAME to be asked for the password")
        raise typer.Exit(1)
    return password_login(cfg, name, _read_password(password_stdin), COMMAND_TOKEN_TTL_S)


def password_login(cfg: NodeConfig, name: str, password: str, ttl_s: float, *,
                   _attempts: int = 20) -> tuple[User, str]:
    """Check ``name``'s password and get a token; a refusal is audited at the node.

    While the node runs it holds the audit log, so the running node checks the password
    (control socket) and records a refusal itself; otherwise the CLI checks it here and
    writes the audit entry. Exits 1 (after the entry is written) on a refusal."""
    from ..control import control_socket_path
    from ..control.client import ControlClient, ControlRefused, ControlUnavailable

    tokens = TokenStore(UserStore(cfg.users_path))
    try:
        token = ControlClient(control_socket_path(cfg.data_dir)).login(name, password, ttl_s)
    except ControlUnavailable:
        token = None          # the node is not running: check here, audit here
    except ControlRefused as exc:
        err.print(f"[red]login refused:[/red] {exc.reason}")
        raise typer.Exit(1)
    if token is not None:
        user = tokens.verify_token(token)
        if user is None:
            err.print("[red]login refused:[/red] the node's token is not valid here")
            raise typer.Exit(1)
        return user, token
    try:
        user = tokens.users.authenticate(name, password)
        return user, tokens.issue_token(user, ttl_s)
    except (AuthenticationFailed, UserError) as exc:
        if not _audit_refusal(cfg, name):
            if _attempts > 0:   # a node is starting and holds the log: it checks and audits
                time.sleep(0.5)
                return password_login(cfg, name, password, ttl_s, _attempts=_attempts - 1)
            err.print("[yellow]the refusal could not be audited:[/yellow] a node holds the "
                      "audit log but does not answer on its control socket")
        err.print(f"[red]login refused:[/red] {exc}")
        raise typer.Exit(1)


def _audit_refusal(cfg: NodeConfig, name: str) -> bool:
    """Record a refused CLI login in the node's audit log (node not running); False when
    a node holds the log after all."""
    from ..audit.errors import AuditError, AuditLockedError
    from ..audit.log import AuditLog
    from ..identity import IdentityError, NodeIdentity

    try:
        with AuditLog(cfg.audit_path, NodeIdentity.load(cfg.key_dir)) as audit:
            audit.append("user.refused", name[:64], "refused", code="login_failed", via="cli")
    except AuditLockedError:
        return False
    except (AuditError, IdentityError, OSError) as exc:
        err.print(f"[yellow]the refusal could not be audited:[/yellow] {exc}")
    return True


@user_app.command("add")
def user_add(name: str = typer.Argument(...),
             role: str = typer.Option(..., "--role", help="clinician, researcher or admin"),
             department: str = typer.Option(..., "--department"),
             purpose: list[str] = typer.Option(
                 [], "--purpose", help="Purpose the user may state (repeat; default: the "
                                       "role's: clinician treatment, researcher research, "
                                       "admin operations)."),
             password_stdin: bool = typer.Option(False, "--password-stdin",
                                                 help="Read the password from stdin (scripts)."),
             config: Path = ConfigOpt) -> None:
    """Add a local user (the password is asked for, never taken from the command line)."""
    cfg = load_or_exit(config)
    password = _read_password(password_stdin, confirm=True)
    try:
        user = UserStore(cfg.users_path).add_user(name, role, department, password, purpose)
    except UserError as exc:
        err.print(f"[red]user not added:[/red] {exc}")
        raise typer.Exit(1)
    console.print(f"[green]added[/green] {user.name} ({user.role}, {user.department}; "
                  f"purposes {', '.join(user.purposes)}), handle {user.handle}")


@user_app.command("list")
def user_list(config: Path = ConfigOpt) -> None:
    """The node's users with role, department, purposes and whether they are disabled."""
    cfg = load_or_exit(config)
    for user in UserStore(cfg.users_path).list_users():
        state = "disabled" if user.disabled else "enabled"
        console.print(f"{user.name}\t{user.role}\t{user.department}\t"
                      f"{','.join(user.purposes)}\t{state}", highlight=False)


@user_app.command("disable")
def user_disable(name: str = typer.Argument(...), config: Path = ConfigOpt) -> None:
    """Disable a user at once: its logins and tokens stop working."""
    cfg = load_or_exit(config)
    store = UserStore(cfg.users_path)
    try:
        store.set_disabled(name, True)
    except UserError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1)
    dropped = TokenStore(store).revoke_user(name)
    console.print(f"[green]disabled[/green] {name} ({dropped} token(s) revoked)")


@user_app.command("login")
def user_login(name: str = typer.Argument(...),
               ttl: float = typer.Option(8 * 3600, "--ttl", help="Token lifetime in seconds."),
               print_token: bool = typer.Option(False, "--print",
                                                help="Print the token instead of saving it."),
               password_stdin: bool = typer.Option(False, "--password-stdin",
                                                   help="Read the password from stdin."),
               config: Path = ConfigOpt) -> None:
    """Log in as a local user; `query` and `fetch` then act for this user until it expires."""
    cfg = load_or_exit(config)
    user, token = password_login(cfg, name, _read_password(password_stdin), ttl)
    if print_token:
        typer.echo(token)
        return
    path = _token_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, json.dumps({"user": user.name, "token": token}).encode(), private=True)
    console.print(f"[green]logged in[/green] as {user.name} ({user.role}) for {ttl / 3600:g} h; "
                  f"token in {path}")


@user_app.command("logout")
def user_logout(config: Path = ConfigOpt) -> None:
    """Revoke and forget the token `medfed user login` saved for this node."""
    cfg = load_or_exit(config)
    path = _token_file(cfg)
    try:
        token = json.loads(path.read_text())["token"]
    except (OSError, ValueError, KeyError, TypeError):
        console.print("not logged in")
        return
    TokenStore(UserStore(cfg.users_path)).revoke(token)
    path.unlink(missing_ok=True)
    console.print("[green]logged out[/green]")
