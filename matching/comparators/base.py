"""Comparator base class, registry and the columnar encoding of a batch of records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import JaroWinkler

from ..aliases import Aliases

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


class Column:
    """One field of a batch of records: ``values[i]`` the normalised tuple, ``tok[i]`` its token ids
    (encoded on first use: date and identifier comparators never need them)."""

    def __init__(self, values: list[tuple[str, ...]], vocab: Vocab, max_tokens: int = 4) -> None:
        self.values = values
        self.vocab = vocab
        self.max_tokens = max_tokens

    @classmethod
    def encode(cls, values: list[tuple[str, ...]], vocab: Vocab, max_tokens: int = 4) -> Column:
        return cls(values, vocab, max_tokens)

    @cached_property
    def tok(self) -> np.ndarray:
        """(n, k) int32 token ids, -1 = padding."""
        values, k = self.values, max(1, min(self.max_tokens, max(map(len, self.values), default=1)))
        ids, strings = self.vocab.ids, self.vocab.strings
        tok = np.full((len(values), k), -1, dtype=np.int32)
        for i, v in enumerate(values):
            for j, s in enumerate(v[:k]):
                t = ids.get(s)
                if t is None:
                    t = ids[s] = len(strings)
                    strings.append(s)
                tok[i, j] = t
        return tok


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
            if isinstance(d, bool):
                if not isinstance(v, bool):
                    problems.append(f"{k}: must be true or false, got {v!r}")
                continue
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
        best: np.ndarray = out.reshape(out.shape[0], out.shape[1] * out.shape[2]).min(axis=1)
        return best


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
