"""Identifiers by system: shared (national) systems versus facilities' local systems."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
from rapidfuzz.distance import DamerauLevenshtein

from .base import Column, Comparator, register


@register
class Identifier(Comparator):
    """Identifiers (``system|value``) of the systems selected by ``systems``: ``shared`` (the rules file's
    ``shared_identifier_systems``: national ids...), ``local`` (every other system: facility ids) or a list.
    null = no system in common; exact = a common system with equal values; typo = one edit apart (only
    meaningful for shared systems); else = common system, different values."""

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

    def compare(self, left: Column, right: Column, li: np.ndarray, ri: np.ndarray) -> np.ndarray:
        lsel, rsel = self._selected(left), self._selected(right)
        out = np.zeros(len(li), dtype=np.int8)
        for p, (i, j) in enumerate(zip(li.tolist(), ri.tolist(), strict=True)):
            a, b = lsel[i], rsel[j]
            if not a or not b:
                continue
            best = 0
            for system, va in a.items():
                vb = b.get(system)
                if vb is None:
                    continue
                if va & vb:
                    best = 1
                    break
                typo = any(DamerauLevenshtein.distance(x, y, score_cutoff=1) <= 1 for x in va for y in vb)
                lv = 2 if typo and len(next(iter(va))) >= 6 else 3
                best = lv if best == 0 else min(best, lv)
            out[p] = best
        return out

    def _selected(self, col: Column) -> list[dict[str, set[str]]]:
        key = "_sel_" + repr(self.params["systems"])
        cache: dict[str, list[dict[str, set[str]]]] = col.__dict__.setdefault("_identifier_cache", {})
        if key not in cache:
            rows: list[dict[str, set[str]]] = []
            for v in col.values:
                d: dict[str, set[str]] = {}
                for sv in v:
                    system, _, value = sv.rpartition("|")
                    if self.selects(system):
                        d.setdefault(system, set()).add(value)
                rows.append(d)
            cache[key] = rows
        return cache[key]
