"""IHE PDQm demographics match, ``POST Patient/$match`` (mediator/pdqm.py): the people a Patient's
demographics point to, graded as a submission of it would be decided, answered with identifiers only."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import yaml

import matching
from mediator.admin import queries
from mediator.context import CONFIG
from mediator.fhir_client import HapiClient
from mediator.settings import REPO_ROOT
from tests.conftest import patient, unique_surname

GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
DEMOGRAPHICS = {"name", "birthDate", "gender", "telecom", "address", "link", "extension"}


def _query(resource: dict[str, Any], **extra: Any) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [{"name": "resource", "resource": resource}]
    if "count" in extra:
        parameters.append({"name": "count", "valueInteger": extra["count"]})
    if "only_certain" in extra:
        parameters.append({"name": "onlyCertainMatches", "valueBoolean": extra["only_certain"]})
    return {"resourceType": "Parameters", "parameter": parameters}


def _without_identifiers(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "identifier"}


async def _match(client: Any, body: Any, **headers: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/fhir/Patient/$match", json=body, headers=headers)
    return resp.status, await resp.json(content_type=None)


def _people(bundle: dict[str, Any]) -> list[tuple[str, str]]:
    """(golden id, grade) of each entry, in the answer's order."""
    return [
        (e["resource"]["id"], next(x["valueCode"] for x in e["search"]["extension"] if x["url"] == GRADE))
        for e in bundle["entry"]
    ]


def _system() -> str:
    return f"urn:test:match:{uuid.uuid4().hex[:8]}"


async def test_a_person_is_found_by_demographics_and_answered_with_identifiers_only(client, store, settings):
    family = unique_surname()
    clinic, lab = _system(), _system()
    a = await client.post("/fhir/Patient", json=patient(clinic, "C1", family=family))
    b = await client.post("/fhir/Patient", json=patient(lab, "L1", family=family))
    assert a.headers["X-CRUID"] == b.headers["X-CRUID"]
    before = len(await store.sources_with(clinic)) + len(await store.sources_with(lab))

    status, bundle = await _match(client, _query(_without_identifiers(patient(clinic, "-", family=family))))

    assert status == 200, bundle
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset" and bundle["total"] == 1
    [entry] = bundle["entry"]
    assert _people(bundle) == [(a.headers["LocationCRUID"].split("/")[1], "certain")]
    assert entry["search"]["mode"] == "match" and 0.9 < entry["search"]["score"] <= 1.0
    resource = entry["resource"]
    assert not DEMOGRAPHICS & set(resource), resource  # never a person's demographics
    assert {(i["system"], i["value"]) for i in resource["identifier"]} == {
        (settings.cruid_system, a.headers["X-CRUID"]),
        (clinic, "C1"),
        (lab, "L1"),
    }
    after = len(await store.sources_with(clinic)) + len(await store.sources_with(lab))
    assert after == before == 2  # a query writes no record


@pytest.mark.parametrize(
    ("given", "birth_date", "phone", "family"),
    [
        ("Amina", "1987-04-12", "", None),  # the same demographics
        ("Aminah", "1987-04-12", None, None),  # a spelling variant, no phone
        ("Zawadi", "1987-04-12", "", None),  # a twin: another given name, same birth date and phone
        ("Amina", "1987-04-21", None, None),  # day and month swapped, no phone
        ("Kwame", "1950-01-01", None, "other"),  # somebody else
    ],
)
async def test_the_grade_is_what_a_submission_of_the_patient_would_be_decided(
    client, facility, given, birth_date, phone, family
):
    surname = unique_surname()
    stored = await client.post("/fhir/Patient", json=patient(facility, "S1", family=surname))
    assert stored.status == 201
    query = patient(
        facility,
        "S2",
        family=unique_surname() if family else surname,
        given=given,
        birth_date=birth_date,
        phone=phone,  # "": the family's phone (the helper derives it from the family name)
    )

    status, bundle = await _match(client, _query(query))  # the very Patient submitted next
    assert status == 200, bundle
    submitted = await client.post("/fhir/Patient", json=query)
    outcome = submitted.headers["X-Match-Outcome"]

    golden = stored.headers["LocationCRUID"].split("/")[1]
    expected = {"match": [(golden, "certain")], "potential": [(golden, "possible")], "no_match": []}
    assert _people(bundle) == expected[outcome], (outcome, bundle)
    if given == "Amina" and birth_date == "1987-04-12":
        assert outcome == "match"
    if family:
        assert outcome == "no_match"


async def test_two_people_the_demographics_cannot_tell_apart(client, settings):
    """Two people with the same demographics, kept apart by their national ids: both answered as certain,
    and none when only a certain match will do (the caller would have to choose)."""
    family = unique_surname()
    nid = settings.shared_identifier_systems[0]
    first = await client.post(
        "/fhir/Patient",
        json=patient(_system(), "P1", family=family, extra_identifiers=[{"system": nid, "value": "N-1"}]),
    )
    second = await client.post(
        "/fhir/Patient",
        json=patient(_system(), "P2", family=family, extra_identifiers=[{"system": nid, "value": "N-2"}]),
    )
    assert first.headers["X-CRUID"] != second.headers["X-CRUID"]
    query = _without_identifiers(patient(_system(), "-", family=family))

    _, both = await _match(client, _query(query))
    goldens = {first.headers["LocationCRUID"].split("/")[1], second.headers["LocationCRUID"].split("/")[1]}
    assert sorted(_people(both)) == sorted((g, "certain") for g in goldens)
    _, none = await _match(client, _query(query, only_certain=True))
    assert none["entry"] == [] and none["total"] == 0
    _, one = await _match(client, _query(query, count=1))
    assert len(one["entry"]) == 1

    with_nid = {**query, "identifier": [{"system": nid, "value": "N-2"}]}
    _, certain = await _match(client, _query(with_nid, only_certain=True))
    assert _people(certain) == [(second.headers["LocationCRUID"].split("/")[1], "certain")]


@pytest.mark.parametrize(
    ("body", "expression"),
    [
        ({"resourceType": "Patient"}, ["Parameters"]),
        ({"resourceType": "Parameters", "parameter": {}}, ["Parameters.parameter"]),
        ({"resourceType": "Parameters", "parameter": []}, None),
        (
            {"resourceType": "Parameters", "parameter": [{"name": "resource", "valueString": "x"}]},
            ["Parameters.parameter[0]"],
        ),
        (
            {
                "resourceType": "Parameters",
                "parameter": [{"name": "resource", "resource": {"resourceType": "Basic"}}],
            },
            ["Parameters.parameter[0].resource"],
        ),
        (_query({"resourceType": "Patient", "birthDate": "1987-13-45"}), None),
        (_query({"resourceType": "Patient"}, count=0), ["Parameters.parameter[1]"]),
        (_query({"resourceType": "Patient"}, count=51), ["Parameters.parameter[1]"]),
        (_query({"resourceType": "Patient"}, count="5"), ["Parameters.parameter[1]"]),
        (_query({"resourceType": "Patient"}, count=True), ["Parameters.parameter[1]"]),
        (_query({"resourceType": "Patient"}, only_certain="yes"), ["Parameters.parameter[1]"]),
        (
            {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "resource", "resource": {"resourceType": "Patient"}},
                    {"name": "limit"},
                ],
            },
            ["Parameters.parameter[1]"],
        ),
        (
            {
                "resourceType": "Parameters",
                "parameter": [{"name": "resource", "resource": {"resourceType": "Patient"}}] * 2,
            },
            ["Parameters.parameter[1]"],
        ),
        (
            _query({"resourceType": "Patient", "identifier": [{"system": "urn:x|y", "value": "1"}]}),
            ["Parameters.parameter[0].resource.identifier[0]"],
        ),
    ],
)
async def test_a_bad_query_is_400_with_an_operation_outcome(client, body, expression):
    status, outcome = await _match(client, body)
    assert status == 400, outcome
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "invalid"
    if expression is not None:
        assert outcome["issue"][0]["expression"] == expression


async def test_the_capability_statement_names_the_operation(client):
    statement = await (await client.get("/fhir/metadata")).json(content_type=None)
    [patient_] = [r for r in statement["rest"][0]["resource"] if r["type"] == "Patient"]
    operations = {o["name"]: o["definition"] for o in patient_["operation"]}
    assert operations["match"] == "http://hl7.org/fhir/OperationDefinition/Patient-match"
    assert (await client.get("/fhir/Patient/$match")).status == 405  # a query is POSTed (it holds a Patient)


async def test_a_body_that_is_not_json_is_400(client):
    resp = await client.post(
        "/fhir/Patient/$match", data=b"{not json", headers={"Content-Type": "application/fhir+json"}
    )
    assert resp.status == 400
    assert (await resp.json(content_type=None))["resourceType"] == "OperationOutcome"


async def test_every_match_is_audited_without_the_query_demographics(client, store, facility, settings):
    family = unique_surname()
    stored = await client.post("/fhir/Patient", json=patient(facility, "A1", family=family))
    status, _ = await _match(
        client,
        _query(_without_identifiers(patient(facility, "-", family=family))),
        **{"X-OpenHIM-ClientID": "emr-7"},
    )
    assert status == 200
    events = await store.search(
        "AuditEvent",
        {"subtype": "urn:ihe:event-type-code|ITI-119", "entity": stored.headers["LocationCRUID"]},
    )
    [event] = events
    assert event["agent"][0]["who"]["identifier"]["value"] == "emr-7"
    assert event["outcome"] == "0" and event["action"] == "E"
    assert family not in json.dumps(event)  # the query's demographics are not recorded
    golden = stored.headers["LocationCRUID"].split("/")[1]
    history = await queries.history(HapiClient(store.session, settings.hapi_base_url, 30, 3), golden)
    assert [h["action"] for h in history if h["id"] == event["id"]] == ["demographics match (PDQm)"]


async def test_a_match_waits_for_the_applied_rules(client, facility):
    """HAPI unreachable at start-up: the applied rules (a re-match's, stored in HAPI) are read before the
    first decision, and a query is decided by them, as a submission would be, never by the start-up file."""
    family = unique_surname()
    await client.post("/fhir/Patient", json=patient(facility, "W1", family=family))
    query = _query(_without_identifiers(patient(facility, "-", family=family)))
    holder = client.server.app[CONFIG]
    doc = yaml.safe_load((REPO_ROOT / "rules" / "default.yaml").read_text())
    doc["thresholds"] = {"auto_match": 100, "potential_match": 99}  # nobody is anybody
    applied = holder.current.with_changes(rules=matching.load_rules(doc))
    shipped = holder.current

    async def read_applied() -> None:
        holder.replace(applied)
        holder.pending = None

    holder.pending = read_applied
    try:
        status, bundle = await _match(client, query)
    finally:
        holder.replace(shipped)
    assert status == 200 and bundle["entry"] == [], bundle
    assert len((await _match(client, query))[1]["entry"]) == 1  # the shipped rules: a certain match


# -- closed mode: who may match, and what it sees --------------------------------------------------------


async def test_closed_mode_matches_need_a_known_client_and_see_only_its_domains(closed, store):
    client, settings, clinic, lab = closed.client, closed.settings, closed.clinic, closed.lab
    a, family = closed.clinic_answer, closed.family
    query = _query(_without_identifiers(patient(clinic, "-", family=family)))

    assert (await _match(client, query))[0] == 403
    status, refused = await _match(client, query, **{"X-OpenHIM-ClientID": "intruder"})
    assert status == 403 and refused["resourceType"] == "OperationOutcome"
    status, bundle = await _match(client, query, **{"X-OpenHIM-ClientID": "clinic"})
    assert status == 200
    [entry] = bundle["entry"]
    assert {(i["system"], i["value"]) for i in entry["resource"]["identifier"]} == {
        (settings.cruid_system, a["X-CRUID"]),
        (clinic, "C1"),
    }  # not the lab's L1
    by_lab_id = _query(
        {
            **_without_identifiers(patient(clinic, "-", family=family)),
            "identifier": [{"system": lab, "value": "L1"}],
        }
    )
    assert (await _match(client, by_lab_id, **{"X-OpenHIM-ClientID": "clinic"}))[0] == 403
    events = await store.search("AuditEvent", {"subtype": "urn:ihe:event-type-code|ITI-119", "_count": "500"})
    assert [e for e in events if e.get("outcome") == "4" and "intruder" in str(e.get("agent"))]
