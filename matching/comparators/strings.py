"""String comparators: exact, Jaro-Winkler, edit distances, phonetic, personal names, street lines."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, ClassVar

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import DamerauLevenshtein, Levenshtein

from ..normalise import phonetic
from .base import NULL, Column, Comparator, _jw, _workers, register


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
    code and >= similar), similar (>= similar), initial (one side is a lone initial that matches), else.

    ``typing_errors`` (default true) then compares names the way clerks mistype them (:func:`typed_level`):
    a name typed with a space, hyphen, dot or apostrophe inside it, or split over several tokens, is exact
    when its tokens joined equal the other's ("elea nor" / "eleanor", "O Brien" / "OBrien"), close when
    they are one edit apart ("annest nsia" / "annestansia"); one name against another is close when they
    differ only by a doubled letter ("Hawa" / "Hawwa") or two adjacent letters swapped ("Samatnha")."""

    name = "name"
    kinds = frozenset({"name"})
    levels = ("exact", "alias", "middle", "close", "similar", "initial", "else")
    defaults: ClassVar[Mapping[str, Any]] = {"close": 0.92, "similar": 0.84, "typing_errors": True}

    def compare(self, left: Column, right: Column, li: np.ndarray, ri: np.ndarray) -> np.ndarray:
        out = super().compare(left, right, li, ri)
        if not self.params["typing_errors"]:
            return out
        lv, rv = left.values, right.values
        todo = np.nonzero(out > 1)[0]
        if len(todo):
            typed = np.fromiter(
                (
                    typed_level(lv[a], rv[b])
                    for a, b in zip(li[todo].tolist(), ri[todo].tolist(), strict=True)
                ),
                dtype=np.int8,
                count=len(todo),
            )
            better = (typed > 0) & (typed < out[todo])
            out[todo[better]] = typed[better]
        return out

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


_EXACT, _CLOSE = 1, 4  # Name's levels


@lru_cache(maxsize=200_000)
def typed_level(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """The level two names reach through typing errors: 1 (exact) when a run of leading tokens of one,
    joined, equals one of the other (separators inside a name, a given name split over tokens); 4 (close)
    when such joined runs of 5 letters or more are one edit apart (Damerau-Levenshtein), or when the first
    names differ by a doubled letter or by two adjacent letters swapped (4 letters or more); 0 otherwise."""
    if not a or not b:
        return 0
    ja = ["".join(a[: k + 1]) for k in range(len(a))]
    jb = ["".join(b[: k + 1]) for k in range(len(b))]
    best = 0
    for k, x in enumerate(ja):
        for j, y in enumerate(jb):
            if k == 0 and j == 0:
                # both need the same letters: a cheap test first, most pairs differ
                if set(x) == set(y) and (
                    _doubled(x) == _doubled(y) or (min(len(x), len(y)) >= 4 and _transposed(x, y))
                ):
                    best = _CLOSE
                continue
            if x == y:
                return _EXACT
            if min(len(x), len(y)) >= 5 and DamerauLevenshtein.distance(x, y, score_cutoff=1) <= 1:
                best = _CLOSE
    return best


def _doubled(s: str) -> str:
    return _DOUBLE.sub(r"\1", s)


_DOUBLE = re.compile(r"(.)\1+")


def _transposed(x: str, y: str) -> bool:
    if len(x) != len(y):
        return False
    diff = [i for i in range(len(x)) if x[i] != y[i]]
    return len(diff) == 2 and diff[1] == diff[0] + 1 and x[diff[0]] == y[diff[1]] and x[diff[1]] == y[diff[0]]
