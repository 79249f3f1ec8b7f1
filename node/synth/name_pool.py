"""Patient names with a hospital's variety: tens of thousands of family names and
thousands of given names, common ones common (``node.synth.metadata``).

A real archive of 10^5 patients holds tens of thousands of distinct family names whose
frequencies fall off roughly as a power of their rank (the commonest surname is about
1 % of the population, most names belong to a handful of patients). The pool is a head
of real common names followed by a long tail composed from syllables, each drawn with a
Zipf-like weight 1 / (rank + offset). The pool is built once from a fixed seed, so every
fill (whatever its own seed) draws from the same names; a PN value is
``FAMILY^GIVEN`` or ``FAMILY^GIVEN^MIDDLE``.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate

from .names import FAMILY, FEMALE, MALE

FAMILY_NAMES = 50_000
GIVEN_NAMES = 3_000          # per sex
MIDDLE_SHARE = 0.4           # patients with a middle name
_POOL_SEED = 20261207
_FAMILY_OFFSET = 15          # commonest family name ~0.8 %, as in large national registers
_GIVEN_OFFSET = 6            # commonest given name ~3 %

_HEAD_FAMILY = ("SMITH", "JOHNSON", "WILLIAMS", "BROWN", "JONES", "GARCIA") + FAMILY + (
    "MILLER", "DAVIS", "RODRIGUEZ", "WILSON", "LOPEZ",
    "GONZALEZ", "TAYLOR", "THOMAS", "MOORE", "JACKSON", "LEE", "THOMPSON", "WHITE", "HARRIS",
    "CLARK", "LEWIS", "ROBINSON", "WALKER", "YOUNG", "ALLEN", "KING", "WRIGHT", "SCOTT",
    "HILL", "GREEN", "ADAMS", "BAKER", "NELSON", "CARTER", "MITCHELL", "PEREZ", "ROBERTS",
    "SCHMIDT", "SCHNEIDER", "MEYER", "WEBER", "WAGNER", "BECKER", "SCHULZ", "HOFFMANN",
    "KOCH", "RICHTER", "KLEIN", "WOLF", "SCHRODER", "NEUMANN", "SCHWARZ", "BRAUN", "ZIMMERMANN",
    "RUSSO", "FERRARI", "ESPOSITO", "BIANCHI", "ROMANO", "COLOMBO", "BRUNO", "GALLO",
    "DUPONT", "DURAND", "LEROY", "MOREAU", "SIMON", "LAURENT", "LEFEBVRE", "MICHEL",
    "FERNANDEZ", "SANCHEZ", "MARTINEZ", "GOMEZ", "DIAZ", "ALVAREZ", "ROMERO", "RUIZ",
    "DEVRIES", "VANDIJK", "BAKKER", "VISSER", "SMIT", "MEIJER", "DEBOER", "MULDER",
    "NOWAK", "WISNIEWSKI", "WOJCIK", "KOWALCZYK", "KAMINSKI", "LEWANDOWSKI", "ZIELINSKI",
    "HANSEN", "JENSEN", "PEDERSEN", "LARSEN", "OLSEN", "JOHANSSON", "KARLSSON", "NILSSON",
    "MURPHY", "KELLY", "OBRIEN", "RYAN", "OCONNOR", "BYRNE", "SULLIVAN", "MCCARTHY",
    "IVANOV", "SMIRNOV", "KUZNETSOV", "POPOV", "SOKOLOV", "LEBEDEV", "KOZLOV", "NOVIKOV",
    "KIM", "PARK", "CHOI", "WANG", "CHEN", "ZHANG", "LIU", "YANG", "HUANG", "ZHAO", "WU",
    "SATO", "SUZUKI", "TAKAHASHI", "WATANABE", "ITO", "YAMAMOTO", "NAKAMURA", "KOBAYASHI",
    "SHAH", "SINGH", "KUMAR", "SHARMA", "GUPTA", "KHAN", "ALI", "AHMED", "HASSAN",
    "YILMAZ", "KAYA", "DEMIR", "SAHIN", "CELIK", "OZTURK", "PAPADOPOULOS", "GEORGIOU",
)
_HEAD_FEMALE = FEMALE + (
    "MARY", "PATRICIA", "LINDA", "BARBARA", "ELIZABETH", "SUSAN", "JESSICA", "SARAH",
    "KAREN", "NANCY", "LISA", "MARGARET", "SANDRA", "ASHLEY", "EMILY", "DONNA", "MICHELLE",
    "CAROL", "AMANDA", "MELISSA", "DEBORAH", "STEPHANIE", "REBECCA", "SHARON", "CYNTHIA",
    "KATHLEEN", "AMY", "SHIRLEY", "ANGELA", "HELEN", "BRENDA", "PAMELA", "NICOLE", "SAMANTHA",
    "KATHARINA", "MONIKA", "PETRA", "SABINE", "URSULA", "CHIARA", "FRANCESCA", "GIULIA",
    "CAMILLE", "MANON", "CHLOE", "LEA", "CARMEN", "PILAR", "LUCIA", "ELENI", "OLGA",
    "TATIANA", "AGNIESZKA", "KATARZYNA", "INGRID", "ASTRID", "FREYA", "SIOBHAN", "AOIFE",
    "YUKI", "HARUKA", "MEI", "LING", "PRIYA", "ANANYA", "FATIMA", "AYSE", "ZEYNEP",
)
_HEAD_MALE = MALE + (
    "JAMES", "ROBERT", "MICHAEL", "WILLIAM", "RICHARD", "JOSEPH", "CHARLES", "CHRISTOPHER",
    "DANIEL", "MATTHEW", "ANTHONY", "MARK", "DONALD", "STEVEN", "ANDREW", "JOSHUA",
    "KENNETH", "KEVIN", "BRIAN", "GEORGE", "EDWARD", "RONALD", "TIMOTHY", "JASON",
    "JEFFREY", "RYAN", "JACOB", "GARY", "NICHOLAS", "ERIC", "STEPHEN", "JONATHAN",
    "STEFAN", "MICHAEL", "WOLFGANG", "JURGEN", "KLAUS", "GIUSEPPE", "FRANCESCO", "LUCA",
    "ALESSANDRO", "PIERRE", "NICOLAS", "JULIEN", "ANTOINE", "JAVIER", "CARLOS", "ANTONIO",
    "MANUEL", "DIMITRIS", "NIKOS", "IVAN", "SERGEI", "DMITRI", "PIOTR", "KRZYSZTOF",
    "LARS", "ERIK", "NILS", "SEAN", "CIARAN", "HIROSHI", "TAKESHI", "WEI", "JUN", "RAHUL",
    "ARJUN", "MOHAMMED", "AHMET", "MEHMET", "OMAR",
)

_ONSETS = ("B", "BR", "C", "CH", "D", "DR", "F", "FR", "G", "GR", "H", "J", "K", "KR", "L",
           "M", "N", "P", "PR", "R", "S", "SCH", "SH", "ST", "T", "TR", "V", "W", "Z", "")
_VOWELS = ("A", "E", "I", "O", "U", "AI", "EI", "OU", "IA", "IE", "Y")
_CODAS = ("", "", "", "N", "R", "L", "S", "T", "K", "M", "ND", "RT", "LD", "NS", "CK")
_FAMILY_ENDINGS = ("", "", "", "", "SON", "SEN", "MAN", "MANN", "ER", "EL", "OV", "OVA",
                   "SKI", "SKA", "ESCU", "AKIS", "INEN", "ELLI", "INI", "EZ", "ES", "AS",
                   "BERG", "STEIN", "WOOD", "FORD", "TON", "LEY", "AUD", "IC", "ENKO")
_FEMALE_ENDINGS = ("A", "A", "IA", "INA", "ELLE", "ETTE", "INE", "ISSA", "EEN", "Y", "ENE")
_MALE_ENDINGS = ("", "", "O", "AN", "ER", "US", "EL", "IN", "OR", "IAN", "ARD", "OS")


@dataclass(frozen=True)
class Weighted:
    """Names in rank order with cumulative Zipf-like weights (one ``random()`` per draw)."""

    names: tuple[str, ...]
    cumulative: tuple[float, ...]

    def draw(self, rng: random.Random) -> str:
        x = rng.random() * self.cumulative[-1]
        return self.names[bisect.bisect_right(self.cumulative, x)]

    def share(self, name: str) -> float:
        """The probability of drawing ``name`` (0 if it is not in the pool)."""
        i = self.names.index(name)
        prev = self.cumulative[i - 1] if i else 0.0
        return (self.cumulative[i] - prev) / self.cumulative[-1]


@dataclass(frozen=True)
class NamePool:
    family: Weighted
    female: Weighted
    male: Weighted

    def patient_name(self, rng: random.Random, female: bool) -> str:
        """A PN value: FAMILY^GIVEN, or FAMILY^GIVEN^MIDDLE for about 40 % of patients."""
        given = self.female if female else self.male
        name = f"{self.family.draw(rng)}^{given.draw(rng)}"
        if rng.random() < MIDDLE_SHARE:
            name += f"^{given.draw(rng)}"
        return name


def _syllable(rng: random.Random) -> str:
    return rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)


def _compose(rng: random.Random, head: tuple[str, ...], total: int, syllables: tuple[int, ...],
             endings: tuple[str, ...]) -> tuple[str, ...]:
    """``head`` (deduplicated, in order) then composed names up to ``total``, all
    distinct, 3-14 letters."""
    out = list(dict.fromkeys(head))
    seen = set(out)
    while len(out) < total:
        word = "".join(_syllable(rng) for _ in range(rng.choice(syllables)))
        word += rng.choice(endings)
        if 3 <= len(word) <= 14 and word not in seen:
            seen.add(word)
            out.append(word)
    return tuple(out)


def _weighted(names: tuple[str, ...], offset: int) -> Weighted:
    return Weighted(names, tuple(accumulate(1.0 / (rank + offset) for rank in range(len(names)))))


@lru_cache(maxsize=1)
def name_pool() -> NamePool:
    """The pool (built once per process, ~0.2 s; an immutable value)."""
    rng = random.Random(_POOL_SEED)
    family = _compose(rng, _HEAD_FAMILY, FAMILY_NAMES, (1, 2, 2, 2, 3), _FAMILY_ENDINGS)
    female = _compose(rng, _HEAD_FEMALE, GIVEN_NAMES, (1, 1, 2, 2), _FEMALE_ENDINGS)
    male = _compose(rng, _HEAD_MALE, GIVEN_NAMES, (1, 1, 2, 2), _MALE_ENDINGS)
    return NamePool(_weighted(family, _FAMILY_OFFSET), _weighted(female, _GIVEN_OFFSET),
                    _weighted(male, _GIVEN_OFFSET))
