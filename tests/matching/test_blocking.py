from __future__ import annotations

import re

import matching

from .conftest import NID, patient

TOKEN = re.compile(r"^[A-Za-z0-9._:-]{1,60}$")


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
    ka, kb, kc = (set(matching.block_keys(x, rules)) for x in (a, b, c))
    assert ka & kb
    assert ka & kc


def test_unrelated_people_share_no_key(rules: matching.Rules) -> None:
    a = patient("a", "Grace", "Achieng", birth="1990-03-04", phone="+254700000001")
    b = patient("b", "Kwame", "Mensah", birth="1971-11-23", phone="+233200000002")
    assert not set(matching.block_keys(a, rules)) & set(matching.block_keys(b, rules))


def test_national_id_key_matches_across_demographics(rules: matching.Rules) -> None:
    a = patient("a", "Grace", "Achieng", ids={NID: "12345678"})
    b = patient("b", "Neema", "Otieno", birth=None, phone=None, ids={NID: "1234 5678"})
    assert set(matching.block_keys(a, rules)) & set(matching.block_keys(b, rules))


def test_empty_patient_has_no_keys(rules: matching.Rules) -> None:
    assert matching.block_keys({"resourceType": "Patient"}, rules) == []


def test_name_pair_meets_birth_years_up_to_two_apart_across_decades(rules: matching.Rules) -> None:
    """Name pair + birth year ±1: 1979 and 1981 share a key (a decade key never did); 1979 and 1983 do not,
    unless the day and month agree (name pair + day/month, any year)."""

    def keys(birth: str) -> set[str]:
        p = patient("a", "Neema", "Mollel", birth=birth, phone=None)
        return {k for k in matching.block_keys(p, rules) if k.startswith(("nmy:", "nmm:"))}

    assert keys("1979-03-04") & keys("1981-07-19")
    assert not keys("1979-03-04") & keys("1983-07-19")
    assert keys("1979-03-04") & keys("1988-04-03")  # day/month (swapped) agree, years far apart
    assert not keys("1979-01-01") & keys("1988-01-01")  # an estimated date's day/month says nothing
