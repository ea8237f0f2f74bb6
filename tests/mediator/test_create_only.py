"""A record the unit of work read as absent is written with ``If-Match: W/"0"``: HAPI creates it if it is
still absent and refuses the whole transaction if anyone created it meanwhile — as a replica that died with
its transaction still in HAPI does, after its key locks ended with its session."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import aiohttp
import pytest

from mediator import records
from mediator.app import create_app
from mediator.errors import Conflict
from mediator.fhir_client import HapiClient
from mediator.unit_of_work import UnitOfWork
from tests.conftest import patient, unique_surname
from tests.hapi_helpers import Store, put_now


def _source(record_id: str, family: str, golden_id: str | None = None) -> dict[str, Any]:
    submitted = {"resourceType": "Patient", "name": [{"family": family, "given": ["Ana"]}]}
    record = records.build_source_record(
        submitted, record_id, client_id=None, golden_id=golden_id or "unused", block_keys=[]
    )
    return record if golden_id else record | {"link": []}


def _transaction_now(hapi_url: str, resources: list[dict[str, Any]]) -> int:
    """Write ``resources`` in one transaction (records that refer to each other), synchronously."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }
    request = urllib.request.Request(
        hapi_url, data=json.dumps(bundle).encode(), headers={"Content-Type": "application/fhir+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return int(response.status)


async def test_a_record_read_as_absent_is_created_unless_someone_created_it_meanwhile(hapi_url):
    family = unique_surname()
    async with aiohttp.ClientSession() as session:
        hapi = HapiClient(session, hapi_url, 30, 5)
        first = UnitOfWork(hapi)
        mine = f"src-test-{family.lower()}-1"
        assert await first.peek("Patient", mine) is None
        first.put(_source(mine, family))
        assert await first.commit() == {f"Patient/{mine}": "1"}, "still absent: created"

        late = UnitOfWork(hapi)
        theirs = f"src-test-{family.lower()}-2"
        assert await late.peek("Patient", theirs) is None
        assert put_now(hapi_url, _source(theirs, "Theirs")) == 201  # someone else creates it
        late.put(_source(theirs, "Mine"))
        with pytest.raises(Conflict):
            await late.commit()
        stored = await hapi.read("Patient", theirs)
        assert stored is not None and stored["name"][0]["family"] == "Theirs", "not overwritten"


async def test_a_submission_whose_record_lands_meanwhile_leaves_no_golden_record_behind(
    aiohttp_client, settings, hapi_url, facility, monkeypatch
):
    """Between the registry's reads and its write, the same person's source record and golden record land
    (the transaction of a replica that died after deciding the same submission). The registry's write is
    refused, it decides again from fresh reads, and the source record is listed by one golden record only;
    written blindly, the landed golden record would be left listing a record that refers elsewhere."""
    client = await aiohttp_client(create_app(settings))
    submitted = patient(facility, "42", family=unique_surname())
    source_id = records.source_record_id(facility, "42")
    landed_golden = records.new_golden("cr-landed-" + source_id[-12:], settings.cruid_system)
    landed_golden["link"] = [{"other": {"reference": records.ref(source_id)}, "type": "seealso"}]
    commit = UnitOfWork.commit
    landed: list[int] = []

    async def land_first(self: UnitOfWork) -> dict[str, str]:
        if not landed and f"Patient/{source_id}" in self.staged:
            source = _source(source_id, "Landed", landed_golden["id"])
            landed.append(_transaction_now(hapi_url, [landed_golden, source]))
        return await commit(self)

    monkeypatch.setattr(UnitOfWork, "commit", land_first)
    answer = await client.post("/fhir/Patient", json=submitted)
    assert answer.status in (200, 201), await answer.text()
    assert landed == [200]
    async with aiohttp.ClientSession() as http:
        store = Store(http, hapi_url)
        golden = await store.assert_consistent(source_id)
        listing = await store.search("Patient", {"link": records.ref(source_id)})
        assert [g["id"] for g in listing] == [golden["id"]]


async def test_a_source_record_deleted_in_hapi_is_written_again_when_resubmitted(
    client, store, facility, hapi_url
):
    """Someone deleted a source record in HAPI directly (the registry never deletes). Its history ends in
    the deletion, so HAPI refuses to create it as new (HAPI-0989); the facility's next submission of that
    identifier writes it again over the deletion, linked to a golden record. (Before: 409 'concurrent
    change' on every try, for good.)"""
    family = unique_surname()
    record_id = records.source_record_id(facility, "DEL1")
    # A lone record under that id (one a golden record lists cannot be deleted: referential integrity)
    assert _transaction_now(hapi_url, [_source(record_id, family)]) == 200
    async with store.session.delete(f"{hapi_url}/Patient/{record_id}") as deleted:
        assert deleted.status == 200
    assert await store.read("Patient", record_id) is None

    resp = await client.post("/fhir/Patient", json=patient(facility, "DEL1", family=family))
    assert resp.status == 201, await resp.text()
    golden = await store.assert_consistent(record_id)
    assert golden["id"] == resp.headers["X-CRUID"]
    source = await store.read("Patient", record_id)
    assert source is not None and source["meta"]["versionId"] == "3"  # created, deleted, written again
