"""Comparators: each compares one field of many record pairs at once and returns an ordered level per pair.

Level 0 is always ``null`` (a value missing on either side: neither agreement nor disagreement); levels
1..n follow :attr:`Comparator.levels` from best to worst; the last one is always ``else``. Comparators are
vectorised over pairs (numpy + rapidfuzz's ``process.cpdist``): token pairs are de-duplicated and scored
once, then the best level over a pair's token combinations is kept (so "middle name used as given" and
"several family names" both work).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import DamerauLevenshtein, JaroWinkler, Levenshtein

from .aliases import Aliases
from .normalise import phonetic

NULL = 0


class Vocab:
    """String <-> integer id, shared by all columns of one kind so that fields can be compared across
    (given vs family when names are swapped)."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}
        self.strings: list[str] = []

    def id(self, s: str) -> int:
        i = self.ids.get(s)
        if i is None:
            i = self.ids[s] = len(self.strings)
            self.strings.append(s)
        return i


@dataclass
class Column:
    """One field of a batch of records: ``values[i]`` the normalised tuple, ``tok[i]`` its token ids."""

    values: list[tuple[str, ...]]
    tok: np.ndarray  # (n, k) int32, -1 = padding
    vocab: Vocab

    @classmethod
    def encode(cls, values: list[tuple[str, ...]], vocab: Vocab, max_tokens: int = 4) -> Column:
        k = max(1, min(max_tokens, max((len(v) for v in values), default=1)))
        tok = np.full((len(values), k), -1, dtype=np.int32)
        for i, v in enumerate(values):
            for j, s in enumerate(v[:k]):
                tok[i, j] = vocab.id(s)
        return cls(values, tok, vocab)


@dataclass(frozen=True)
class Context:
    """What comparators may need from the rules file besides their own params."""

    shared_systems: tuple[str, ...] = ()
    aliases: Aliases | None = None


class Comparator:
    name: ClassVar[str]
    kinds: ClassVar[frozenset[str]]
    levels: ClassVar[tuple[str, ...]]
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, params: Mapping[str, Any], context: Context) -> None:
        self.params = {**self.defaults, **params}
        self.context = context

    @classmethod
    def check_params(cls, params: Mapping[str, Any]) -> list[str]:
        """Problems with ``params`` (key: message)."""
        problems = [
            f"{k}: unknown parameter (known: {', '.join(cls.defaults) or 'none'})"
            for k in params
            if k not in cls.defaults
        ]
        for k, v in params.items():
            d = cls.defaults.get(k)
            if isinstance(d, float) and not (isinstance(v, int | float) and 0.0 <= v <= 1.0):
                problems.append(f"{k}: must be a number between 0 and 1, got {v!r}")
            if isinstance(d, int) and not isinstance(d, bool) and not (isinstance(v, int) and 0 <= v <= 10):
                problems.append(f"{k}: must be an integer between 0 and 10, got {v!r}")
        return problems

    def level_names(self) -> tuple[str, ...]:
        return self._level_names

    @property
    def _level_names(self) -> tuple[str, ...]:
        return ("null", *self.levels)

    # -- token based default implementation -------------------------------------------------------
    def token_levels(self, a: list[str], b: list[str]) -> np.ndarray:
        """Level (1-based) of each token pair; ``a[i]`` vs ``b[i]``."""
        raise NotImplementedError

    def compare(self, left: Column, right: Column, li: np.ndarray, ri: np.ndarray) -> np.ndarray:
        lt, rt = left.tok[li], right.tok[ri]  # (p, kl), (p, kr)
        a = np.repeat(lt[:, :, None], rt.shape[1], axis=2)
        b = np.repeat(rt[:, None, :], lt.shape[1], axis=1)
        valid = (a >= 0) & (b >= 0)
        worst = len(self.levels)
        out = np.full(a.shape, worst + 1, dtype=np.int16)
        if valid.any():
            va, vb = a[valid].astype(np.int64), b[valid].astype(np.int64)
            same = va == vb
            lv = np.ones(va.shape, dtype=np.int16)
            diff = ~same
            if diff.any():
                n = np.int64(len(left.vocab.strings) + 1)
                keys, inverse = np.unique(va[diff] * n + vb[diff], return_inverse=True)
                strings = left.vocab.strings
                ua = [strings[int(x)] for x in keys // n]
                ub = [strings[int(x)] for x in keys % n]
                lv[diff] = self.token_levels(ua, ub)[inverse]
            out[valid] = lv
        best = self.combine(out)
        best[best > worst] = NULL
        return best.astype(np.int8)

    def combine(self, out: np.ndarray) -> np.ndarray:
        """Token-pair levels (pairs, left tokens, right tokens) -> pair level: the best one."""
        return out.reshape(out.shape[0], out.shape[1] * out.shape[2]).min(axis=1)


REGISTRY: dict[str, type[Comparator]] = {}


def register(cls: type[Comparator]) -> type[Comparator]:
    REGISTRY[cls.name] = cls
    return cls


def _workers(n: int) -> int:
    """Threads only pay off for big batches (starting them costs ~1 ms)."""
    return -1 if n >= 20_000 else 1


def _jw(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    return np.asarray(
        process.cpdist(a, b, scorer=JaroWinkler.normalized_similarity, workers=_workers(len(a)))
    )


@register
class Exact(Comparator):
    name = "exact"
    kinds = frozenset({"name", "text", "date", "identifier"})
    levels = ("exact", "else")

    def token_levels(self, a: list[str], b: list[str]) -> np.ndarray:
        return np.full(len(a), 2, dtype=np.int16)  # equal tokens never reach here

    def compare(self, left: Column, right: Column, li: np.ndarray, ri: np.ndarray) -> np.ndarray:
        lt, rt = left.tok[li], right.tok[ri]
        has_l, has_r = (lt >= 0).any(axis=1), (rt >= 0).any(axis=1)
        equal = ((lt[:, :, None] == rt[:, None, :]) & (lt >= 0)[:, :, None]).any(axis=(1, 2))
        out = np.where(equal, 1, 2).astype(np.int8)
        out[~(has_l & has_r)] = NULL
        return out


@register
class JaroWinklerCmp(Comparator):
    name = "jaro_winkler"
    kinds = frozenset({"name", "text"})
    levels = ("exact", "close", "similar", "else")
    defaults: ClassVar[Mapping[str, Any]] = {"close": 0.94, "similar": 0.85}

    def token_levels(self, a: list[str], b: list[str]) -> np.ndarray:
        s = _jw(a, b)
        return np.where(s >= self.params["close"], 2, np.where(s >= self.params["similar"], 3, 4)).astype(
            np.int16
        )


@register
class AddressLine(Comparator):
    """Street lines: Jaro-Winkler on the text, but different house/plot numbers are never close."""

    name = "address_line"
    kinds = frozenset({"text"})
    levels = ("exact", "close", "similar", "else")
    defaults: ClassVar[Mapping[str, Any]] = {"close": 0.94, "similar": 0.85}

    def token_levels(self, a: list[str], b: list[str]) -> np.ndarray:
        s = _jw(a, b)
        digits_differ = np.array(
            [
                _digits(x) != _digits(y) and bool(_digits(x)) and bool(_digits(y))
                for x, y in zip(a, b, strict=True)
            ],
            dtype=bool,
        )
        lv = np.where(s >= self.params["close"], 2, np.where(s >= self.params["similar"], 3, 4))
        lv[digits_differ] = 4
        return lv.astype(np.int16)


@lru_cache(maxsize=100_000)
def _digits(s: str) -> tuple[str, ...]:
    return tuple(_NUMBER.findall(s))


_NUMBER = re.compile(r"\d+")


class _EditDistance(Comparator):
    kinds = frozenset({"name", "text", "identifier"})
    levels = ("exact", "close", "similar", "else")
    defaults: ClassVar[Mapping[str, Any]] = {"close": 1, "similar": 2}
    scorer: Any = Levenshtein.distance

    def token_levels(self, a: list[str], b: list[str]) -> np.ndarray:
        d = np.asarray(process.cpdist(a, b, scorer=type(self).scorer, workers=_workers(len(a))))
        return np.where(d <= self.params["close"], 2, np.where(d <= self.params["similar"], 3, 4)).astype(
            np.int16
        )


@register
class LevenshteinCmp(_EditDistance):
    name = "levenshtein"


@register
class DamerauCmp(_EditDistance):
    name = "damerau_levenshtein"
    scorer = DamerauLevenshtein.distance


@register
class Phonetic(Comparator):
    name = "phonetic"
    kinds = frozenset({"name", "text"})
    levels = ("exact", "phonetic", "else")

    def token_levels(self, a: list[str], b: list[str]) -> np.ndarray:
        return np.array(
            [2 if phonetic(x) == phonetic(y) else 3 for x, y in zip(a, b, strict=True)], dtype=np.int16
        )


@register
class Name(Comparator):
    """Personal names: exact (the first names agree, or one record's only name is the other's first),
    alias (nickname / cross-language variant list), middle (equal only through a middle name: "Samuel
    Kiprono" vs "Kiprono" — or twins "Mary" and "Jane Mary"), close (Jaro-Winkler >= close, or same phonetic
    code and >= similar), similar (>= similar), initial (one side is a lone initial that matches), else."""

    name = "name"
    kinds = frozenset({"name"})
    levels = ("exact", "alias", "middle", "close", "similar", "initial", "else")
    defaults: ClassVar[Mapping[str, Any]] = {"close": 0.92, "similar": 0.84}

    def token_levels(self, a: list[str], b: list[str]) -> np.ndarray:
        s = _jw(a, b)
        close, similar = self.params["close"], self.params["similar"]
        aliases = self.context.aliases
        out = np.empty(len(a), dtype=np.int16)
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if aliases is not None and aliases.equivalent(x, y):
                out[i] = 2
            elif s[i] >= close or (s[i] >= similar and phonetic(x) == phonetic(y)):
                out[i] = 4
            elif s[i] >= similar:
                out[i] = 5
            elif (len(x) == 1 or len(y) == 1) and x[0] == y[0]:
                out[i] = 6
            else:
                out[i] = 7
        return out

    def combine(self, out: np.ndarray) -> np.ndarray:
        best = out.reshape(out.shape[0], out.shape[1] * out.shape[2]).min(axis=1)
        first = out[:, 0, 0]
        # the first names agree (exact / alias / close): their level; otherwise agreement (exact / alias /
        # close) through a middle name is level "middle"
        return np.where(first <= 4, first, np.where(best <= 4, 3, best))


ESTIMATED_DAYS = frozenset({(1, 1), (6, 15), (7, 1), (6, 30)})


@register
class BirthDate(Comparator):
    """Dates ``YYYY-MM-DD`` (``00`` = unknown part). exact; swapped (day and month swapped); estimated
    (either side partial or a default like 01-01 / 06-15 / 07-01 and years within ``estimated_years``);
    one_part (two of year/month/day equal, the third a typo: year +-1 or last digit, any month/day); else."""

    name = "date"
    kinds = frozenset({"date"})
    levels = ("exact", "swapped", "estimated", "one_part", "else")
    defaults: ClassVar[Mapping[str, Any]] = {"estimated_years": 1}

    def compare(self, left: Column, right: Column, li: np.ndarray, ri: np.ndarray) -> np.ndarray:
        ly, lm, ld = _date_parts(left)
        ry, rm, rd = _date_parts(right)
        y1, m1, d1, y2, m2, d2 = ly[li], lm[li], ld[li], ry[ri], rm[ri], rd[ri]
        est1 = (d1 == 0) | _is_default(m1, d1)
        est2 = (d2 == 0) | _is_default(m2, d2)
        dy = np.abs(y1 - y2)
        out = np.full(len(li), 5, dtype=np.int8)
        one_part = (
            ((y1 == y2) & (m1 == m2) & _digit_typo(d1, d2))
            | ((y1 == y2) & (d1 == d2) & _digit_typo(m1, m2))
            | ((m1 == m2) & (d1 == d2) & ((dy <= 1) | (y1 // 10 == y2 // 10)))
        )
        out[one_part] = 4
        out[(est1 | est2) & (dy <= self.params["estimated_years"])] = 3
        out[(y1 == y2) & (m1 == d2) & (d1 == m2) & (m1 != d1) & (d1 > 0)] = 2
        out[(y1 == y2) & (m1 == m2) & (d1 == d2) & ~est1 & ~est2] = 1
        out[(y1 == 0) | (y2 == 0)] = NULL
        return out


def _digit_typo(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two-digit numbers one keystroke apart: one digit differs, digits transposed, or +-1."""
    ta, oa, tb, ob = a // 10, a % 10, b // 10, b % 10
    return (ta == tb) | (oa == ob) | ((ta == ob) & (oa == tb)) | (np.abs(a - b) <= 1)


def _is_default(m: np.ndarray, d: np.ndarray) -> np.ndarray:
    out = np.zeros(m.shape, dtype=bool)
    for mm, dd in ESTIMATED_DAYS:
        out |= (m == mm) & (d == dd)
    return out


def _date_parts(col: Column) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    cache = getattr(col, "_date_parts", None)
    if cache is None:
        n = len(col.values)
        y, m, d = np.zeros(n, np.int32), np.zeros(n, np.int32), np.zeros(n, np.int32)
        for i, v in enumerate(col.values):
            if v:
                y[i], m[i], d[i] = int(v[0][:4]), int(v[0][5:7]), int(v[0][8:10])
        cache = (y, m, d)
        col._date_parts = cache  # type: ignore[attr-defined]
    return cache


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
