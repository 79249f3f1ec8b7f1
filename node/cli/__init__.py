"""The `medfed` command: one module per command group, the demo beside them."""
