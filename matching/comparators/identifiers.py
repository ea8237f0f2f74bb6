"""Identifiers by system: shared (national) systems versus facilities' local systems."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from rapidfuzz.distance import DamerauLevenshtein

from ..normalise import folded_identifier, split_identifier
from .base import Column, Comparator, register

#: one system's values on a record: (as the registry keys them, folded to [a-z0-9])
Values = tuple[frozenset[str], frozenset[str]]


@register
class Identifier(Comparator):
    """Identifiers (``system|value``) of the systems selected by ``systems``: ``shared`` (the rules file's
    ``shared_identifier_systems``: national ids...), ``local`` (every other system: facility ids) or a list.
    null = no system in common; exact = a common system with equal values; typo = one edit apart (values of
    6 characters or more); else = common system, different values.

    What "equal" means depends on the system. A shared system's values are compared folded to [a-z0-9]
    (one national id typed with and without dashes, in either case, is one id). A local (facility) system
    keys its records by the value as the registry keeps it (NFKC, trimmed): two different records of one
    facility necessarily hold different values, so values equal only once folded (``A$1`` / ``A|1``,
    ``ab-12`` / ``AB12``) are the facility saying "two records": ``typo`` at most, never ``exact`` (which
    makes the guards step aside)."""

    name = "identifier"
    kinds = frozenset({"identifier"})
    levels = ("exact", "typo", "else")
    defaults: ClassVar[Mapping[str, Any]] = {"systems": "shared"}

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> list[str]:
        problems = [f"{k}: unknown parameter (known: systems)" for k in params if k != "systems"]
        s = params.get("systems", "shared")
        if not (s in ("shared", "local") or (isinstance(s, list) and all(isinstance(x, str) for x in s))):
            problems.append(f"systems: must be 'shared', 'local' or a list of system URIs, got {s!r}")
        return problems

    def selects(self, system: str) -> bool:
        s = self.params["systems"]
        if s == "shared":
            return system in self.context.shared_systems
        if s == "local":
            return system not in self.context.shared_systems
        return system in s

    def shown(self, values: tuple[str, ...]) -> tuple[str, ...]:
        """The identifiers of ``values`` this field compares, as it compares them (shared systems folded)."""
        out = []
        for entry in values:
            system, value = split_identifier(entry)
            if self.selects(system):
                shared = system in self.context.shared_systems
                out.append(f"{system}|{folded_identifier(value)}" if shared else entry)
        return tuple(dict.fromkeys(out))

    def compare(self, left: Column, right: Column, li: np.ndarray, ri: np.ndarray) -> np.ndarray:
        lsel, rsel = self._selected(left), self._selected(right)
        shared = self.context.shared_systems
        out = np.zeros(len(li), dtype=np.int8)
        for p, (i, j) in enumerate(zip(li.tolist(), ri.tolist(), strict=True)):
            a, b = lsel[i], rsel[j]
            if not a or not b:
                continue
            best = 0
            for system, (kept_a, folded_a) in a.items():
                other = b.get(system)
                if other is None:
                    continue
                kept_b, folded_b = other
                if folded_a & folded_b:
                    if system in shared or kept_a & kept_b:
                        best = 1
                        break
                    lv = 2  # a facility's two records whose numbers differ in case or punctuation only
                else:
                    typo = any(
                        len(x) >= 6 and DamerauLevenshtein.distance(x, y, score_cutoff=1) <= 1
                        for x in folded_a
                        for y in folded_b
                    )
                    lv = 2 if typo else 3
                best = lv if best == 0 else min(best, lv)
            out[p] = best
        return out

    def _selected(self, col: Column) -> list[dict[str, Values]]:
        key = "_sel_" + repr(self.params["systems"])
        cache: dict[str, list[dict[str, Values]]] = col.__dict__.setdefault("_identifier_cache", {})
        if key not in cache:
            rows: list[dict[str, Values]] = []
            for v in col.values:
                d: dict[str, set[str]] = {}
                for entry in v:
                    system, value = split_identifier(entry)
                    if self.selects(system):
                        d.setdefault(system, set()).add(value)
                rows.append(
                    {s: (frozenset(vs), frozenset(map(folded_identifier, vs))) for s, vs in d.items()}
                )
            cache[key] = rows
        return cache[key]
