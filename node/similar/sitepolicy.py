"""The similarity part of a site's policy: which methods may run here, what leaves.

Like Vantage6's algorithm allowlist: a method runs on this site's data only if
``similarity_methods`` lists it, as ``"id"`` (any version) or ``"id@version"`` (that
version only). ``similarity_release`` says what an answer may carry besides scores and
pseudonymous refs: ``"scores"`` (nothing more), ``"diagnosis"`` (the diagnosis recorded
for the series, de-identified) or ``"report"`` (also the report text, de-identified).
Who may ask at all is decided by the policy's rules, as for queries. Pure.

TOML, inside ``[policy]``::

    similarity_methods = ["hist", "embed@1"]
    similarity_release = "diagnosis"
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .method import METHOD_ID, VERSION

RELEASES = ("scores", "diagnosis", "report")
DEFAULT_METHODS = ("hist", "embed")
DEFAULT_RELEASE = "diagnosis"
KEYS = ("similarity_methods", "similarity_release")


class SimilarityPolicyError(ValueError):
    """The similarity keys of the policy cannot be used as written."""


@dataclass(frozen=True)
class SimilarityPolicy:
    methods: tuple[str, ...] = ()     # "id" or "id@version"
    release: str = "scores"

    def allows(self, method: str, version: str) -> bool:
        return method in self.methods or f"{method}@{version}" in self.methods

    @property
    def releases_diagnosis(self) -> bool:
        return self.release in ("diagnosis", "report")

    @property
    def releases_report(self) -> bool:
        return self.release == "report"


def similarity_policy(doc: Mapping[str, Any]) -> SimilarityPolicy:
    """Read the keys from a ``[policy]`` table; absent keys allow no method, release scores."""
    raw = doc.get("similarity_methods", [])
    if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
        raise SimilarityPolicyError('similarity_methods must be a list of method names, '
                                    'e.g. ["hist", "embed@1"]')
    for entry in raw:
        method, sep, version = entry.partition("@")
        if not METHOD_ID.match(method) or (sep and not VERSION.match(version)):
            raise SimilarityPolicyError(f"similarity_methods entry {entry[:40]!r} must be "
                                        '"id" or "id@version"')
    release = doc.get("similarity_release", "scores")
    if release not in RELEASES:
        raise SimilarityPolicyError(f"similarity_release must be one of {', '.join(RELEASES)}")
    return SimilarityPolicy(tuple(raw), release)
