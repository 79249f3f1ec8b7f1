"""`python -m node.cli` runs the `medfed` command."""

from .main import app

app()
