"""Reviewers' decisions as labelled pairs: the decided-pairs CSV export and the decisions count."""

from __future__ import annotations

import csv
import io
import json
import uuid

import yaml

import matching
from matching.__main__ import main as matching_main
from matching.labels import parse_labels
from mediator.admin import labels
from mediator.context import CONFIG
from tests.admin.conftest import make_pair


def another_facility() -> str:
    return f"http://facility-{uuid.uuid4().hex[:8]}.example.org/mrn"


async def _export(admin) -> tuple[list[list[str]], dict[str, str]]:
    """The export's rows (the header first) and its response headers."""
    resp = await admin.client.get("/admin/api/decisions/labels.csv")
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/csv")
    assert "attachment" in resp.headers["Content-Disposition"]
    return list(csv.reader(io.StringIO(await resp.text()))), dict(resp.headers)


async def _csv(admin) -> list[list[str]]:
    return (await _export(admin))[0]


async def test_a_decided_task_is_a_labelled_pair_and_an_open_one_is_not(admin, app_client, facility):
    same = await make_pair(app_client, facility)
    different = await make_pair(app_client, another_facility())
    still_open = await make_pair(app_client, another_facility())
    await admin.post(f"/admin/api/pairs/{same.task}/decision", {"decision": "same-person"})
    await admin.post(f"/admin/api/pairs/{different.task}/decision", {"decision": "different-people"})

    rows = await _csv(admin)
    assert rows[0] == ["id_a", "id_b", "decision", "conflict"]
    body = rows[1:]
    # id_a: the submitted record of the Task; id_b: the other person's record the pair was shown with
    assert [same.source_b, same.source_a, "same", ""] in body
    assert [different.source_b, different.source_a, "different", ""] in body
    ids = {i for row in body for i in row[:2]}
    assert still_open.source_a not in ids and still_open.source_b not in ids


async def test_the_decision_records_the_record_it_was_shown_with(admin, pair, store):
    view = await admin.get(f"/admin/api/pairs/{pair.task}")
    await admin.post(f"/admin/api/pairs/{pair.task}/decision", {"decision": "different-people"})
    task = await store.read("Task", pair.task)
    compared = [o for o in task["output"] if o["type"]["text"] == "compared-record"]
    assert compared == [
        {"type": {"text": "compared-record"}, "valueReference": {"reference": f"Patient/{pair.source_a}"}}
    ]
    assert view["right"]["record"]["id"] == pair.source_a


async def test_a_task_decided_before_decisions_recorded_their_record_still_exports(admin, pair, store):
    await admin.post(f"/admin/api/pairs/{pair.task}/decision", {"decision": "same-person"})
    task = await store.read("Task", pair.task)
    task["output"] = [o for o in task["output"] if o["type"]["text"] != "compared-record"]
    async with store.session.put(f"{store.base_url}/Task/{pair.task}", json=task) as resp:
        assert resp.status == 200, await resp.text()
    assert [pair.source_b, pair.source_a, "same", ""] in (await _csv(admin))[1:]


async def test_the_count_of_decisions_moves_with_a_decision_and_an_undo(admin, app_client, facility):
    first = await make_pair(app_client, facility)
    before = await admin.get("/admin/api/decisions")
    assert before["rules_date_is"] == "unknown" and before["rules_trained_at"] is None
    assert before["since_rules"] == before["decided"]
    await admin.post(f"/admin/api/pairs/{first.task}/decision", {"decision": "different-people"})
    after = await admin.get("/admin/api/decisions")
    assert after["decided"] == before["decided"] + 1
    assert after["since_rules"] == before["since_rules"] + 1
    await admin.post("/admin/api/undo", {"patient": first.golden_b})  # the Task is open again
    assert (await admin.get("/admin/api/decisions"))["decided"] == before["decided"]

    page = await admin.client.get("/admin/decisions")
    text = await page.text()
    assert page.status == 200 and 'href="/admin/api/decisions/labels.csv"' in text
    assert f"<strong>{before['decided']}</strong>" in text


async def test_decisions_since_the_rules_were_trained(admin, app_client, pair):
    holder = app_client.app[CONFIG]
    await admin.post(f"/admin/api/pairs/{pair.task}/decision", {"decision": "same-person"})
    doc = holder.current.rules.to_dict()
    for trained, expected in (("2999-01-01T00:00:00+00:00", 0), ("2000-01-01T00:00:00+00:00", None)):
        rules = matching.load_rules({**doc, "trained": trained})
        holder.replace(holder.current.with_changes(rules=rules))
        counts = await admin.get("/admin/api/decisions")
        assert counts["rules_date_is"] == "trained" and counts["rules_trained_at"] == trained
        assert counts["since_rules"] == (counts["decided"] if expected is None else expected)
    page = await (await admin.client.get("/admin/decisions")).text()
    assert "were trained on 2000-01-01T00:00:00+00:00" in page


async def test_export_round_trips_through_matching_train(admin, app_client, facility, store, tmp_path):
    pair = await make_pair(app_client, facility)
    other = await make_pair(app_client, another_facility())
    await admin.post(f"/admin/api/pairs/{pair.task}/decision", {"decision": "same-person"})
    await admin.post(f"/admin/api/pairs/{other.task}/decision", {"decision": "different-people"})
    rows, headers = await _export(admin)
    assert (headers[labels.CONFLICT_GROUPS], headers[labels.CONFLICT_ROWS]) == ("0", "0")
    assert {row[3] for row in rows[1:]} == {""}
    ids = {i for row in rows[1:] for i in row[:2]}
    assert {pair.source_a, pair.source_b, other.source_a, other.source_b} <= ids
    parsed = parse_labels(rows, ids)  # what `train --labels` does with it: no problem raised
    assert {(lb.id_a, lb.id_b, lb.same) for lb in parsed} >= {
        (pair.source_b, pair.source_a, True),
        (other.source_b, other.source_a, False),
    }

    # the file itself, with the decided records as the training input
    ndjson = tmp_path / "records.ndjson"
    records_ = [await store.read("Patient", i) for i in sorted(ids)]
    ndjson.write_text("".join(json.dumps(r) + "\n" for r in records_ if r))
    labels_csv = tmp_path / "decided.csv"
    labels_csv.write_bytes(await (await admin.client.get("/admin/api/decisions/labels.csv")).read())
    out = tmp_path / "trained.yaml"
    argv = [
        "train",
        "--rules",
        "rules/default.yaml",
        str(ndjson),
        "-o",
        str(out),
        "--quiet",
        "--keep-weights",
    ]
    assert matching_main([*argv, "--labels", str(labels_csv)]) == 0
    trained = yaml.safe_load(out.read_text())
    assert isinstance(trained["trained"], str)
    assert matching.load_rules(out).source["trained"] == trained["trained"]


def test_rows_keep_the_latest_decision_of_a_pair():
    def task(tid: str, a: str, b: str, decision: str, when: str) -> dict[str, object]:
        return {
            "id": tid,
            "status": "completed",
            "lastModified": when,
            "focus": {"reference": f"Patient/{a}"},
            "output": [
                {"type": {"text": "decision"}, "valueString": decision},
                {"type": {"text": "compared-record"}, "valueReference": {"reference": f"Patient/{b}"}},
            ],
        }

    assert labels.decision_of(task("t", "a", "b", "same-person", "2")) == "same"
    assert labels.decision_of({**task("t", "a", "b", "same-person", "2"), "status": "cancelled"}) is None
    assert labels.decision_of(task("t", "a", "b", "resolved-by-merge", "2")) is None
    tasks = [
        task("t1", "a", "b", "same-person", "2026-01-01"),
        task("t2", "c", "d", "different-people", "2026-01-02"),
        task("t3", "b", "a", "different-people", "2026-01-03"),  # the same pair, decided again later
        {
            **task("t4", "e", "f", "same-person", "2026-01-04"),
            "output": [{"type": {"text": "decision"}, "valueString": "same-person"}],
        },
    ]
    assert labels.pairs_of(tasks, {}) == [("c", "d", "different"), ("b", "a", "different")]
    assert labels.pairs_of(tasks, {"t4": "g"})[-1] == ("e", "g", "same")


async def _set_task(store, task_id: str, **changes: object) -> None:
    task = {**await store.read("Task", task_id), **changes}
    async with store.session.put(f"{store.base_url}/Task/{task_id}", json=task) as resp:
        assert resp.status == 200, await resp.text()


def _shown(focus: str, compared: str, decision: str) -> dict[str, object]:
    """A decided Task's focus and outputs: ``focus`` decided ``decision`` beside ``compared``."""
    return {
        "focus": {"reference": f"Patient/{focus}"},
        "output": [
            {"type": {"text": "decision"}, "valueString": decision},
            {"type": {"text": "compared-record"}, "valueReference": {"reference": f"Patient/{compared}"}},
        ],
    }


async def test_the_export_flags_a_contradicting_chain_and_train_refuses_it(
    admin, app_client, store, tmp_path, capsys
):
    """X same Y, Y same Z, X different Z: three decided Tasks whose pairs are made to chain (decisions
    recorded that way, as a reviewer could have reached them over time)."""
    made = [await make_pair(app_client, another_facility()) for _ in range(3)]
    x, y, z = made[0].source_a, made[0].source_b, made[1].source_a
    decided = (("same-person", y, x), ("same-person", y, z), ("different-people", x, z))
    try:
        for p, (decision, focus, compared) in zip(made, decided, strict=True):
            await admin.post(f"/admin/api/pairs/{p.task}/decision", {"decision": decision})
            await _set_task(store, p.task, **_shown(focus, compared, decision))
        rows, headers = await _export(admin)
        line_of = {tuple(row[:2]): line for line, row in enumerate(rows, start=1)}
        chain = [row for row in rows[1:] if row[3]]
        assert sorted(chain) == sorted(
            [[y, x, "same", "group-1"], [y, z, "same", "group-1"], [x, z, "different", "group-1"]]
        )
        assert (headers[labels.CONFLICT_GROUPS], headers[labels.CONFLICT_ROWS]) == ("1", "3")

        # train reads the file and refuses it, naming the different pair's row and the rows that join it
        ndjson = tmp_path / "records.ndjson"
        ids = sorted({i for row in rows[1:] for i in row[:2]})
        ndjson.write_text("".join([json.dumps(await store.read("Patient", i)) + "\n" for i in ids]))
        labels_csv = tmp_path / "decided.csv"
        labels_csv.write_bytes(await (await admin.client.get("/admin/api/decisions/labels.csv")).read())
        out = tmp_path / "trained.yaml"
        argv = ["train", "--rules", "rules/default.yaml", str(ndjson), "-o", str(out), "--quiet"]
        capsys.readouterr()
        assert matching_main([*argv, "--keep-weights", "--labels", str(labels_csv)]) == 2
        err = capsys.readouterr().err
        joined = ", ".join(str(n) for n in sorted((line_of[(y, x)], line_of[(y, z)])))
        assert (
            f"line {line_of[(x, z)]}: {x} / {z} decided different, but same-person decisions join them "
            f"through other records (lines {joined})"
        ) in err
        assert not out.exists()
    finally:  # later tests export every decision of the session: leave no contradiction behind
        for p in made:
            await _set_task(store, p.task, status="cancelled")
    rows, headers = await _export(admin)
    assert headers[labels.CONFLICT_GROUPS] == "0" and {row[3] for row in rows[1:]} == {""}


def test_the_conflict_column_names_the_group_of_each_chain():
    pairs = [
        ("a", "b", "same"),
        ("p", "q", "different"),
        ("b", "c", "same"),
        ("c", "d", "same"),  # on no path between a and c: not flagged
        ("x", "y", "same"),
        ("y", "z", "same"),
        ("z", "x", "different"),
        ("a", "c", "different"),
    ]
    export = labels.to_csv(pairs)
    assert export.text.splitlines() == [
        "id_a,id_b,decision,conflict",
        "a,b,same,group-2",
        "p,q,different,",
        "b,c,same,group-2",
        "c,d,same,",
        "x,y,same,group-1",
        "y,z,same,group-1",
        "z,x,different,group-1",
        "a,c,different,group-2",
    ]
    assert (export.groups, export.flagged) == (2, 6)
    assert labels.to_csv([]) == labels.Export("id_a,id_b,decision,conflict\n", 0, 0)
