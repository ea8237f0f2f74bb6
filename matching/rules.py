"""The rules model: frozen dataclasses a rules document becomes (see :mod:`matching.loading` and the
commented ``rules/default.yaml``)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from .comparators import Comparator
from .normalise import EXTRACTORS

OUTCOMES = ("no_match", "potential", "match")
BLOCK_PARTS = (
    "family.phonetic",
    "given.phonetic",
    "names.phonetic",
    "family.initial",
    "given.initial",
    "names.pair",
    "birthDate.year",
    "birthDate.decade",
    "birthDate.year_window",
    "birthDate.day_month",
    "birthDate.full",
    "gender",
    "identifier.shared",
    "identifier.any",
    "telecom.phone",
    "address.postalCode",
)
TOP_KEYS = {
    "name",
    "description",
    "version",
    "trained",
    "shared_identifier_systems",
    "aliases",
    "english_nicknames",
    "prior",
    "thresholds",
    "fields",
    "swap",
    "deterministic",
    "blocking",
    "max_block_size",
    "clustering",
}


@dataclass(frozen=True)
class Field:
    name: str
    path: str
    comparator_name: str
    params: Mapping[str, Any]
    m: tuple[float, ...]  # per non-null level, in the comparator's order
    u: tuple[float, ...]
    comparator: Comparator = field(compare=False, repr=False)
    weights: np.ndarray = field(compare=False, repr=False)  # index 0 (null) = 0
    frequencies: Mapping[str, float] = field(default_factory=dict)  # term frequency of common values

    @property
    def kind(self) -> str:
        return EXTRACTORS[self.path][1]

    @cached_property
    def level_names(self) -> tuple[str, ...]:
        return self.comparator.level_names()


@dataclass(frozen=True)
class DeterministicRule:
    name: str
    when: Mapping[str, frozenset[str]]
    then: str | None  # decides the outcome (first firing rule wins) ...
    at_most: str | None  # ... or caps it (every firing cap applies, after everything else)
    # the rule does not fire when any of these holds (each: field -> allowed levels, all of them met)
    unless: tuple[Mapping[str, frozenset[str]], ...] = ()


@dataclass(frozen=True)
class Block:
    name: str
    parts: tuple[str, ...]


@dataclass(frozen=True)
class Rules:
    name: str
    auto_threshold: float
    potential_threshold: float
    prior: float
    fields: tuple[Field, ...]
    deterministic: tuple[DeterministicRule, ...]
    blocking: tuple[Block, ...]
    shared_identifier_systems: tuple[str, ...]
    swap: tuple[str, str] | None
    max_block_size: int
    min_cross_pair: str  # clustering: least outcome every pair across two merged clusters needs
    source: Mapping[str, Any] = field(compare=False, repr=False)

    @cached_property
    def explain_table(
        self,
    ) -> tuple[tuple[str, str, tuple[str, ...], tuple[float, ...], tuple[float, ...]], ...]:
        """Per field: (name, field compared on the right when names are swapped, level names, m, u)."""
        out = []
        for f in self.fields:
            other = f.name
            if self.swap and f.name in self.swap:
                other = self.swap[1] if f.name == self.swap[0] else self.swap[0]
            out.append((f.name, other, f.level_names, (0.0, *f.m), (0.0, *f.u)))
        return tuple(out)

    @cached_property
    def compiled_rules(self) -> tuple[tuple[tuple[int, np.ndarray], ...], ...]:
        """Per deterministic rule: (field index, allowed-level mask) for each ``when`` condition."""
        return tuple(self._compile(r.when) for r in self.deterministic)

    @cached_property
    def compiled_unless(self) -> tuple[tuple[tuple[tuple[int, np.ndarray], ...], ...], ...]:
        """Per deterministic rule: its ``unless`` alternatives, each compiled like ``when``."""
        return tuple(tuple(self._compile(alt) for alt in r.unless) for r in self.deterministic)

    def _compile(self, conditions: Mapping[str, frozenset[str]]) -> tuple[tuple[int, np.ndarray], ...]:
        index = {f.name: k for k, f in enumerate(self.fields)}
        conds = []
        for fname, allowed in conditions.items():
            k = index[fname]
            names = self.fields[k].level_names
            conds.append((k, np.array([nm in allowed for nm in names], dtype=bool)))
        return tuple(conds)

    @cached_property
    def extracted(self) -> OrderedDict[tuple[str, str, str], dict[str, tuple[str, ...]]]:
        """Normalised values of stored records under these rules, by (id, versionId, lastUpdated): kept on
        the object so that they go with it (see :func:`matching.scoring.extract`)."""
        return OrderedDict()

    @property
    def prior_weight(self) -> float:
        return math.log2(self.prior / (1.0 - self.prior))

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that :func:`load_rules` accepts and that yields equal rules."""
        d: dict[str, Any] = {
            k: v for k, v in self.source.items() if k not in {"fields", "thresholds", "prior"}
        }
        d["prior"] = self.prior
        d["thresholds"] = {"auto_match": self.auto_threshold, "potential_match": self.potential_threshold}
        d["fields"] = {
            f.name: {
                "path": f.path,
                "comparator": f.comparator_name,
                **({"params": dict(f.params)} if f.params else {}),
                "levels": {
                    lv: {"m": m, "u": u} for lv, m, u in zip(f.level_names[1:], f.m, f.u, strict=True)
                },
                **({"frequencies": dict(f.frequencies)} if f.frequencies else {}),
            }
            for f in self.fields
        }
        plain: dict[str, Any] = _plain(d)
        return plain


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x
