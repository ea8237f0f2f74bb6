"""HAPI's own cases for the ids a transaction names, through the launcher's id lookup (hapi-server's
``OneByOneIdHelperService``: on H2, several client-assigned ids are resolved one indexed query at a time
instead of HAPI's one ``or`` query, which H2 answers by scanning the resource table).

The same cases run on H2 (the launcher's method, checked in use through ``GET $id-lookups``) and on
PostgreSQL (HAPI's own query), with the same expected answers: existing ids, ids that do not exist (created
by a PUT, refused as a reference), deleted records (a reference refused, a PUT brings the record back),
conditional references (one match resolved, no match refused), a stale ``If-Match`` among several (nothing
written). A HAPI upgrade that changes one of these answers, or stops resolving transaction ids through the
method the launcher replaces, fails here.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.hapi


@pytest.fixture(params=["h2", "postgres"])
def store(request: pytest.FixtureRequest) -> tuple[str, bool]:
    """HAPI on H2 (the launcher's one-by-one lookup) or on PostgreSQL (HAPI's own query): its base URL, and
    whether the launcher's lookup is the one in use there."""
    if request.param == "h2":
        return str(request.getfixturevalue("hapi_url")), True
    return str(request.getfixturevalue("pg_hapi_url")), False


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Hapi:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def transaction(self, *entries: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}
        async with self.session.post(
            self.base_url, json=bundle, headers={"Content-Type": "application/fhir+json"}
        ) as response:
            return response.status, await response.json(content_type=None)

    async def read(self, resource_id: str) -> tuple[int, dict[str, Any]]:
        async with self.session.get(f"{self.base_url}/Patient/{resource_id}") as response:
            return response.status, await response.json(content_type=None)

    async def delete(self, resource_id: str) -> int:
        async with self.session.delete(f"{self.base_url}/Patient/{resource_id}") as response:
            return response.status

    async def id_lookups(self) -> dict[str, Any]:
        async with self.session.get(f"{self.base_url}/$id-lookups") as response:
            assert response.status == 200, await response.text()
            return dict(await response.json(content_type=None))


def put(
    resource_id: str, *, mrn: str, refers_to: str | None = None, if_match: str | None = None
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": resource_id,
        "identifier": [{"system": "urn:test:id-lookups", "value": mrn}],
    }
    if refers_to is not None:
        resource["link"] = [{"other": {"reference": refers_to}, "type": "seealso"}]
    request = {"method": "PUT", "url": f"Patient/{resource_id}"}
    if if_match is not None:
        request["ifMatch"] = if_match
    return {"resource": resource, "request": request}


def statuses(bundle: dict[str, Any]) -> list[str]:
    return [entry["response"]["status"].split()[0] for entry in bundle["entry"]]


def diagnostics(outcome: dict[str, Any]) -> str:
    return " ".join(issue.get("diagnostics", "") for issue in outcome.get("issue", []))


async def test_transaction_ids_resolve_as_hapi_resolves_them(
    store: tuple[str, bool], http: aiohttp.ClientSession
) -> None:
    base_url, one_by_one = store
    hapi = Hapi(http, base_url)
    before = await hapi.id_lookups()
    assert before["oneByOne"] is one_by_one
    p = f"idl-{uuid.uuid4().hex[:12]}"
    a, b, c, d, e, f = (f"{p}-{x}" for x in "abcdef")

    # ids that do not exist yet: PUT creates them, in one transaction that also references one of them
    status, bundle = await hapi.transaction(
        put(a, mrn=f"{p}-mrn-a"), put(b, mrn=f"{p}-mrn-b", refers_to=f"Patient/{a}")
    )
    assert status == 200, bundle
    assert statuses(bundle) == ["201", "201"]

    # existing ids, each with its current version
    status, bundle = await hapi.transaction(
        put(a, mrn=f"{p}-mrn-a", refers_to=f"Patient/{b}", if_match='W/"1"'),
        put(b, mrn=f"{p}-mrn-b1", refers_to=f"Patient/{a}", if_match='W/"1"'),
    )
    assert status == 200, bundle
    assert statuses(bundle) == ["200", "200"]

    # a stale If-Match among several: 409, nothing written
    status, outcome = await hapi.transaction(
        put(a, mrn=f"{p}-mrn-a2", if_match='W/"2"'), put(b, mrn=f"{p}-mrn-b2", if_match='W/"1"')
    )
    assert status == 409, outcome
    assert [(await hapi.read(x))[1]["meta"]["versionId"] for x in (a, b)] == ["2", "2"]

    # a reference to an id that does not exist: refused (no placeholders), nothing written
    status, outcome = await hapi.transaction(
        put(c, mrn=f"{p}-mrn-c", refers_to=f"Patient/{p}-missing"),
        put(a, mrn=f"{p}-mrn-a", refers_to=f"Patient/{b}"),
    )
    assert status == 400, outcome
    assert f"Patient/{p}-missing" in diagnostics(outcome)
    assert (await hapi.read(c))[0] == 404
    assert (await hapi.read(a))[1]["meta"]["versionId"] == "2"

    # a deleted record: a reference to it is refused, nothing written
    status, bundle = await hapi.transaction(put(d, mrn=f"{p}-mrn-d"), put(e, mrn=f"{p}-mrn-e"))
    assert status == 200 and statuses(bundle) == ["201", "201"], bundle
    assert await hapi.delete(d) == 200
    assert (await hapi.read(d))[0] == 410
    status, outcome = await hapi.transaction(
        put(e, mrn=f"{p}-mrn-e", refers_to=f"Patient/{d}"), put(a, mrn=f"{p}-mrn-a", refers_to=f"Patient/{b}")
    )
    assert status == 400, outcome
    assert f"Patient/{d}" in diagnostics(outcome)
    assert (await hapi.read(e))[1]["meta"]["versionId"] == "1"

    # ... and a PUT to it, with another id, brings it back as a new version
    status, bundle = await hapi.transaction(
        put(d, mrn=f"{p}-mrn-d"), put(e, mrn=f"{p}-mrn-e", refers_to=f"Patient/{a}")
    )
    assert status == 200, bundle
    assert statuses(bundle) == ["201", "200"]
    status, restored = await hapi.read(d)
    assert status == 200 and restored["meta"]["versionId"] == "3"

    # conditional references: one match is resolved to that record; no match is refused
    status, bundle = await hapi.transaction(
        put(f, mrn=f"{p}-mrn-f", refers_to=f"Patient?identifier=urn:test:id-lookups|{p}-mrn-b1"),
        put(e, mrn=f"{p}-mrn-e", refers_to=f"Patient/{d}"),
    )
    assert status == 200, bundle
    status, stored = await hapi.read(f)
    assert stored["link"][0]["other"]["reference"] == f"Patient/{b}"
    status, outcome = await hapi.transaction(
        put(f, mrn=f"{p}-mrn-f", refers_to=f"Patient?identifier=urn:test:id-lookups|{p}-nobody"),
        put(e, mrn=f"{p}-mrn-e", refers_to=f"Patient/{a}"),
    )
    assert status in (400, 404, 412), outcome
    assert (await hapi.read(f))[1]["meta"]["versionId"] == "1"

    after = await hapi.id_lookups()
    if one_by_one:
        # every transaction above named two or more ids: all went through the launcher's lookup
        assert after["lookups"] - before["lookups"] >= 8, (before, after)
    else:
        assert after == before
