"""A pair scores the same whichever record is on the left (property over generated pairs, fixed seed)."""

from __future__ import annotations

import random

import numpy as np

import matching
from bench.population import generate_population
from matching.blocking import keys_of
from matching.dedupe import candidate_pairs
from matching.scoring import Table, compare

from .conftest import patient


def _pairs(rules: matching.Rules) -> tuple[Table, np.ndarray, np.ndarray]:
    patients, _ = generate_population(800, seed=12)
    rng = random.Random(12)
    for p in rng.sample(patients, 300):  # names the wrong way round, as clerks enter them
        for n in p["name"]:
            if n.get("given") and n.get("family"):
                n["given"], n["family"] = [n["family"], *n["given"][1:]], n["given"][0]
    keys = [keys_of(p, rules) for p in patients]
    left, right, _ = candidate_pairs([k.index for k in keys], rules.max_block_size, [k.search for k in keys])
    extra = np.array([rng.sample(range(len(patients)), 2) for _ in range(3000)], dtype=np.int64)
    table = Table.from_patients(patients, rules)
    return table, np.concatenate([left, extra[:, 0]]), np.concatenate([right, extra[:, 1]])


def test_every_pair_scores_the_same_both_ways_round(rules: matching.Rules) -> None:
    table, left, right = _pairs(rules)
    ab, ba = compare(table, left, right, rules), compare(table, right, left, rules)
    assert ab.swapped.sum() > 100  # the property is exercised where it used to fail
    differ = np.nonzero(np.abs(ab.scores - ba.scores) > 1e-9)[0]
    assert len(differ) == 0, [
        (table.columns["given"].values[left[k]], table.columns["given"].values[right[k]]) for k in differ[:5]
    ]
    assert (ab.outcome == ba.outcome).all()
    assert (ab.levels.astype(int).sum(axis=1) == ba.levels.astype(int).sum(axis=1)).all()


def test_crosswise_names_explained_as_compared(rules: matching.Rules) -> None:
    a = patient("a", "Wanjiru", "Achieng", birth="1990-03-04")
    b = patient("b", "Achieng", "Wanjiku", birth="1990-03-04")  # names swapped, the family name mistyped
    ab, ba = matching.score_pair(a, b, rules), matching.score_pair(b, a, rules)
    assert ab.names_swapped and ba.names_swapped
    assert ab.score == ba.score
    for e in (ab, ba):
        given = next(f for f in e.fields if f.field == "given")
        family = next(f for f in e.fields if f.field == "family")
        assert {given.left[0], given.right[0]} in ({"wanjiru", "wanjiku"}, {"achieng"})
        assert {family.left[0], family.right[0]} in ({"wanjiru", "wanjiku"}, {"achieng"})
        assert {given.level, family.level} == {"exact", "close"}


def test_siblings_one_recorded_the_wrong_way_round_stay_apart_both_ways(rules: matching.Rules) -> None:
    # household population seed 7: the family name matches crosswise, the given names differ
    a = patient("a", ["Idrisa", "Salif"], "Diallo", birth="2008-01-01", gender="male", line="Quartier 283")
    b = patient("b", "Diallo", "Abdoulaye", birth="2008-06-08", gender="male", line="Quartier 283")
    for x, y in ((a, b), (b, a)):
        e = matching.score_pair(x, y, rules)
        assert e.names_swapped
        assert {f.field: f.level for f in e.fields}["given"] == "else"
        assert e.classification == "potential", e.text()
