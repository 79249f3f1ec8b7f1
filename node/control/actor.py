"""Who a control request is made for (shared by the node's parser and the CLI's client;
kept apart from ``wire`` so the CLI does not import the query and sharing parts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Actor:
    """The local user a request is made for: name, a token from ``medfed user login`` (or
    one the CLI got for a password it checked), and the purpose of this request. Role and
    department come from the user record at the node, never from here."""

    user: str
    token: str
    purpose: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)
