"""Fellegi–Sunter scoring of record pairs, vectorised.

For each field and level the rules give m = P(level | same person) and u = P(level | different people); the
level's match weight is log2(m/u) and a pair's score is the prior weight log2(λ/(1-λ)) plus the sum of its
fields' weights: the log2 posterior odds that the two records are the same person. Missing values (level
``null``) add 0. Deterministic rules then decide or cap the outcome (see :func:`classify`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .comparators import Column, Vocab
from .normalise import EXTRACTORS
from .rules import OUTCOMES, Field, Rules

NO_MATCH, POTENTIAL, MATCH = 0, 1, 2


class Table:
    """The normalised values of a batch of records, one :class:`Column` per field."""

    def __init__(self, rows: Sequence[Mapping[str, tuple[str, ...]]], rules: Rules) -> None:
        vocabs: dict[str, Vocab] = {}
        self.columns: dict[str, Column] = {}
        self.n = len(rows)
        for f in rules.fields:
            vocab = vocabs.setdefault("name", Vocab()) if f.kind == "name" else Vocab()
            self.columns[f.name] = Column.encode([r[f.name] for r in rows], vocab)

    @classmethod
    def from_patients(cls, patients: Sequence[Mapping[str, Any]], rules: Rules) -> Table:
        return cls([extract(p, rules) for p in patients], rules)


_EXTRACTED_MAX = 200_000  # records whose values each Rules object keeps (Rules.extracted)


class Prepared(dict[str, tuple[str, ...]]):
    """A record reduced to the normalised values of the rules' fields (:func:`prepare`): ``decide`` and
    ``score_pair`` take it in place of the Patient, without the Patient held in memory."""

    __slots__ = ()


def prepare(
    patient: Mapping[str, Any], rules: Rules, canon: dict[tuple[str, ...], tuple[str, ...]] | None = None
) -> Prepared:
    """``patient``'s normalised field values under ``rules``. ``canon``: a dict shared by many calls, so equal
    values (same family name, gender, …) are stored once."""
    row = _extract(patient, rules)
    if canon is not None:
        row = {k: canon.setdefault(v, v) for k, v in row.items()}
    return Prepared(row)


def extract(patient: Mapping[str, Any], rules: Rules) -> dict[str, tuple[str, ...]]:
    """The normalised values of every field. Stored records carry ``meta.versionId`` (HAPI bumps it on every
    change), so their values are cached on ``rules`` (:attr:`Rules.extracted`, which goes with the object;
    a cache keyed by ``id(rules)`` handed a freed object's values to a new one that got its id) by (id,
    versionId, lastUpdated); others are recomputed.
    A :class:`Prepared` record already is its values (computed with the same rules)."""
    if isinstance(patient, Prepared):
        return patient
    meta = patient.get("meta")
    key = None
    cache = None
    if (
        isinstance(meta, Mapping)
        and isinstance(meta.get("versionId"), str)
        and isinstance(patient.get("id"), str)
    ):
        cache = rules.extracted
        key = (patient["id"], meta["versionId"], str(meta.get("lastUpdated")))
        hit = cache.get(key)
        if hit is not None:
            return hit
    row = _extract(patient, rules)
    if cache is not None and key is not None:
        cache[key] = row
        if len(cache) > _EXTRACTED_MAX:
            cache.popitem(last=False)
    return row


def _extract(patient: Mapping[str, Any], rules: Rules) -> dict[str, tuple[str, ...]]:
    cache: dict[str, tuple[str, ...]] = {}
    out = {}
    for f in rules.fields:
        if f.path not in cache:
            cache[f.path] = EXTRACTORS[f.path][0](patient)
        out[f.name] = cache[f.path]
    return out


@dataclass
class Compared:
    levels: np.ndarray  # (pairs, fields) int8
    weights: np.ndarray  # (pairs, fields) float: the level's weight, term-frequency adjusted
    swapped: np.ndarray  # (pairs,) bool: given/family compared crosswise
    scores: np.ndarray  # (pairs,) float
    outcome: np.ndarray  # (pairs,) int8: 0 no_match, 1 potential, 2 match
    decided_by: np.ndarray  # (pairs,) int16: index of the deciding deterministic rule, -1 = Fellegi–Sunter
    capped_by: np.ndarray  # (pairs,) int16: index of the first cap that lowered the outcome, -1 = none
    # (pairs,) bool, with ``swapped``: the first swap field (given) compared the left record's second
    # (family) with the right record's first, the second field the left's first with the right's second
    flipped: np.ndarray


def compare(table: Table, left: np.ndarray, right: np.ndarray, rules: Rules) -> Compared:
    """Compare records ``left[i]`` and ``right[i]`` of ``table`` (one table: token ids share a vocabulary)."""
    li, ri = np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)
    levels = np.zeros((len(li), len(rules.fields)), dtype=np.int8)
    for k, f in enumerate(rules.fields):
        levels[:, k] = f.comparator.compare(table.columns[f.name], table.columns[f.name], li, ri)
    swapped = np.zeros(len(li), dtype=bool)
    flipped = np.zeros(len(li), dtype=bool)
    if rules.swap and len(li):
        _swap_names(table, li, ri, rules, levels, swapped, flipped)
    weights = np.zeros(levels.shape, dtype=np.float64)
    for k, f in enumerate(rules.fields):
        weights[:, k] = f.weights[levels[:, k]]
        if f.frequencies and len(li):
            exact = np.nonzero(levels[:, k] == 1)[0]
            if len(exact):
                for col_l, col_r, sel in _sides(rules, f.name, exact, swapped, flipped):
                    if len(sel):
                        weights[sel, k] = _tf_weights(
                            f, table.columns[col_l], table.columns[col_r], li[sel], ri[sel]
                        )
    scores = rules.prior_weight + weights.sum(axis=1)
    outcome, decided, capped = classify(levels, scores, rules)
    return Compared(levels, weights, swapped, scores, outcome, decided, capped, flipped)


def _swap_names(
    table: Table,
    li: np.ndarray,
    ri: np.ndarray,
    rules: Rules,
    levels: np.ndarray,
    swapped: np.ndarray,
    flipped: np.ndarray,
) -> None:
    """Given and family names compared crosswise where that is clearly better (levels, ``swapped`` and
    ``flipped`` set in place). Crosswise there are two ways to fill the two fields: the first field (given)
    from left given ~ right family and the second from left family ~ right given, or the other way round
    (``flipped``): which record holds its names the wrong way round cannot be told, so which of the two
    crosswise comparisons is the given names cannot either. The one that says less for the pair is kept
    (ties: the worse first-field level, then the smaller values): the same choice whichever record is on
    the left, so a pair scores the same both ways round (taking always the first way gave (a, b) and
    (b, a) each field's weight of the other's level), and the guards reading the given name see the
    disagreement (siblings "Idrisa Salif Diallo" and "Diallo Abdoulaye": given names differ)."""
    assert rules.swap is not None
    a, b = rules.swap
    ka, kb = _index(rules, a), _index(rules, b)
    fa, fb = rules.fields[ka], rules.fields[kb]
    ca, cb = table.columns[a], table.columns[b]
    # only pairs whose names disagree somewhere can gain from comparing them crosswise
    poor = np.nonzero((fa.weights[levels[:, ka]] <= 0) | (fb.weights[levels[:, kb]] <= 0))[0]
    if not len(poor):
        return
    pl, pr = li[poor], ri[poor]
    a1, b1 = fa.comparator.compare(ca, cb, pl, pr), fb.comparator.compare(cb, ca, pl, pr)
    if fa.comparator_name == fb.comparator_name and fa.params == fb.params:
        a2, b2 = b1, a1  # one comparator (the shipped rules): the other way round is already compared
    else:
        a2, b2 = fa.comparator.compare(cb, ca, pl, pr), fb.comparator.compare(ca, cb, pl, pr)
    w1, w2 = fa.weights[a1] + fb.weights[b1], fa.weights[a2] + fb.weights[b2]
    flip = (w2 < w1) | ((w2 == w1) & (a2 > a1))
    tie = np.nonzero((w2 == w1) & (a2 == a1) & (b2 == b1))[0]
    for t in tie.tolist():  # same levels both ways: the smaller values decide (term frequencies differ)
        x, y = int(pl[t]), int(pr[t])
        flip[t] = (ca.values[y], cb.values[x]) < (ca.values[x], cb.values[y])
    cross_a, cross_b = np.where(flip, a2, a1), np.where(flip, b2, b1)
    straight = fa.weights[levels[poor, ka]] + fb.weights[levels[poor, kb]]
    cross = fa.weights[cross_a] + fb.weights[cross_b]
    better = (cross_a > 0) & (cross_b > 0) & (cross > straight + 1.0)
    sel = poor[better]
    swapped[sel] = True
    flipped[sel] = flip[better]
    levels[sel, ka] = cross_a[better]
    levels[sel, kb] = cross_b[better]


def _sides(
    rules: Rules, name: str, rows: np.ndarray, swapped: np.ndarray, flipped: np.ndarray
) -> list[tuple[str, str, np.ndarray]]:
    """(left column, right column, rows) field ``name`` was compared on, for each way of comparing:
    straight, crosswise, crosswise flipped."""
    if not rules.swap or name not in rules.swap:
        return [(name, name, rows)]
    first, second = rules.swap
    other = second if name == first else first
    sw, fl = swapped[rows], flipped[rows]
    return [(name, name, rows[~sw]), (name, other, rows[sw & ~fl]), (other, name, rows[sw & fl])]


def _tf_weights(f: Field, left: Column, right: Column, li: np.ndarray, ri: np.ndarray) -> np.ndarray:
    """Exact-level weight with u replaced by the frequency of the rarest shared value when that is larger:
    agreeing on "Mohamed" says less than agreeing on "Oluwaseun"."""
    tf = _token_frequencies(left, f)
    lt, rt = left.tok[li], right.tok[ri]
    eq = (lt[:, :, None] == rt[:, None, :]).any(axis=2) & (lt >= 0)
    shared = np.where(eq, tf[lt.clip(min=0)], np.inf).min(axis=1)
    shared[~np.isfinite(shared)] = 0.0
    m, u = max(f.m[0], 1e-6), max(f.u[0], 1e-6)
    weights: np.ndarray = np.log2(m / np.maximum(u, shared))
    return weights


def _token_frequencies(col: Column, f: Field) -> np.ndarray:
    cache: dict[str, np.ndarray] = col.__dict__.setdefault("_tf_cache", {})
    arr = cache.get(f.name)
    if arr is None or len(arr) < len(col.vocab.strings):
        arr = np.array([f.frequencies.get(s, 0.0) for s in col.vocab.strings] or [0.0], dtype=np.float64)
        cache[f.name] = arr
    return arr


def _index(rules: Rules, name: str) -> int:
    return next(i for i, f in enumerate(rules.fields) if f.name == name)


def classify(
    levels: np.ndarray, scores: np.ndarray, rules: Rules
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thresholds first; the first firing ``then`` rule overrides them; every firing ``at_most`` rule then
    caps the result (caps are safety guards and win over everything). A rule fires when its ``when``
    holds and none of its ``unless`` alternatives does."""
    n = levels.shape[0]
    outcome = np.where(
        scores >= rules.auto_threshold,
        MATCH,
        np.where(scores >= rules.potential_threshold, POTENTIAL, NO_MATCH),
    ).astype(np.int8)
    decided = np.full(n, -1, dtype=np.int16)
    capped = np.full(n, -1, dtype=np.int16)
    undecided = np.ones(n, dtype=bool)
    fires_by_rule = [_rule_fires(levels, rules, i) for i in range(len(rules.deterministic))]
    for i, r in enumerate(rules.deterministic):
        fires = fires_by_rule[i]
        if r.then is not None:
            hit = fires & undecided
            outcome[hit] = OUTCOMES.index(r.then)
            decided[hit] = i
            undecided &= ~hit
    for i, r in enumerate(rules.deterministic):
        if r.at_most is not None:
            cap = OUTCOMES.index(r.at_most)
            hit = fires_by_rule[i] & (outcome > cap)
            outcome[hit] = cap
            capped[hit & (capped < 0)] = i
    return outcome, decided, capped


def _rule_fires(levels: np.ndarray, rules: Rules, i: int) -> np.ndarray:
    """Rule ``i``'s ``when`` holds and none of its ``unless`` alternatives does."""
    fires = holds(levels, rules.compiled_rules[i])
    for alt in rules.compiled_unless[i]:
        if fires.any():
            fires &= ~holds(levels, alt)
    return fires


def holds(levels: np.ndarray, conds: tuple[tuple[int, np.ndarray], ...]) -> np.ndarray:
    """Per pair: every field of a compiled ``when``/``unless`` mapping (field index, mask of allowed levels)
    is at one of its levels."""
    ok = np.ones(levels.shape[0], dtype=bool)
    for k, mask in conds:
        ok &= mask[levels[:, k]]
    return ok
