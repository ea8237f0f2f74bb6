"""The project's HAPI launcher does not index the Patient demographics the registry never searches HAPI by
(``hapi.unindexed-search-parameters``): a search by family name, phonetics, birth date, phone or gender is
refused as unknown, while the searches the registry makes — by identifier, block tag, id, and by name from
the admin search — answer as before. The same for the AuditEvent and review Task parameters it never
searches by. And the launcher's faster hash of stored versions keeps HAPI's no-change detection."""

from __future__ import annotations

import os
import urllib.parse

import pytest

from tests.conftest import REPO, unique_surname
from tests.hapi_helpers import get_now, put_now


def test_demographics_are_not_indexed_but_registry_searches_work(hapi_url):
    family = unique_surname()
    record_id = f"store-test-{family.lower()}"
    body = {
        "resourceType": "Patient",
        "id": record_id,
        "meta": {"tag": [{"system": "urn:test:block", "code": family}]},
        "identifier": [{"system": "urn:test:mrn", "value": family}],
        "name": [{"family": family, "given": ["Amina"]}],
        "gender": "female",
        "birthDate": "1990-01-01",
        "telecom": [{"system": "phone", "value": "+254700000000"}],
    }
    assert put_now(hapi_url, body) in (200, 201)

    unindexed = {"family": family, "phonetic": family, "birthdate": "1990-01-01", "phone": "+254700000000"}
    _refused(f"{hapi_url}/Patient", [*unindexed.items(), ("gender", "female")])
    searches = (
        f"identifier=urn:test:mrn%7C{family}",
        f"_tag=urn:test:block%7C{family}",
        f"_id={record_id}",
        f"name={family}",
    )
    _finds_only(f"{hapi_url}/Patient", searches, record_id)


def _refused(url: str, params: list[tuple[str, str]]) -> None:
    """Each search by one of ``params`` is refused: an unknown (not indexed) search parameter."""
    for param, value in params:
        status, outcome = get_now(f"{url}?{param}={urllib.parse.quote(value)}")
        assert status == 400, param
        assert outcome["resourceType"] == "OperationOutcome"
        assert "Unknown search parameter" in outcome["issue"][0]["diagnostics"]


def _finds_only(url: str, queries: tuple[str, ...], resource_id: str) -> None:
    for query in queries:
        status, bundle = get_now(f"{url}?{query}")
        assert status == 200, query
        assert [e["resource"]["id"] for e in bundle.get("entry", [])] == [resource_id], query


def _stored_and_searched(
    hapi_url: str, resource: dict, found: tuple[str, ...], unindexed: list[tuple[str, str]]
) -> None:
    """``resource`` is stored; each query of ``found`` finds it alone; ``unindexed`` searches are refused."""
    assert put_now(hapi_url, resource) in (200, 201)
    _finds_only(f"{hapi_url}/{resource['resourceType']}", found, resource["id"])
    _refused(f"{hapi_url}/{resource['resourceType']}", unindexed)


def test_audit_events_are_found_by_entity_subtype_and_date_only(hapi_url):
    """The registry looks AuditEvents up by entity, subtype and date; the other parameters are not indexed
    (``patient`` indexed every record reference of the registry's one-per-transaction events again)."""
    family = unique_surname()
    patient_id = f"audit-test-{family.lower()}"
    assert put_now(hapi_url, {"resourceType": "Patient", "id": patient_id}) in (200, 201)
    event = {
        "resourceType": "AuditEvent",
        "id": f"audit-test-{family.lower()}",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "create"}],
        "action": "C",
        "recorded": "2026-11-26T10:00:00Z",
        "outcome": "0",
        "agent": [{"requestor": True, "network": {"address": "bulk-load", "type": "2"}}],
        "source": {"observer": {"display": "test"}},
        "entity": [
            {
                "what": {"reference": f"Patient/{patient_id}"},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
            }
        ],
    }
    found = (
        f"entity=Patient/{patient_id}",
        f"entity=Patient/{patient_id}&subtype=http://hl7.org/fhir/restful-interaction%7Ccreate",
        f"entity=Patient/{patient_id}&date=ge2026-11-26&_sort=-date",
    )
    unindexed = [("patient", f"Patient/{patient_id}"), ("action", "C"), ("outcome", "0"), ("type", "110110")]
    unindexed += [("entity-type", "1"), ("entity-role", "1"), ("address", "bulk-load")]
    _stored_and_searched(hapi_url, event, found, unindexed)


def test_review_tasks_are_found_by_the_registry_searches_only(hapi_url):
    """Review Tasks are looked up by status, code, subject (the golden record), focus and authored-on;
    ``patient`` (a second index of ``subject``), ``intent`` and ``priority`` are not indexed."""
    family = unique_surname()
    golden, source = f"task-golden-{family.lower()}", f"task-source-{family.lower()}"
    for pid in (golden, source):
        assert put_now(hapi_url, {"resourceType": "Patient", "id": pid}) in (200, 201)
    task = {
        "resourceType": "Task",
        "id": f"task-test-{family.lower()}",
        "status": "requested",
        "intent": "proposal",
        "priority": "routine",
        "code": {"coding": [{"system": "urn:test:review-type", "code": "potential-match"}]},
        "focus": {"reference": f"Patient/{source}"},
        "for": {"reference": f"Patient/{golden}"},
        "authoredOn": "2026-11-26T10:00:00Z",
    }
    found = (
        f"subject=Patient/{golden}&status=requested",
        f"focus=Patient/{source}&code=urn:test:review-type%7Cpotential-match",
        f"subject=Patient/{golden}&authored-on=ge2026-11-26",
    )
    unindexed = [("patient", f"Patient/{golden}"), ("intent", "proposal"), ("priority", "routine")]
    _stored_and_searched(hapi_url, task, found, unindexed)


def test_history_hash_takes_one_call_and_still_detects_unchanged_updates(hapi_url):
    """The launcher hashes each stored version in one SHA-256 call (HAPI's own code fed the digest a character
    at a time: a fifth of its CPU in bulk loads) and checks at start-up that the hashes are HAPI's. An update
    with the very same content is still no change (same version); any change is a new version. (Records
    written by HAPI's own calculator were checked the same way by hand: an identical update kept their
    version, so the stored hashes are the same.)"""
    if os.environ.get("CR_TEST_HAPI_URL"):
        pytest.skip("the start-up log of an external HAPI is not ours to read")
    log = (REPO / "var" / "test-hapi.log").read_text(errors="replace")
    assert "resource history hashes: one SHA-256 call per resource" in log
    family = unique_surname()
    body = {
        "resourceType": "Patient",
        "id": f"hash-test-{family.lower()}",
        "name": [{"family": f"{family}-Zoë 王 \N{GRINNING FACE}", "given": ["Ñúñez"]}],
    }
    assert put_now(hapi_url, body) == 201
    changed = {**body, "gender": "female"}
    versions = []
    for update in (changed, changed, {**changed, "gender": "male"}):
        assert put_now(hapi_url, update) == 200
        status, stored = get_now(f"{hapi_url}/Patient/{body['id']}")
        assert status == 200
        versions.append(stored["meta"]["versionId"])
    assert versions == ["2", "2", "3"]
