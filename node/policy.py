"""Site policy: what this site answers to whom. Pure; enforced by the serving site only.

A policy is an ordered list of rules. Each rule names the requesting sites (node id,
member name, or "*"), the roles and the purposes it covers, and the level of answer
given. The first rule that matches decides; when none matches the answer is deny. A rule
granting ``identified`` (PHI) must name its sites and roles explicitly: a wildcard that
releases PHI to the whole federation is refused when the policy is loaded.

TOML form (a file, or a ``[policy]`` table in the node config)::

    small_count_threshold = 5
    [[rule]]
    name = "treating clinicians at St Mary"
    site = ["st-mary", "9f2c…"]
    role = "clinician"
    purpose = "treatment"
    level = "identified"
    [[rule]]
    name = "research counts"
    site = "*"
    role = ["researcher", "clinician"]
    purpose = "research"
    level = "count"
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from node.net.assertion import PURPOSES, ROLES

WILDCARD = "*"
DEFAULT_THRESHOLD = 5


class PolicyError(ValueError):
    """The site policy file cannot be used as written (the message names the rule)."""


class Level(enum.StrEnum):
    DENY = "deny"
    COUNT = "count"                 # aggregate counts, small counts suppressed
    DEIDENTIFIED = "deidentified"   # metadata without PHI, pseudonymous ids
    IDENTIFIED = "identified"       # PHI, for named sites and roles only


class Asker(Protocol):
    """What policy reads from a verified user assertion (``UserAssertion`` fits)."""

    @property
    def role(self) -> str: ...
    @property
    def purpose(self) -> str: ...
    @property
    def home_node(self) -> str: ...


class Site(Protocol):
    """The requesting site as the roster knows it (``roster.Member`` fits)."""

    @property
    def node_id(self) -> str: ...
    @property
    def name(self) -> str: ...


@dataclass(frozen=True)
class Rule:
    name: str
    sites: tuple[str, ...]
    roles: tuple[str, ...]
    purposes: tuple[str, ...]
    level: Level

    def matches(self, asker: Asker, site: Site) -> bool:
        return (_hit(self.sites, (site.node_id.lower(), site.name))
                and _hit(self.roles, (asker.role,)) and _hit(self.purposes, (asker.purpose,)))


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    small_count_threshold: int = DEFAULT_THRESHOLD


@dataclass(frozen=True)
class Decision:
    level: Level
    rule: str | None     # the rule that decided; None = default deny
    reason: str

    @property
    def allowed(self) -> bool:
        return self.level is not Level.DENY


def _hit(allowed: tuple[str, ...], values: tuple[str, ...]) -> bool:
    return WILDCARD in allowed or any(v in allowed for v in values)


def decide(policy: Policy, asker: Asker, requesting_site: Site) -> Decision:
    """The level this site answers at. ``asker`` must already be verified (see assertion)."""
    if asker.home_node.lower() != requesting_site.node_id.lower():
        return Decision(Level.DENY, None, "assertion's home site is not the requesting site")
    for rule in policy.rules:
        if rule.matches(asker, requesting_site):
            return Decision(rule.level, rule.name,
                            f"rule {rule.name!r}: {asker.role}/{asker.purpose} from "
                            f"{requesting_site.name} -> {rule.level.value}")
    return Decision(Level.DENY, None, f"no rule covers {asker.role}/{asker.purpose} from "
                                      f"{requesting_site.name}; default deny")


def suppress_count(n: int, threshold: int = DEFAULT_THRESHOLD) -> int | str:
    """Counts 1..threshold-1 become "<threshold" so small groups cannot be singled out."""
    if n < 0:
        raise ValueError("a count cannot be negative")
    return f"<{threshold}" if 0 < n < threshold else n


# -- loading -----------------------------------------------------------------
def _names(raw: Any, key: str, rule: str, allowed: tuple[str, ...] | None) -> tuple[str, ...]:
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not values or not all(
            isinstance(v, str) and v.strip() for v in values):
        raise PolicyError(f"rule {rule!r}: {key} must be a name or a non-empty list of names")
    names = tuple(v.strip().lower() if key == "site" and len(v.strip()) == 64 else v.strip()
                  for v in values)
    bad = [v for v in names if allowed is not None and v != WILDCARD and v not in allowed]
    if bad:
        raise PolicyError(f"rule {rule!r}: unknown {key} {bad[0]!r} "
                          f"(expected one of {', '.join(allowed or ())} or '*')")
    return names


def _rule(raw: Any, index: int) -> Rule:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"rule #{index + 1} must be a table")
    name = raw.get("name", f"rule #{index + 1}")
    if not isinstance(name, str) or not name.strip():
        raise PolicyError(f"rule #{index + 1}: name must be text")
    unknown = set(raw) - {"name", "site", "role", "purpose", "level"}
    if unknown:
        raise PolicyError(f"rule {name!r}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        level = Level(str(raw.get("level")))
    except ValueError:
        raise PolicyError(f"rule {name!r}: level must be one of "
                          f"{', '.join(lv.value for lv in Level)}") from None
    rule = Rule(name, _names(raw.get("site", WILDCARD), "site", name, None),
                _names(raw.get("role", WILDCARD), "role", name, ROLES),
                _names(raw.get("purpose", WILDCARD), "purpose", name, PURPOSES), level)
    if level is Level.IDENTIFIED and (WILDCARD in rule.sites or WILDCARD in rule.roles):
        raise PolicyError(f"rule {name!r}: 'identified' (PHI) must name its sites and roles; "
                          "'*' is not allowed there")
    return rule


def policy_from_dict(doc: Mapping[str, Any]) -> Policy:
    from node.similar.sitepolicy import KEYS as SIMILARITY_KEYS, SimilarityPolicyError, similarity_policy

    unknown = set(doc) - {"rule", "small_count_threshold", *SIMILARITY_KEYS}
    if unknown:
        raise PolicyError(f"unknown policy key(s): {', '.join(sorted(unknown))}")
    try:
        similarity_policy(doc)  # the similarity allowlist (node/similar/sitepolicy.py)
    except SimilarityPolicyError as exc:
        raise PolicyError(str(exc)) from None
    threshold = doc.get("small_count_threshold", DEFAULT_THRESHOLD)
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= 1000:
        raise PolicyError("small_count_threshold must be a whole number from 1 to 1000")
    rules = doc.get("rule", [])
    if not isinstance(rules, list):
        raise PolicyError("'rule' must be an array of tables ([[rule]])")
    return Policy(tuple(_rule(r, i) for i, r in enumerate(rules)), threshold)


def load_policy(text: str) -> Policy:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy is not valid TOML: {exc}") from exc
    return policy_from_dict(doc)

