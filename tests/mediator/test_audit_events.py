"""AuditEvents of registry transactions: one per transaction, one group of entities per submission."""

from __future__ import annotations

from mediator import audit, records
from mediator.admin.queries import _event_summary


def _decision(n: int, golden: str, previous: str | None = None) -> audit.RecordDecision:
    return audit.RecordDecision(
        action="update" if previous else "create",
        source_id=f"src-{n}",
        golden_id=golden,
        previous_golden_id=previous,
        outcome="match",
        score=12.5,
        rule="default",
    )


def test_a_transaction_of_three_submissions_is_one_event_with_three_groups():
    actor = audit.Actor(client_id="emr", address="10.0.0.1")
    event = audit.submission_event(
        actor=actor,
        decisions=[_decision(1, "cr-a"), _decision(2, "cr-b", previous="cr-a"), _decision(3, "cr-c")],
    )
    groups = audit.groups(event)
    assert [[records.ref_id(e["what"]["reference"]) for e in g] for g in groups] == [
        ["src-1", "cr-a"],
        ["src-2", "cr-b", "cr-a"],
        ["src-3", "cr-c"],
    ]
    assert audit.details_of(groups[1][0])["previous-cruid"] == "cr-a"
    assert event["subtype"][0]["code"] == "update", "any update makes the event an update"
    assert "name" not in str(event) and "birthDate" not in str(event)


def test_history_shows_only_the_submissions_about_the_record():
    actor = audit.Actor(client_id=None, address="bulk-load")
    event = {
        "id": "au-1",
        **audit.submission_event(actor=actor, decisions=[_decision(n, f"cr-{n}") for n in range(50)]),
    }
    summary = _event_summary(event, {"cr-7", "src-7"})
    assert [e["what"] for e in summary["entities"]] == ["Patient/src-7", "Patient/cr-7"]
    assert summary["decision"] == "match"
    assert len(_event_summary(event)["entities"]) == 100, "without a record to show, everything"
