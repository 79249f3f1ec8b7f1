"""What every `medfed` sub-command shares: consoles and config loading with clear errors."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from ..config.model import ConfigError, NodeConfig, load_config

console = Console()
err = Console(stderr=True)

ConfigOpt = typer.Option(Path("medfed.toml"), "--config", "-c", help="The node's TOML file.")


def load_or_exit(config: Path) -> NodeConfig:
    try:
        return load_config(config)
    except ConfigError as exc:
        err.print(f"[red]config error:[/red] {exc}")
        raise typer.Exit(2)
