"""Blocking keys: two records are compared only if they share at least one key.

A key is ``<block name>:<part>[:<part>...]``, only ``[A-Za-z0-9._:-]``, at most 60 characters, so the registry
can store keys as ``meta.tag`` codes and find every candidate with one ``_tag`` search. Identifier and phone
values are hashed (short SHA-1) so that tags carry no raw identifiers.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Callable, Mapping
from typing import Any

from . import normalise as nz
from .comparators import ESTIMATED_DAYS
from .rules import Rules

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def _h(s: str) -> str:
    return hashlib.sha1(s.encode()).hexdigest()[:12]


def _date(p: Mapping[str, Any]) -> tuple[int, int, int] | None:
    v = nz.birth_date(p)
    if not v:
        return None
    s = v[0]
    return int(s[:4]), int(s[5:7]), int(s[8:10])


def _precise(d: tuple[int, int, int] | None) -> bool:
    return d is not None and d[2] > 0 and (d[1], d[2]) not in ESTIMATED_DAYS


def _phon(tokens: tuple[str, ...]) -> list[str]:
    return list(dict.fromkeys(nz.phonetic(t)[:8].upper() for t in tokens if len(t) > 1))


def _shared_ids(p: Mapping[str, Any], rules: Rules) -> list[str]:
    shared = set(rules.shared_identifier_systems)
    return [_h(x) for x in nz.identifiers(p) if x.rpartition("|")[0] in shared]


def _day_month(p: Mapping[str, Any]) -> list[str]:
    d = _date(p)
    if not _precise(d):
        return []
    assert d is not None
    a, b = sorted((d[1], d[2]))
    return [f"{a:02d}{b:02d}"]


def _full(p: Mapping[str, Any]) -> list[str]:
    d = _date(p)
    if not _precise(d):
        return []
    assert d is not None
    a, b = sorted((d[1], d[2]))
    return [f"{d[0]:04d}{a:02d}{b:02d}"]  # day/month sorted: swaps land in the same block


def _name_pairs(p: Mapping[str, Any]) -> list[str]:
    """Sorted (given, family) phonetic pairs: the same key whichever way round the names were recorded."""
    gs, fs = _phon(nz.given(p)[:3]), _phon(nz.family(p)[:2])
    return list(dict.fromkeys("-".join(sorted((g, f))) for g in gs for f in fs if g != f))


PARTS: dict[str, Callable[[Mapping[str, Any], Rules], list[str]]] = {
    "family.phonetic": lambda p, r: _phon(nz.family(p)),
    "given.phonetic": lambda p, r: _phon(nz.given(p)),
    "names.phonetic": lambda p, r: _phon(nz.given(p) + nz.family(p)),
    "family.initial": lambda p, r: [t[0].upper() for t in nz.family(p)[:1]],
    "given.initial": lambda p, r: [t[0].upper() for t in nz.given(p)[:1]],
    "names.pair": lambda p, r: _name_pairs(p),
    "birthDate.year": lambda p, r: [s[:4] for s in nz.birth_date(p)],
    "birthDate.decade": lambda p, r: [s[:3] for s in nz.birth_date(p)],
    "birthDate.day_month": lambda p, r: _day_month(p),
    "birthDate.full": lambda p, r: _full(p),
    "gender": lambda p, r: [g[0].upper() for g in nz.gender(p)],
    "identifier.shared": _shared_ids,
    "identifier.any": lambda p, r: [_h(x) for x in nz.identifiers(p)],
    "telecom.phone": lambda p, r: [_h(x) for x in nz.phones(p)],
}


def block_keys(patient: Mapping[str, Any], rules: Rules) -> list[str]:
    """Blocking keys of a FHIR Patient dict under ``rules``: deterministic, sorted, de-duplicated."""
    keys: set[str] = set()
    for block in rules.blocking:
        values = [PARTS[part](patient, rules) for part in block.parts]
        for combo in itertools.product(*values):
            key = ":".join((block.name, *(_SAFE.sub("", c) for c in combo)))
            keys.add(key[:60])
    return sorted(keys)
