from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

import matching

from .conftest import ROOT


def test_default_rules_load_and_round_trip(rules: matching.Rules) -> None:
    assert rules.name == "default"
    assert rules.potential_threshold < rules.auto_threshold
    again = matching.load_rules(rules.to_dict())
    assert again == rules
    assert again.to_dict() == rules.to_dict()


def _problems(doc: dict[str, Any], folder: pathlib.Path) -> tuple[list[str], list[str]]:
    """The problems loading ``doc`` from a YAML file reports, and that file's lines."""
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(matching.RulesError) as err:
        matching.load_rules(path)
    return err.value.problems, path.read_text().splitlines()


def test_all_problems_reported_with_lines(tmp_path: pathlib.Path) -> None:
    doc = yaml.safe_load((ROOT / "rules" / "default.yaml").read_text())
    doc["fields"]["given"]["comparator"] = "jarowinkler"
    doc["fields"]["family"]["levels"]["exact"]["m"] = 1.5
    doc["thresholds"]["auto_match"] = 1000
    doc["deterministic"][1]["when"] = {"nationalid": "else"}
    doc["colour"] = "blue"
    problems, lines = _problems(doc, tmp_path)
    assert len(problems) == 5, problems

    def line_of(text: str) -> int:
        return next(i + 1 for i, line in enumerate(lines) if text in line)

    by_key = {p.split(": ", 2)[1]: p for p in problems}
    assert by_key["fields.given.comparator"].startswith(f"line {line_of('jarowinkler')}:")
    assert "jaro_winkler" in by_key["fields.given.comparator"]  # the known names are listed
    assert by_key["fields.family.levels.exact.m"].startswith(f"line {line_of('m: 1.5')}:")
    assert by_key["thresholds.auto_match"].startswith(f"line {line_of('auto_match: 1000')}:")
    assert by_key["deterministic.1.when.nationalid"].startswith(f"line {line_of('nationalid')}:")
    assert by_key["colour"].startswith(f"line {line_of('colour')}:")


def test_mapping_problems_name_key_paths(rules: matching.Rules) -> None:
    doc = rules.to_dict()
    doc["fields"]["birth_date"]["levels"].pop("swapped")
    doc["blocking"][0]["key"] = ["birthDate.century"]
    doc["thresholds"]["potential_match"] = 50
    doc["clustering"] = {"min_cross_pair": "match"}
    with pytest.raises(matching.RulesError) as err:
        matching.load_rules(doc)
    text = "\n".join(err.value.problems)
    assert "clustering.min_cross_pair: must be potential or no_match, got 'match'" in text
    assert "fields.birth_date.levels: level 'swapped' needs" in text
    assert "blocking.0.key.0: unknown key part 'birthDate.century'" in text
    assert "thresholds.potential_match: must not be above auto_match" in text
    assert "line " not in text


def test_comparator_must_fit_the_path(rules: matching.Rules) -> None:
    doc = rules.to_dict()
    doc["fields"]["gender"]["comparator"] = "date"
    with pytest.raises(
        matching.RulesError, match=r"fields.gender.comparator: comparator 'date' cannot compare"
    ):
        matching.load_rules(doc)


def test_unreadable_and_malformed_files(tmp_path: pathlib.Path) -> None:
    with pytest.raises(matching.RulesError, match="cannot read"):
        matching.load_rules(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nfields: [\n")
    with pytest.raises(matching.RulesError, match="YAML syntax error"):
        matching.load_rules(bad)


def test_unless_is_validated_with_lines(tmp_path: pathlib.Path) -> None:
    doc = yaml.safe_load((ROOT / "rules" / "default.yaml").read_text())
    guard = next(r for r in doc["deterministic"] if r["name"] == "twin-guard")
    guard["unless"] = [{"national_idd": "exact"}, {"facility_id": "same"}]
    gender = next(r for r in doc["deterministic"] if r["name"] == "gender-conflict")
    gender["unless"] = "national_id"
    problems, lines = _problems(doc, tmp_path)
    assert len(problems) == 3, problems
    i = doc["deterministic"].index(guard)
    field = next(p for p in problems if f"deterministic.{i}.unless.0.national_idd:" in p)
    assert field.startswith(f"line {next(n + 1 for n, t in enumerate(lines) if 'national_idd' in t)}:")
    assert "unknown field 'national_idd'" in field
    level = next(p for p in problems if f"deterministic.{i}.unless.1.facility_id:" in p)
    assert "unknown level 'same'" in level
    assert level.startswith(f"line {next(n + 1 for n, t in enumerate(lines) if 'facility_id: same' in t)}:")
    assert any("unless: must be a mapping" in p for p in problems)


def test_unless_round_trips_and_a_rule_without_it_fires_as_before(rules: matching.Rules) -> None:
    twin = next(r for r in rules.deterministic if r.name == "twin-guard")
    assert {"national_id": frozenset({"exact"})}.items() <= dict(twin.unless[0]).items()
    doc = rules.to_dict()
    for r in doc["deterministic"]:
        r.pop("unless", None)
    plain = matching.load_rules(doc)
    assert all(r.unless == () for r in plain.deterministic)
    assert matching.load_rules(plain.to_dict()) == plain


def test_values_cached_under_freed_rules_do_not_reach_new_rules(rules: matching.Rules) -> None:
    """Issue 20: the cache of normalised values was keyed by id(rules); a new Rules object that got the id
    of a freed one inherited its values, here `city` read from address.city instead of address.district."""
    import dataclasses

    from matching.scoring import extract

    stored = {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"},
        "address": [{"city": "Arusha", "district": "Sokon"}],
    }
    by_district = tuple(
        dataclasses.replace(f, path="address.district") if f.name == "city" else f for f in rules.fields
    )
    for _ in range(100):  # CPython often hands a freed object's id to the next object of its size
        old = dataclasses.replace(rules)
        assert extract(stored, old)["city"] == ("arusha",)
        del old  # freed here (reference counting)
        new = dataclasses.replace(rules, fields=by_district)
        assert extract(stored, new)["city"] == ("sokon",)
        del new
