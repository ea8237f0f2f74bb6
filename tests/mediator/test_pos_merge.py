"""A point-of-service system merges two of its own records (IHE PMIR ITI-93): the subsumed record, sent
``active: false`` with one ``replaced-by`` link, joins its survivor's person; every other link is refused."""

from __future__ import annotations

from typing import Any

import pytest

from mediator import linking, records
from mediator.errors import Forbidden, InvalidInput, Unprocessable
from tests.conftest import patient


def replaced_by(other: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "replaced-by", "other": other}]


# -- the pure rule ---------------------------------------------------------------------------------------


def test_merge_link_reads_one_replaced_by_link_and_refuses_the_rest():
    assert linking.merge_link(None, "urn:cruid") is None and linking.merge_link([], "urn:cruid") is None
    link = linking.merge_link(replaced_by({"reference": "http://cr/fhir/Patient/src-1"}), "urn:cruid")
    assert link == linking.MergeLink(0, "src-1")
    by_id = linking.merge_link(replaced_by({"identifier": {"system": "urn:s", "value": " 7 "}}), "urn:cruid")
    assert by_id == linking.MergeLink(0, records.source_record_id("urn:s", "7"), "urn:s")
    for bad in (
        [{"type": "replaced-by"}],
        replaced_by({"reference": "Patient?identifier=urn:s|7"}),
        replaced_by({"reference": "Patient/src-1", "identifier": {"system": "urn:s", "value": "7"}}),
        replaced_by({"identifier": {"system": "urn:s"}}),
        ["not a link"],
    ):
        with pytest.raises(InvalidInput):
            linking.merge_link(bad, "urn:cruid")


def test_merge_target_refusals_in_order():
    link = linking.MergeLink(0, "src-b")
    survivor = {
        "resourceType": "Patient",
        "id": "src-b",
        "identifier": [{"system": "urn:s", "value": "b"}],
        "link": [{"type": "refer", "other": {"reference": "Patient/cr-b"}}],
    }
    survivor["id"] = records.source_record_id("urn:s", "b")
    link = linking.MergeLink(0, survivor["id"])
    assert linking.merge_target(link, "src-a", survivor, lambda s: s == "urn:s") == "cr-b"
    with pytest.raises(Forbidden):
        linking.merge_target(link, "src-a", survivor, lambda s: False)
    with pytest.raises(Forbidden):  # by identifier: refused before anything is known of the record
        linking.merge_target(linking.MergeLink(0, "src-z", "urn:other"), "src-a", None, lambda s: False)
    with pytest.raises(Unprocessable):
        linking.merge_target(link, survivor["id"], survivor, lambda s: True)
    with pytest.raises(Unprocessable):
        linking.merge_target(link, "src-a", None, lambda s: True)


def test_the_link_state_of_a_merged_record_round_trips():
    source = records.build_source_record(
        patient("urn:s", "a", family="X"),
        "src-a",
        client_id=None,
        golden_id="cr-b",
        block_keys=[],
        survivor="src-b",
    )
    state = records.link_state(source)
    assert state == {"kind": "source", "golden": "cr-b", "manual": True, "pos_merge": "src-b"}
    assert records.link_state(records.with_link_state(source, state)) == state
    plain = records.with_link_state(source, {"kind": "source", "golden": "cr-c", "manual": True})
    assert records.link_decision(plain) == records.MANUAL and records.pos_survivor(plain) is None


def test_followers_are_the_records_merged_into_the_survivor():
    def source(sid: str, survivor: str | None) -> records.Resource:
        return records.build_source_record(
            patient("urn:s", sid, family="X"),
            sid,
            client_id=None,
            golden_id="cr-1",
            block_keys=[],
            survivor=survivor,
        )

    found = [source("src-a", "src-s"), source("src-b", None), None, source("src-c", "src-other")]
    assert linking.followers("src-s", found) == ["src-a"]
