"""Blocking keys: two records are compared only if one is filed under a key the other is looked up by.

A key is ``<block name>:<part>[:<part>...]``, only ``[A-Za-z0-9._:-]``, at most 60 characters, so the registry
can store keys as ``meta.tag`` codes and find every candidate with one ``_tag`` search. Identifier and phone
values are hashed (short SHA-1) so that tags carry no raw identifiers.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from . import normalise as nz
from .comparators import ESTIMATED_DAYS
from .rules import Block, Rules

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _h(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()[:12]


class _Facts:
    """The normalised values block keys are made of, each computed at most once per record."""

    def __init__(self, patient: Mapping[str, Any], rules: Rules) -> None:
        self.p = patient
        self.rules = rules

    @cached_property
    def given(self) -> tuple[str, ...]:
        return nz.given(self.p)

    @cached_property
    def family(self) -> tuple[str, ...]:
        return nz.family(self.p)

    @cached_property
    def date(self) -> tuple[int, int, int] | None:
        v = nz.birth_date(self.p)
        return (int(v[0][:4]), int(v[0][5:7]), int(v[0][8:10])) if v else None

    @cached_property
    def identifiers(self) -> tuple[str, ...]:
        """``system|value``, every system's value folded to [a-z0-9] (:func:`normalise.folded_identifier`),
        shared or local: a facility's numbers differing only in case or punctuation meet (the comparator
        tells them apart), and the keys stay those records were tagged with before the comparator did."""
        folded = (nz.split_identifier(x) for x in nz.identifiers(self.p))
        return tuple(dict.fromkeys(f"{s}|{nz.folded_identifier(v)}" for s, v in folded))


def _precise(d: tuple[int, int, int] | None) -> bool:
    return d is not None and d[2] > 0 and (d[1], d[2]) not in ESTIMATED_DAYS


def _phon(tokens: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(nz.phonetic(t)[:8].upper() for t in tokens if len(t) > 1))


def _shared_ids(f: _Facts) -> list[str]:
    shared = set(f.rules.shared_identifier_systems)
    return [_h(x) for x in f.identifiers if nz.split_identifier(x)[0] in shared]


def _day_month(f: _Facts) -> list[str]:
    d = f.date
    if d is None or not _precise(d):
        return []
    a, b = sorted((d[1], d[2]))
    return [f"{a:02d}{b:02d}"]


def _full(f: _Facts) -> list[str]:
    d = f.date
    if d is None or not _precise(d):
        return []
    a, b = sorted((d[1], d[2]))
    return [f"{d[0]:04d}{a:02d}{b:02d}"]  # day/month sorted: swaps land in the same block


def _name_pairs(f: _Facts) -> list[str]:
    """Sorted (given, family) phonetic pairs: the same key whichever way round the names were recorded."""
    gs, fs = _phon(f.given[:3]), _phon(f.family[:2])
    return list(dict.fromkeys("-".join(sorted((g, x))) for g in gs for x in fs if g != x))


PARTS: dict[str, Callable[[_Facts], list[str]]] = {
    "family.phonetic": lambda f: _phon(f.family),
    "given.phonetic": lambda f: _phon(f.given),
    "names.phonetic": lambda f: _phon(f.given + f.family),
    "family.initial": lambda f: [t[0].upper() for t in f.family[:1]],
    "given.initial": lambda f: [t[0].upper() for t in f.given[:1]],
    "names.pair": _name_pairs,
    "birthDate.year": lambda f: [f"{f.date[0]:04d}"] if f.date else [],
    "birthDate.decade": lambda f: [f"{f.date[0] // 10:03d}"] if f.date else [],
    # filed under its own year, searched in the years either side too (:data:`SEARCH_PARTS`)
    "birthDate.year_window": lambda f: [f"{f.date[0]:04d}"] if f.date else [],
    "birthDate.day_month": _day_month,
    "birthDate.full": _full,
    "gender": lambda f: [g[0].upper() for g in nz.gender(f.p)],
    "identifier.shared": _shared_ids,
    "identifier.any": lambda f: [_h(x) for x in f.identifiers],
    "telecom.phone": lambda f: [_h(x) for x in nz.phones(f.p)],
    "address.postalCode": lambda f: [x.replace(" ", "") for x in nz.EXTRACTORS["address.postalCode"][0](f.p)],
}


# Parts a record is looked up by more widely than it is filed under. A record is filed under its own birth
# year and looks in the years either side, so two records meet when their years differ by at most one — the
# date comparator's `estimated_years` tolerance. (Filing under three years met records two years apart as
# well: at ≈97k records 107 candidates for the 95th percentile record against 72, and 3 more matches and 18
# more potential matches among ≈60k true pairs; `bench.quality` measures the effect on recall.)
SEARCH_PARTS: dict[str, Callable[[_Facts], list[str]]] = {
    "birthDate.year_window": lambda f: [f"{f.date[0] + d:04d}" for d in (-1, 0, 1)] if f.date else [],
}


_SEARCHING = {**PARTS, **SEARCH_PARTS}


@dataclass(frozen=True)
class BlockKeys:
    """A record's keys: ``index`` — filed under (the registry stores them as tags); ``search`` — looked up
    when finding its candidates (always includes ``index``). Two records are compared when one's ``index``
    meets the other's ``search``; with the shipped parts that relation is symmetric."""

    index: list[str]
    search: list[str]


def keys_of(patient: Mapping[str, Any], rules: Rules) -> BlockKeys:
    """Index and search keys of a FHIR Patient dict under ``rules``: deterministic, sorted, de-duplicated."""
    facts = _Facts(patient, rules)
    index = _keys(facts, rules.blocking, PARTS)
    wide = [block for block in rules.blocking if any(part in SEARCH_PARTS for part in block.parts)]
    if not wide:
        return BlockKeys(index, index)
    return BlockKeys(index, sorted({*index, *_keys(facts, wide, _SEARCHING)}))


def block_keys(patient: Mapping[str, Any], rules: Rules) -> list[str]:
    """The keys a FHIR Patient dict is filed under (:attr:`BlockKeys.index`)."""
    return _keys(_Facts(patient, rules), rules.blocking, PARTS)


def _keys(
    facts: _Facts, blocks: Sequence[Block], parts: Mapping[str, Callable[[_Facts], list[str]]]
) -> list[str]:
    keys: set[str] = set()
    for block in blocks:
        values = [parts[part](facts) for part in block.parts]
        for combo in itertools.product(*values):
            key = ":".join((block.name, *(_SAFE.sub("", c) for c in combo)))
            keys.add(key[:60])
    return sorted(keys)
