"""The node's configuration: the TOML model and the commented template `medfed init` writes."""
