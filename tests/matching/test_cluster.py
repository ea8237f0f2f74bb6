from __future__ import annotations

import numpy as np

import matching
from matching.cluster import cluster
from matching.dedupe import candidate_pairs, dedupe

from .conftest import patient


def test_no_chaining_through_a_middle_record() -> None:
    # A~B (score 20) and B~C (score 15) are auto-matches, but A and C are incompatible.
    compatible = {(0, 1): True, (1, 2): True, (0, 2): False}
    labels, refused = cluster(
        3,
        np.array([0, 1]),
        np.array([1, 2]),
        np.array([20.0, 15.0]),
        compatible,
        lambda a, b: np.ones(len(a), bool),
    )
    assert labels[0] == labels[1]
    assert labels[2] != labels[0]
    assert refused == [(1, 2)]


def test_unknown_cross_pairs_are_compared_on_demand() -> None:
    asked: list[tuple[int, int]] = []

    def check(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        asked.extend(zip(a.tolist(), b.tolist(), strict=True))
        return ~((a == 0) & (b == 2))

    labels, refused = cluster(3, np.array([0, 1]), np.array([1, 2]), np.array([20.0, 15.0]), {}, check)
    assert (0, 2) in asked
    assert len(set(labels.tolist())) == 2
    assert refused


def test_candidate_pairs_unique_and_skip_big_blocks() -> None:
    keys = [["a", "b"], ["a", "b"], ["a"], ["z"], ["z"], ["z"]]
    left, right, skipped = candidate_pairs(keys, max_block_size=2)
    assert sorted(zip(left.tolist(), right.tolist(), strict=True)) == [(0, 1)]
    assert sorted(skipped) == [("a", 3), ("z", 3)]


def test_dedupe_father_son_and_a_bridging_record(rules: matching.Rules) -> None:
    father = patient("f", "Kwame", "Mensah", birth="1962-08-09", gender="male")
    son = patient("s", "Kwame", "Mensah", birth="1991-02-14", gender="male")
    son2 = patient("s2", "Kwame", "Mensah", birth="1991-02-14", gender="male", phone=None)
    bridge = patient("x", "Kwame", "Mensah", birth=None, gender="male")  # like both of them
    result = dedupe([father, son, son2, bridge], rules)
    label = dict(zip(result.ids, result.cluster_ids(), strict=True))
    assert label["s"] == label["s2"]
    assert label["f"] != label["s"]
    reasons = {r[3] for r in result.review_pairs()}
    assert "potential" in reasons


def test_dedupe_of_one_and_of_none(rules: matching.Rules) -> None:
    assert dedupe([], rules).cluster_ids() == []
    assert dedupe([patient("a", "Amina", "Diallo")], rules).cluster_ids() == ["a"]


def test_dedupe_refuses_the_chaining_edge_and_reports_it(rules: matching.Rules) -> None:
    a = patient("a", "Kwame", "Mensah", birth="1991-02-14", gender="male")
    b = patient("b", "Kwame", "Mensah", birth="1991", gender="male")  # estimated: compatible with both
    c = patient("c", "Kwame", "Mensah", birth="1991-11-30", gender="male")
    result = dedupe([a, b, c], rules)
    label = dict(zip(result.ids, result.cluster_ids(), strict=True))
    assert label["a"] != label["c"]
    assert label["b"] in (label["a"], label["c"])
    refused = [r for r in result.review_pairs() if r[3] == "refused-would-chain"]
    assert len(refused) == 1
    assert refused[0][2] >= rules.auto_threshold


def test_candidate_pairs_pair_a_record_with_the_ones_filed_under_its_search_keys() -> None:
    """Index keys file a record, search keys look others up: 0 is filed under y1 and looks in y0..y2, so it
    meets 1 (filed under y2) and 2 (y0) but 1 and 2 (two years apart) do not meet each other; records only
    looking at each other's search keys (3 and 4 both search y9, nobody is filed there) are no pair."""
    index = [["y1"], ["y2"], ["y0"], ["y8"], ["y10"]]
    search = [["y0", "y1", "y2"], ["y1", "y2", "y3"], ["y-1", "y0", "y1"], ["y7", "y8", "y9"], ["y9", "y10"]]
    left, right, skipped = candidate_pairs(index, 10, search)
    assert sorted(zip(left.tolist(), right.tolist(), strict=True)) == [(0, 1), (0, 2)]
    assert skipped == []
    left, right, skipped = candidate_pairs([["k"]] * 3, 2, [["k"]] * 3)  # blocks as filed, over the limit
    assert len(left) == 0 and skipped == [("k", 3)]
