"""The tamper-evident audit log: entry format, chain verification, signed head, the log."""
