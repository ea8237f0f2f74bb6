from __future__ import annotations

from collections import Counter, defaultdict

from bench.metrics import pairwise
from bench.population import generate_population, household


def test_deterministic_and_shaped_like_a_registry() -> None:
    a, ta = generate_population(400, seed=3)
    b, tb = generate_population(400, seed=3)
    assert a == b and ta == tb
    assert len(set(ta.values())) == 400
    assert len({p["id"] for p in a}) == len(a) == len(ta)
    per_person = Counter(ta.values())
    assert max(per_person.values()) > 1 and min(per_person.values()) == 1
    households = Counter(household(p) for p in set(ta.values()))
    assert max(households.values()) >= 4  # families, not only singles
    for p in a:
        assert p["resourceType"] == "Patient"
        assert all(i["system"].startswith("http") for i in p.get("identifier", []))


def test_contains_the_hard_cases() -> None:
    patients, truth = generate_population(1500, seed=4)
    by_person: dict[str, list[dict]] = defaultdict(list)
    for p in patients:
        by_person[truth[p["id"]]].append(p)
    births: dict[tuple[str, str], set[str]] = defaultdict(set)
    for person, recs in by_person.items():
        for r in recs:
            if len(r.get("birthDate", "")) == 10:
                births[(household(person), r["birthDate"])].add(person)
    assert any(len(people) >= 2 for people in births.values())  # twins
    assert any("Jr" in (n.get("suffix") or []) for p in patients for n in p["name"])  # namesake sons
    assert any(n.get("use") == "maiden" for p in patients for n in p["name"])  # married names
    assert any(len(p.get("birthDate", "")) == 4 for p in patients)  # estimated, year only
    assert any(
        "http://example.org/national-id" in {i["system"] for i in p.get("identifier", [])} for p in patients
    )


def test_pairwise_metrics() -> None:
    truth = {"a": "H1.1", "b": "H1.1", "c": "H1.2", "d": "H2.1"}
    s = pairwise({"a": "x", "b": "x", "c": "x", "d": "y"}, truth, household)
    assert (s.true_pairs, s.predicted_pairs, s.correct_pairs) == (1, 3, 1)
    assert s.household_false_merges == 2
    assert s.precision == 1 / 3 and s.recall == 1.0


def test_shipped_rules_are_precise_on_a_synthetic_population() -> None:
    import matching
    from matching.dedupe import dedupe

    from .conftest import ROOT

    patients, truth = generate_population(800, seed=21)
    r = dedupe(patients, matching.load_rules(ROOT / "rules" / "default.yaml"))
    s = pairwise(dict(zip(r.ids, r.cluster_ids(), strict=True)), truth, household)
    assert s.precision >= 0.99
    assert s.recall >= 0.6
    assert s.household_false_merges <= 0.01 * s.predicted_pairs
