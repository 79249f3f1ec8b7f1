"""The few places where SQLite and PostgreSQL spell a condition differently.

Query builders stay pure and write ``?`` placeholders; they ask the store's dialect for
the three conditions whose SQL differs (case-insensitive equality and wildcards, and
case-sensitive wildcards). Everything else in medfed's SQL is common to both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Dialect:
    name: str

    @property
    def postgres(self) -> bool:
        return self.name == "postgresql"

    def nocase_equals(self, expr: str) -> str:
        """``expr`` equals the bound value, ASCII case ignored (PN matching)."""
        return f"lower({expr}) = lower(?)" if self.postgres else f"{expr} = ? COLLATE NOCASE"

    def nocase_like(self, expr: str, escape: str) -> str:
        """LIKE ignoring case (SQLite's LIKE already does for ASCII)."""
        op = "ILIKE" if self.postgres else "LIKE"
        return f"{expr} {op} ? ESCAPE '{escape}'"

    def case_like(self, expr: str, escape: str) -> str | None:
        """Case-sensitive LIKE, or None when the dialect uses GLOB for that (SQLite)."""
        return f"{expr} LIKE ? ESCAPE '{escape}'" if self.postgres else None


SQLITE = Dialect("sqlite")
POSTGRES = Dialect("postgresql")
