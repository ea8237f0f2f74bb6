"""A facility (local) identifier agrees ``exact`` only as the registry keys it (NFKC, trimmed): two records
of one facility whose numbers differ in case or punctuation alone are two records, not one person."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import matching
from matching import normalise as nz
from matching.scoring import Table, compare

from .conftest import NID, patient

FAC = "http://facility-01.example.org/mrn"
OTHER_FAC = "http://facility-02.example.org/mrn"


def decide_one(a: dict, b: dict, rules: matching.Rules) -> matching.Decision:
    return matching.decide(a, [matching.Candidate(b["id"], "golden-" + b["id"], b)], rules)


def levels(rules: matching.Rules, a: dict, b: dict) -> dict[str, str]:
    t = Table.from_patients([a, b], rules)
    c = compare(t, np.array([0]), np.array([1]), rules)
    return {f.name: f.level_names[int(c.levels[0, k])] for k, f in enumerate(rules.fields)}


def ids(**by_system: str) -> dict[str, str]:
    return {{"fac": FAC, "other": OTHER_FAC, "nid": NID}[k]: v for k, v in by_system.items()}


def test_two_records_of_one_facility_whose_numbers_fold_equal_are_not_merged(rules: matching.Rules) -> None:
    """QA's false merge: two records of one facility share the given name and the birth date only (another
    family name, phone and gender, no address); their local numbers `A$1` / `A|1` both folded to `a1`, were
    `exact` (+12.5 bits) and made the guards step aside: auto-matched at +4.4. As the registry keys them they
    are two records of that facility: `typo` at most, the guards hold, and the pair scores -4.8."""
    a = patient("a", "Neema", "Mollel", gender="female", phone="+255 754 123456", city=None, line=None)
    b = patient("b", "Neema", "Kimaro", gender="male", phone="+255 713 987654", city=None, line=None)
    a["identifier"] = [{"system": FAC, "value": "A$1"}]
    b["identifier"] = [{"system": FAC, "value": "A|1"}]
    d = decide_one(a, b, rules)
    assert d.outcome == "no_match", d.scores[0].explanation.text()
    assert d.auto_match_goldens() == []
    e = d.scores[0].explanation
    assert {f.field: f.level for f in e.fields}["facility_id"] == "typo"
    assert {"other-family-name", "gender-conflict"} <= set(e.guards.fired)
    # with an address in common the score passes auto_match, and the guards keep the pair for review
    home = {"address": [{"line": ["Plot 12 Sokoine Road"], "city": "Arusha"}]}
    shared_home = decide_one(dict(a, **home), dict(b, **home), rules)
    assert shared_home.outcome == "potential"
    assert "capped by other-family-name" in shared_home.rule
    # the same pair holding one number as the registry keys it: the facility says it is one record
    same = decide_one(a, dict(b, identifier=[{"system": FAC, "value": "A$1"}]), rules)
    assert same.outcome == "match"


@pytest.mark.parametrize(("left", "right"), [("ab-12", "AB12"), ("MRN 004512", "mrn-004512"), ("Ä1", "a1")])
def test_case_and_punctuation_apart_is_a_typo_at_most(rules: matching.Rules, left: str, right: str) -> None:
    a = patient("a", "Neema", "Mollel", ids={FAC: left})
    b = patient("b", "Neema", "Mollel", ids={FAC: right})
    assert levels(rules, a, b)["facility_id"] == "typo"


@pytest.mark.parametrize(
    ("left", "right", "level"),
    [
        ("004512", "004512", "exact"),
        (" 004512 ", "004512", "exact"),  # trimmed, as the registry keys it
        ("ＡＢ１２", "AB12", "exact"),  # full-width forms: NFKC
        ("ab-12", "AB12", "typo"),  # equal only once folded: two records of the facility
        ("A$1", "A|1", "typo"),
        ("KMC-267660", "KMC-266760", "typo"),  # one edit apart (6 characters or more), as before
        ("A1", "A2", "else"),  # one edit apart, but short
        ("004512", "009931", "else"),
    ],
)
def test_facility_id_levels(rules: matching.Rules, left: str, right: str, level: str) -> None:
    a = patient("a", "Neema", "Mollel", ids={FAC: left})
    b = patient("b", "Neema", "Mollel", ids={FAC: right})
    assert levels(rules, a, b)["facility_id"] == level
    assert levels(rules, b, a)["facility_id"] == level


def test_another_facility_or_no_number_is_null(rules: matching.Rules) -> None:
    a = patient("a", "Neema", "Mollel", ids={FAC: "AB12"})
    elsewhere = patient("b", "Neema", "Mollel", ids={OTHER_FAC: "ab-12"})
    assert levels(rules, a, elsewhere)["facility_id"] == "null"
    assert levels(rules, a, patient("c", "Neema", "Mollel"))["facility_id"] == "null"
    # a value without a letter or digit is no identifier, as before
    assert levels(rules, a, patient("d", "Neema", "Mollel", ids={FAC: "--"}))["facility_id"] == "null"


def test_one_equal_number_of_a_system_is_enough(rules: matching.Rules) -> None:
    a = patient("a", "Neema", "Mollel", ids={FAC: "ab-12"})
    b = patient("b", "Neema", "Mollel")
    b["identifier"] = [{"system": FAC, "value": "AB12"}, {"system": FAC, "value": "ab-12"}]
    assert levels(rules, a, b)["facility_id"] == "exact"


@pytest.mark.parametrize(
    ("left", "right", "level"),
    [
        ("CM-1234-5678", "cm 1234 5678", "exact"),  # one national id typed with and without dashes
        ("123456789", "123-456-789", "exact"),
        ("123456789", "123456780", "typo"),
        ("123456789", "987654321", "else"),
    ],
)
def test_national_ids_are_still_compared_folded(
    rules: matching.Rules, left: str, right: str, level: str
) -> None:
    a = patient("a", "Neema", "Mollel", ids={NID: left})
    b = patient("b", "Neema", "Mollel", ids={NID: right})
    assert levels(rules, a, b)["national_id"] == level


def test_identifiers_keep_the_value_as_the_registry_keys_it() -> None:
    p = patient("a", "Neema", "Mollel", ids=ids(fac=" Ab-12 ", nid="ＣＭ-1234", other="A|1"))
    p["identifier"].append({"system": FAC, "value": "#"})  # no letter or digit: left out
    assert nz.identifiers(p) == (f"{FAC}|Ab-12", f"{NID}|CM-1234", f"{OTHER_FAC}|A|1")
    assert nz.split_identifier(f"{OTHER_FAC}|A|1") == (OTHER_FAC, "A|1")
    assert nz.folded_identifier("ＣＭ-1234") == "cm1234"


def test_blocking_keys_still_fold_every_system(rules: matching.Rules) -> None:
    """The keys records were tagged with do not change (no re-tagging), and a facility's numbers differing
    in case or punctuation still meet: the comparator, not blocking, tells them apart."""
    a = patient("a", "Neema", "Mollel", ids=ids(fac="ab-12", nid="CM-1234-5678"))
    b = patient("b", "Baraka", "Kimaro", birth="1960-01-02", phone=None, ids=ids(fac="AB12"))
    keys = matching.block_keys(a, rules)

    def h(s: str) -> str:
        return hashlib.sha1(s.encode()).hexdigest()[:12]

    assert f"fid:{h(f'{FAC}|ab12')}" in keys
    assert f"fid:{h(f'{NID}|cm12345678')}" in keys
    assert f"nid:{h(f'{NID}|cm12345678')}" in keys
    assert set(keys) & set(matching.block_keys(b, rules)) == {f"fid:{h(f'{FAC}|ab12')}"}


def test_explanations_show_facility_numbers_as_keyed_and_national_ids_folded(rules: matching.Rules) -> None:
    a = patient("a", "Amina", "Diallo", ids=ids(nid="123-456-789", fac="ab-12"))
    b = patient("b", "Amina", "Diallo", ids=ids(nid="123456789", fac="AB12"))
    e = matching.score_pair(a, b, rules)
    shown = {f.field: (f.left, f.right, f.level) for f in e.fields}
    assert shown["national_id"] == ((f"{NID}|123456789",), (f"{NID}|123456789",), "exact")
    assert shown["facility_id"] == ((f"{FAC}|ab-12",), (f"{FAC}|AB12",), "typo")
    assert "ab-12" in e.text()
