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
    try:
        user = tokens.users.authenticate(name, _read_password(password_stdin))
        return user, tokens.issue_token(user, COMMAND_TOKEN_TTL_S)
    except (AuthenticationFailed, UserError) as exc:
        _audit_refusal(cfg, name)
        err.print(f"[red]login refused:[/red] {exc}")
        raise typer.Exit(1)


def _audit_refusal(cfg: NodeConfig, name: str) -> None:
    """Record a refused CLI login in the node's audit log (the running node records its
    own refusals; while it holds the log, the CLI cannot and says so in the log file)."""
    from ..audit.errors import AuditError
    from ..audit.log import AuditLog
    from ..identity import IdentityError, NodeIdentity

    try:
        with AuditLog(cfg.audit_path, NodeIdentity.load(cfg.key_dir)) as audit:
            audit.append("user.refused", name[:64], "refused", code="login_failed", via="cli")
    except (AuditError, IdentityError, OSError):
        pass   # the daemon holds the log; its control socket refuses and audits bad tokens


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
    tokens = TokenStore(UserStore(cfg.users_path))
    try:
        user = tokens.users.authenticate(name, _read_password(password_stdin))
        token = tokens.issue_token(user, ttl)
    except (AuthenticationFailed, UserError) as exc:
        err.print(f"[red]login refused:[/red] {exc}")
        raise typer.Exit(1)
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
