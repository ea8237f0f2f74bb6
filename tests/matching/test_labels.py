"""Labelled pairs: contradicting chains (``matching.contradicting_chains``), the one rule the labels reader
and the admin export share, and how the reader reports them."""

from __future__ import annotations

import pytest

from matching import Chain, contradicting_chains
from matching.labels import LabelsError, parse_labels


def test_a_different_pair_that_same_pairs_join_is_a_chain_with_them() -> None:
    pairs = [("a", "b", True), ("b", "c", True), ("a", "c", False), ("c", "d", False)]
    assert contradicting_chains(pairs) == [Chain(group=1, different=2, same=(0, 1))]


def test_no_chain_without_a_path_of_same_decisions() -> None:
    pairs = [("a", "b", True), ("c", "d", True), ("a", "c", False), ("b", "d", False), ("b", "a", True)]
    assert contradicting_chains(pairs) == []
    # a different decision beside same decisions through other people is no contradiction
    assert (
        contradicting_chains([("a", "b", True), ("b", "c", False), ("c", "d", True), ("d", "a", False)]) == []
    )


def test_a_chain_holds_every_path_between_its_records_and_no_dead_end() -> None:
    pairs = [
        ("a", "b", True),  # 0: a – b – c
        ("b", "c", True),  # 1
        ("c", "d", True),  # 2: d hangs off c: on no path from a to c
        ("a", "e", True),  # 3: a – e – c, a second path
        ("e", "c", True),  # 4
        ("a", "c", False),  # 5
    ]
    assert contradicting_chains(pairs) == [Chain(group=1, different=5, same=(0, 1, 3, 4))]


def test_chains_through_one_set_of_records_share_a_group_numbered_in_order() -> None:
    pairs = [
        ("x", "y", True),  # 0
        ("y", "z", True),  # 1
        ("a", "b", True),  # 2
        ("b", "c", True),  # 3
        ("c", "d", True),  # 4
        ("a", "d", False),  # 5: group 1 (a..d), the first chain found
        ("x", "z", False),  # 6: group 2
        ("b", "c", False),  # 7: group 1 again; decided both ways, so the same pair is its whole chain
        ("c", "b", True),  # 8
    ]
    assert contradicting_chains(pairs) == [
        Chain(group=1, different=5, same=(2, 3, 4, 8)),
        Chain(group=2, different=6, same=(0, 1)),
        Chain(group=1, different=7, same=(3, 8)),
    ]


def test_a_long_chain_is_found_without_recursion() -> None:
    n = 5000
    pairs = [(f"r{i}", f"r{i + 1}", True) for i in range(n)] + [("r0", f"r{n}", False)]
    assert contradicting_chains(pairs) == [Chain(group=1, different=n, same=tuple(range(n)))]


def test_the_reader_names_the_lines_of_a_chain() -> None:
    rows = [
        ["id_a", "id_b", "decision"],
        ["a", "b", "same"],  # 2
        ["x", "y", "different"],  # 3
        ["b", "c", "same"],  # 4
        ["c", "a", "different"],  # 5
    ]
    with pytest.raises(LabelsError) as raised:
        parse_labels(rows, {"a", "b", "c", "x", "y"}, "f.csv")
    assert raised.value.problems == [
        "f.csv: line 5: c / a decided different, but same-person decisions join them through other records "
        "(lines 2, 4)"
    ]


def test_a_pair_decided_both_ways_is_said_once() -> None:
    rows = [["id_a", "id_b", "decision"], ["a", "b", "different"], ["b", "a", "same"]]
    with pytest.raises(LabelsError) as raised:
        parse_labels(rows, {"a", "b"}, "f.csv")
    assert raised.value.problems == ["f.csv: line 3: b / a decided same, but different on line 2"]


def test_the_reader_takes_the_exports_conflict_column_and_still_refuses_its_chains() -> None:
    header = ["id_a", "id_b", "decision", "conflict"]
    fine = [header, ["a", "b", "same", ""], ["b", "c", "different", ""]]
    assert [(lb.id_a, lb.id_b, lb.same) for lb in parse_labels(fine, {"a", "b", "c"})] == [
        ("a", "b", True),
        ("b", "c", False),
    ]
    chained = [header, ["a", "b", "same", "group-1"], ["b", "c", "same", "group-1"]]
    chained.append(["a", "c", "different", "group-1"])
    with pytest.raises(LabelsError, match=r"line 4: a / c decided different.*\(lines 2, 3\)"):
        parse_labels(chained, {"a", "b", "c"})
