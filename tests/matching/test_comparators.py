from __future__ import annotations

import numpy as np
import pytest

import matching
from matching.scoring import Table, compare

from .conftest import patient


def levels(rules: matching.Rules, a: dict, b: dict) -> dict[str, str]:
    t = Table.from_patients([a, b], rules)
    c = compare(t, np.array([0]), np.array([1]), rules)
    return {f.name: f.level_names[int(c.levels[0, k])] for k, f in enumerate(rules.fields)}


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        ("1985-04-17", "1985-04-17", "exact"),
        ("1985-04-07", "1985-07-04", "swapped"),
        ("1985-04-17", "1985", "estimated"),
        ("1985-04-17", "1986-01-01", "estimated"),
        ("1985-01-01", "1985-01-01", "estimated"),  # equal default dates are weak evidence
        ("1985-04-17", "1985-04-18", "one_part"),
        ("1985-04-17", "1985-04-71", "else"),  # invalid day -> missing
        ("1985-04-17", "1984-04-17", "one_part"),
        ("1985-04-17", "1955-04-17", "else"),  # a generation apart
        ("1985-04-17", "1985-09-30", "else"),
        ("1985-04-17", None, "null"),
    ],
)
def test_birth_date_levels(rules: matching.Rules, a: str, b: str | None, level: str) -> None:
    got = levels(rules, patient("a", "Amina", "Diallo", birth=a), patient("b", "Amina", "Diallo", birth=b))
    expected = "null" if b == "1985-04-71" else level
    assert got["birth_date"] == expected


@pytest.mark.parametrize(
    ("a", "b", "level"),
    [
        ("Joseph", "Yusuf", "alias"),  # shipped cross-language list
        ("William", "Bill", "alias"),  # nicknames package
        ("Fatoumata", "Fatou", "alias"),
        ("Mohamed", "Muhammad", "alias"),
        ("Oluwaseun", "Oluwasein", "close"),
        ("Aïssatou", "Aissatou", "exact"),  # accents folded
        ("Hassan", "Hussein", "else"),
        ("J.", "Joseph", "initial"),
        ("Grace", "Mercy", "else"),
    ],
)
def test_given_name_levels(rules: matching.Rules, a: str, b: str, level: str) -> None:
    got = levels(rules, patient("a", a, "Diallo"), patient("b", b, "Diallo"))
    assert got["given"] == level


def test_phonetic_spelling_variants_of_african_names(rules: matching.Rules) -> None:
    got = levels(rules, patient("a", "Amina", "Ouédraogo"), patient("b", "Amina", "Wedraogo"))
    assert got["family"] in ("close", "similar")
    from matching.normalise import phonetic

    assert phonetic("ouedraogo") == phonetic("wedraogo")
    assert phonetic("mohamed") == phonetic("muhammad")
    assert phonetic("tchoumi") == phonetic("choumi")


def test_middle_name_used_as_given_is_its_own_level(rules: matching.Rules) -> None:
    got = levels(rules, patient("a", ["Samuel", "Kiprono"], "Kiprop"), patient("b", "Kiprono", "Kiprop"))
    assert got["given"] == "middle"
    got = levels(rules, patient("a", ["Samuel", "Kiprono"], "Kiprop"), patient("b", "Samuel", "Kiprop"))
    assert got["given"] == "exact"


def test_swapped_given_and_family_are_detected(rules: matching.Rules) -> None:
    e = matching.score_pair(patient("a", "Mensah", "Kwame"), patient("b", "Kwame", "Mensah"), rules)
    assert e.names_swapped
    assert {f.field: f.level for f in e.fields}["given"] == "exact"


def test_missing_values_are_null_not_disagreement(rules: matching.Rules) -> None:
    a = patient("a", "Amina", "Diallo", phone=None, city=None, line=None, birth=None, gender=None)
    got = levels(rules, a, patient("b", "Amina", "Diallo"))
    assert {
        k: got[k] for k in ("phone", "city", "address_line", "birth_date", "gender", "national_id")
    } == dict.fromkeys(("phone", "city", "address_line", "birth_date", "gender", "national_id"), "null")


def test_phone_numbers_compare_in_any_format(rules: matching.Rules) -> None:
    got = levels(
        rules, patient("a", "A", "B", phone="+254 712-345-678"), patient("b", "A", "B", phone="0712345678")
    )
    assert got["phone"] == "exact"


def test_house_numbers_must_agree(rules: matching.Rules) -> None:
    got = levels(
        rules,
        patient("a", "A", "B", line="Kenyatta Avenue 221"),
        patient("b", "A", "B", line="Kenyata Avenue 121"),
    )
    assert got["address_line"] == "else"
    got = levels(
        rules,
        patient("a", "A", "B", line="Kenyatta Avenue 221"),
        patient("b", "A", "B", line="Kenyata Avenue 221"),
    )
    assert got["address_line"] == "close"


def test_term_frequency_makes_common_names_weaker(rules: matching.Rules) -> None:
    doc = rules.to_dict()
    doc["fields"]["given"]["frequencies"] = {"mary": 0.05}
    tf_rules = matching.load_rules(doc)
    common = matching.score_pair(patient("a", "Mary", "Diallo"), patient("b", "Mary", "Diallo"), tf_rules)
    rare = matching.score_pair(
        patient("a", "Oluwaseun", "Diallo"), patient("b", "Oluwaseun", "Diallo"), tf_rules
    )
    w = {e: {f.field: f.weight for f in e.fields}["given"] for e in (common, rare)}
    assert w[common] < w[rare]
    assert w[rare] == pytest.approx(rules.field("given").weights[1], abs=1e-3)


@pytest.mark.parametrize(
    ("field", "a", "b", "level"),
    [
        # separators typed inside a name: exact once removed
        ("given", "elea nor", "Eleanor", "exact"),
        ("given", "El eanor", "Eleanor", "exact"),
        ("family", "Black well", "Blackwell", "exact"),
        ("given", "Mary-Jane", "Mary Jane", "exact"),
        ("given", "Mary-Jane", "Maryjane", "exact"),
        ("family", "O'Brien", "OBrien", "exact"),
        ("family", "O'Brien", "O Brien", "exact"),
        ("family", "O.Brien", "OBrien", "exact"),
        # a given name split over several tokens, with or without a middle name after it
        ("given", ["Jean", "Pierre"], "Jeanpierre", "exact"),
        ("given", ["Abdu", "lrahman"], "Abdulrahman", "exact"),
        ("given", ["Elea", "nor", "Grace"], ["Eleanor", "Grace"], "exact"),
        # split and one edit: close
        ("given", "annest nsia", "Annestansia", "close"),
        # adjacent transpositions and doubled letters: close
        ("given", "Samatnha", "Samantha", "close"),
        ("given", "Jonh", "John", "close"),
        ("given", "Sammuel", "Samuel", "close"),
        ("given", "Hawwa", "Hawa", "close"),
        ("given", "Phillip", "Philip", "close"),
        # what must not move: different names, twins' names, a name only through a middle name
        ("given", "Hassan", "Hussein", "else"),
        ("given", "Eva", "Ava", "else"),
        ("given", "Mary", ["Jane", "Mary"], "middle"),
        ("given", "Wasswa", "Kato", "else"),
    ],
)
def test_names_compared_the_way_clerks_mistype_them(
    rules: matching.Rules, field: str, a: str | list[str], b: str | list[str], level: str
) -> None:
    if field == "given":
        pa, pb = patient("a", a, "Nakato"), patient("b", b, "Nakato")
    else:
        pa, pb = patient("a", "Ruth", str(a)), patient("b", "Ruth", str(b))
    assert levels(rules, pa, pb)[field] == level


def test_typing_errors_can_be_switched_off_and_is_validated(rules: matching.Rules) -> None:
    doc = rules.to_dict()
    doc["fields"]["given"]["params"]["typing_errors"] = False
    plain = matching.load_rules(doc)
    assert levels(plain, patient("a", "elea nor", "Nakato"), patient("b", "Eleanor", "Nakato"))["given"] == (
        "similar"
    )
    doc["fields"]["given"]["params"]["typing_errors"] = "yes"
    with pytest.raises(matching.RulesError) as err:
        matching.load_rules(doc)
    assert "fields.given.params.typing_errors: must be true or false, got 'yes'" in err.value.problems[0]
