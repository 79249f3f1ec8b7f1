"""`python -m sim --nodes 20 …` is `medfed sim --nodes 20 …`."""

from __future__ import annotations

import typer

from node.cli.sim import sim


def main() -> None:
    typer.run(sim)


if __name__ == "__main__":
    main()
