from __future__ import annotations

import re

import matching

from .conftest import NID, patient

TOKEN = re.compile(r"^[A-Za-z0-9._:-]{1,60}$")


def meet(a: dict, b: dict, rules: matching.Rules) -> bool:
    """Compared: one is filed under a key the other is looked up by."""
    ka, kb = matching.keys_of(a, rules), matching.keys_of(b, rules)
    return bool(set(ka.index) & set(kb.search) or set(kb.index) & set(ka.search))


def test_keys_are_fhir_tokens_prefixed_and_stable(rules: matching.Rules) -> None:
    p = patient("a", ["Aïssatou", "Marie-Hélène"], "N'Diaye Ouédraogo", ids={NID: "CM-1234-5678-9999"})
    keys = matching.block_keys(p, rules)
    assert keys == matching.block_keys(p, rules) == sorted(set(keys))
    assert keys
    block_names = {b.name for b in rules.blocking}
    for k in keys:
        assert TOKEN.match(k), k
        assert k.split(":", 1)[0] in block_names
    assert not any("1234" in k for k in keys)  # identifier values are hashed


def test_true_variants_share_a_key(rules: matching.Rules) -> None:
    a = patient("a", "Mohamed", "Ouedraogo", birth="1990-03-04")
    b = patient("b", "Muhammad", "Wedraogo", birth="1990-04-03", phone=None)  # spelling + day/month swap
    c = patient("c", "Ouedraogo", "Mohamed", birth="1990", phone=None)  # swapped names, year only
    assert meet(a, b, rules)
    assert meet(a, c, rules)


def test_unrelated_people_share_no_key(rules: matching.Rules) -> None:
    a = patient("a", "Grace", "Achieng", birth="1990-03-04", phone="+254700000001")
    b = patient("b", "Kwame", "Mensah", birth="1971-11-23", phone="+233200000002")
    assert not meet(a, b, rules)


def test_national_id_key_matches_across_demographics(rules: matching.Rules) -> None:
    a = patient("a", "Grace", "Achieng", ids={NID: "12345678"})
    b = patient("b", "Neema", "Otieno", birth=None, phone=None, ids={NID: "1234 5678"})
    assert meet(a, b, rules)


def test_empty_patient_has_no_keys(rules: matching.Rules) -> None:
    assert matching.block_keys({"resourceType": "Patient"}, rules) == []


def test_name_pair_meets_birth_years_one_apart_across_decades(rules: matching.Rules) -> None:
    """Name pair + birth year: filed under its own year, looked up in the years either side — 1979 meets 1980
    (a decade key never did) but not 1981, unless the day and month agree (name pair + day/month, any
    year). Search keys include the index keys, and meeting is symmetric."""

    def record(birth: str) -> dict:
        return patient("a", "Neema", "Mollel", birth=birth, phone=None)

    keys = matching.keys_of(record("1979-03-04"), rules)
    assert [k for k in keys.index if k.startswith("nmy:")] == ["nmy:ML-NM:1979"]
    assert [k for k in keys.search if k.startswith("nmy:")] == [f"nmy:ML-NM:{y}" for y in (1978, 1979, 1980)]
    assert set(keys.index) <= set(keys.search)
    assert keys.index == matching.block_keys(record("1979-03-04"), rules)

    assert meet(record("1979-03-04"), record("1980-07-19"), rules)
    assert meet(record("1980-07-19"), record("1979-03-04"), rules)
    assert not meet(record("1979-03-04"), record("1981-07-19"), rules)
    assert meet(record("1979-03-04"), record("1988-04-03"), rules)  # day/month agree (swapped), years apart
    assert not meet(record("1979-01-01"), record("1988-01-01"), rules)  # an estimated day/month says nothing
