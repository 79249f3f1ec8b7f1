"""Site policy: first match wins, default deny, PHI only for named sites and roles."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from node.policy import (Decision, Level, Policy, PolicyError, decide, load_policy,
                         policy_from_dict, suppress_count)

ST_MARY = "a" * 64
NORTH = "b" * 64
EAST = "c" * 64

POLICY_TOML = f"""
small_count_threshold = 10

[[rule]]
name = "no cardiology export"
site = "east"
level = "deny"

[[rule]]
name = "treating clinicians at St Mary"
site = ["st-mary", "{NORTH.upper()}"]
role = "clinician"
purpose = "treatment"
level = "identified"

[[rule]]
name = "clinicians elsewhere see metadata"
role = "clinician"
purpose = ["treatment", "operations"]
level = "deidentified"

[[rule]]
name = "research counts"
role = ["researcher", "clinician"]
purpose = "research"
level = "count"
"""


@dataclass(frozen=True)
class Site:
    node_id: str
    name: str


@dataclass(frozen=True)
class Asked:
    role: str
    purpose: str
    home_node: str


SITES = {"st-mary": Site(ST_MARY, "st-mary"), "north": Site(NORTH, "north"),
         "east": Site(EAST, "east"), "west": Site("d" * 64, "west")}


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICY_TOML)


@pytest.mark.parametrize("site,role,purpose,level,rule", [
    ("st-mary", "clinician", "treatment", Level.IDENTIFIED, "treating clinicians at St Mary"),
    ("north", "clinician", "treatment", Level.IDENTIFIED, "treating clinicians at St Mary"),
    ("west", "clinician", "treatment", Level.DEIDENTIFIED, "clinicians elsewhere see metadata"),
    ("st-mary", "clinician", "research", Level.COUNT, "research counts"),
    ("west", "researcher", "research", Level.COUNT, "research counts"),
    ("west", "researcher", "treatment", Level.DENY, None),
    ("st-mary", "admin", "operations", Level.DENY, None),
    ("east", "clinician", "treatment", Level.DENY, "no cardiology export"),
])
def test_decisions_for_roles_and_sites(policy: Policy, site: str, role: str, purpose: str,
                                       level: Level, rule: str | None) -> None:
    s = SITES[site]
    decision = decide(policy, Asked(role, purpose, s.node_id), s)
    assert (decision.level, decision.rule) == (level, rule)
    assert decision.allowed is (level is not Level.DENY)
    assert decision.reason


def test_first_matching_rule_wins_over_later_broader_rules() -> None:
    p = policy_from_dict({"rule": [
        {"name": "narrow", "site": "west", "level": "count"},
        {"name": "broad", "role": "researcher", "level": "deidentified"}]})
    west = SITES["west"]
    assert decide(p, Asked("researcher", "research", west.node_id), west).rule == "narrow"
    north = SITES["north"]
    assert decide(p, Asked("researcher", "research", north.node_id), north).rule == "broad"


def test_empty_policy_denies_everything() -> None:
    s = SITES["west"]
    assert decide(Policy(), Asked("admin", "operations", s.node_id), s) == Decision(
        Level.DENY, None, "no rule covers admin/operations from west; default deny")


def test_asker_claiming_another_home_site_is_denied(policy: Policy) -> None:
    """Never trust the asker: the assertion's site must be the site that asks."""
    decision = decide(policy, Asked("clinician", "treatment", ST_MARY), SITES["west"])
    assert decision.level is Level.DENY and "home site" in decision.reason


@pytest.mark.parametrize("text,msg", [
    ('[[rule]]\nsite = "*"\nrole = "clinician"\nlevel = "identified"', "must name its sites"),
    ('[[rule]]\nsite = "st-mary"\nlevel = "identified"', "must name its sites"),
    ('[[rule]]\nrole = "surgeon"\nlevel = "count"', "unknown role"),
    ('[[rule]]\npurpose = "marketing"\nlevel = "count"', "unknown purpose"),
    ('[[rule]]\nlevel = "everything"', "level must be one of"),
    ('[[rule]]\nlevel = "count"\ndepartment = "x"', "unknown key"),
    ('[[rule]]\nsite = []\nlevel = "count"', "non-empty list"),
    ("small_count_threshold = 0", "small_count_threshold"),
    ("small_count_threshold = true", "small_count_threshold"),
    ("rule = 3", "array of tables"),
    ("[[rule]\n", "not valid TOML"),
    ("[[rules]]\nlevel = 'count'", "unknown policy key"),
])
def test_bad_policy_is_refused_with_reason(text: str, msg: str) -> None:
    with pytest.raises(PolicyError, match=msg):
        load_policy(text)


def test_threshold_is_configurable(policy: Policy) -> None:
    assert policy.small_count_threshold == 10
    assert load_policy("").small_count_threshold == 5


@pytest.mark.parametrize("n,threshold,shown", [
    (0, 5, 0), (1, 5, "<5"), (4, 5, "<5"), (5, 5, 5), (120, 5, 120), (9, 10, "<10"),
    (10, 10, 10)])
def test_suppress_count(n: int, threshold: int, shown: int | str) -> None:
    assert suppress_count(n, threshold) == shown


def test_suppress_count_rejects_negative() -> None:
    with pytest.raises(ValueError):
        suppress_count(-1)
