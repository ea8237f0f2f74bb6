from __future__ import annotations

import csv
import json
import pathlib

import pytest

import matching
from matching.__main__ import main

from .conftest import NID, ROOT, patient

RULES = str(ROOT / "rules" / "default.yaml")


def write_ndjson(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def population(tmp_path: pathlib.Path) -> pathlib.Path:
    a = patient("a", "Neema", "Mollel")
    b = patient("b", "Neema", "Molel", phone=None)
    twin = patient("t", "Rehema", "Mollel")
    other = patient("o", "Kofi", "Boateng", birth="1970-01-30", gender="male", phone="+233200000001")
    return write_ndjson(tmp_path / "in.ndjson", [json.dumps(x) for x in (a, b, twin, other)])


def test_dedupe_contract(
    tmp_path: pathlib.Path, population: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, review = tmp_path / "out.csv", tmp_path / "review.csv"
    assert main(["dedupe", "--rules", RULES, str(population), "-o", str(out), "--review", str(review)]) == 0
    rows = list(csv.reader(out.read_text().splitlines()))
    assert rows[0] == ["id", "cluster"]
    cluster = dict(rows[1:])
    assert set(cluster) == {"a", "b", "t", "o"}
    assert cluster["a"] == cluster["b"]
    assert cluster["t"] != cluster["a"]
    assert cluster["o"] not in (cluster["a"], cluster["t"])
    review_rows = list(csv.DictReader(review.read_text().splitlines()))
    assert any({r["id_a"], r["id_b"]} <= {"a", "b", "t"} for r in review_rows)
    assert "candidate pairs" in capsys.readouterr().err  # progress on stderr


def test_bad_lines_reported_and_skipped_or_fatal(
    tmp_path: pathlib.Path, population: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = population.read_text().splitlines()
    bad = write_ndjson(
        tmp_path / "bad.ndjson",
        [lines[0], "{not json", '{"resourceType": "Observation", "id": "x"}', lines[1]],
    )
    out = tmp_path / "out.csv"
    assert main(["dedupe", "--rules", RULES, str(bad), "-o", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"{bad}:2: not JSON" in err
    assert f"{bad}:3: not a FHIR Patient" in err
    assert [r[0] for r in csv.reader(out.read_text().splitlines())][1:] == ["a", "b"]
    out.unlink()
    assert main(["dedupe", "--rules", RULES, str(bad), "-o", str(out), "--on-bad-line", "fail"]) == 2
    assert not out.exists()


def test_invalid_rules_exit_1(
    tmp_path: pathlib.Path, population: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nthresholds: {auto_match: 5, potential_match: 9}\n")
    assert main(["dedupe", "--rules", str(bad), str(population), "-o", str(tmp_path / "o.csv")]) == 1
    assert "line 2: thresholds.potential_match" in capsys.readouterr().err


def test_explain(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(patient("a", "Joseph", "Otieno")))
    b.write_text(json.dumps(patient("b", "Yusuf", "Otieno")))
    assert main(["explain", "--rules", RULES, str(a), str(b), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {f["field"]: f["level"] for f in doc["fields"]}["given"] == "alias"
    assert main(["explain", "--rules", RULES, str(a), str(b)]) == 0
    assert "classification:" in capsys.readouterr().out


def test_train_writes_readable_rules_that_load(tmp_path: pathlib.Path) -> None:
    from bench.population import generate_population

    patients, _ = generate_population(300, seed=5)
    src = write_ndjson(tmp_path / "p.ndjson", [json.dumps(p) for p in patients])
    out = tmp_path / "trained.yaml"
    assert main(["train", "--rules", RULES, str(src), "-o", str(out), "--quiet"]) == 0
    text = out.read_text()
    assert "# weight" in text
    trained = matching.load_rules(out)
    default = matching.load_rules(RULES)
    assert trained.auto_threshold >= default.auto_threshold  # raised where the scores ask for it
    assert trained.potential_threshold == default.potential_threshold
    assert trained.deterministic == default.deterministic
    assert trained.field("given").frequencies  # term frequencies learnt
    given_exact = trained.field("given").weights[1]
    given_else = trained.field("given").weights[-1]
    assert given_exact > 2 > 0 > given_else


def test_missing_input_exits_2(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["dedupe", "--rules", RULES, str(tmp_path / "nope.ndjson"), "-o", str(tmp_path / "o.csv")]) == 2
    )
    assert "nope.ndjson" in capsys.readouterr().err


def test_duplicate_ids_are_bad_lines(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = json.dumps(patient("a", "Neema", "Mollel"))
    src = write_ndjson(tmp_path / "dup.ndjson", [a, a])
    assert main(["dedupe", "--rules", RULES, str(src), "-o", str(tmp_path / "o.csv"), "--quiet"]) == 0
    assert "dup.ndjson:2: duplicate Patient id 'a'" in capsys.readouterr().err


def test_train_keep_weights_estimates_only_prior_and_frequencies(tmp_path: pathlib.Path) -> None:
    from bench.population import generate_population

    patients, _ = generate_population(300, seed=6)
    src = write_ndjson(tmp_path / "p.ndjson", [json.dumps(p) for p in patients])
    out = tmp_path / "kept.yaml"
    assert main(["train", "--rules", RULES, str(src), "-o", str(out), "--quiet", "--keep-weights"]) == 0
    kept, default = matching.load_rules(out), matching.load_rules(RULES)
    assert [(f.m, f.u) for f in kept.fields] == [(f.m, f.u) for f in default.fields]
    assert kept.prior != default.prior
    assert kept.field("given").frequencies


def test_train_labels_inform_m_and_are_reported(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench.population import generate_population

    patients, truth = generate_population(300, seed=6)
    src = write_ndjson(tmp_path / "p.ndjson", [json.dumps(p) for p in patients])
    by_person: dict[str, list[str]] = {}
    for p in patients:
        by_person.setdefault(truth[p["id"]], []).append(p["id"])
    same = [ids[:2] for ids in by_person.values() if len(ids) > 1][:40]
    people = list(by_person.values())
    different = [(people[k][0], people[k + 1][0]) for k in range(0, 20, 2)]
    labels = tmp_path / "decided.csv"
    labels.write_text(
        "id_a,id_b,decision\n"
        + "".join(f"{a},{b},same\n" for a, b in same)
        + "".join(f"{a},{b},different\n" for a, b in different)
    )
    out = tmp_path / "kept.yaml"
    args = ["train", "--rules", RULES, str(src), "-o", str(out), "--quiet", "--keep-weights"]
    assert main([*args, "--labels", str(labels)]) == 0
    kept, default = matching.load_rules(out), matching.load_rules(RULES)
    assert [f.u for f in kept.fields] == [f.u for f in default.fields]  # u is not what reviewers decide
    assert [f.m for f in kept.fields] != [f.m for f in default.fields]
    assert kept.deterministic == default.deterministic
    text = out.read_text()
    assert f"m blended with {len(same)} same-person decisions" in text
    assert f"{len(different)} different-people decisions, of which these rules auto-match 0" in text


def test_train_refuses_labels_with_unknown_ids_or_contradictions(
    tmp_path: pathlib.Path, population: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "decided.csv"
    labels.write_text(
        "id_a,id_b,decision\n"
        "a,b,same\n"  # 2
        "b,t,same\n"  # 3
        "a,t,different\n"  # 4: a and t are joined through b
        "a,zz,same\n"  # 5: unknown id
        "o,a,maybe\n"  # 6
        "b,a,different\n"  # 7: decided both ways
    )
    out = tmp_path / "t.yaml"
    args = ["train", "--rules", RULES, str(population), "-o", str(out), "--quiet", "--keep-weights"]
    assert main([*args, "--labels", str(labels)]) == 2
    err = capsys.readouterr().err
    assert "labels refused, nothing trained" in err
    assert "line 5: unknown id 'zz'" in err
    assert "line 6: decision must be same or different, got 'maybe'" in err
    assert "line 7: b / a decided different, but same on line 2" in err
    assert "line 4: a / t decided different, but same-person decisions join them" in err
    assert not out.exists()


def test_explain_names_the_guard_that_stepped_aside_and_the_one_that_capped(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nid = {NID: "123456789"}
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(patient("a", "Hassan", "Juma", gender="male", ids=nid)))
    b.write_text(json.dumps(patient("b", "Hussein", "Juma", gender="male", ids=nid)))
    c.write_text(json.dumps(patient("c", "Hussein", "Juma", gender="male")))
    # the same national id: different-given-name holds its `when`, and steps aside
    assert main(["explain", "--rules", RULES, str(a), str(b), "--json"]) == 0
    guards = json.loads(capsys.readouterr().out)["guards"]
    assert guards["capped_by"] is None
    assert guards["stepped_aside"] == [
        {
            "rule": "different-given-name",
            "unless": {"national_id": ["exact"], "birth_date": ["exact", "swapped", "estimated", "one_part"]},
        }
    ]
    assert main(["explain", "--rules", RULES, str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert (
        "guard stepped aside: different-given-name (unless: national_id exact, birth_date exact/swapped/"
        in out
    )
    assert "capped by guard" not in out
    # without it the guard caps the score
    assert main(["explain", "--rules", RULES, str(a), str(c), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["guards"] == {
        "capped_by": "different-given-name",
        "fired": ["different-given-name"],
        "stepped_aside": [],
    }
    assert main(["explain", "--rules", RULES, str(a), str(c)]) == 0
    assert "capped by guard: different-given-name" in capsys.readouterr().out
