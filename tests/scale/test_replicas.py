"""Two real mediator processes against one HAPI (on PostgreSQL), coordinated by PostgreSQL advisory locks,
keep the guarantees of one: one golden record per person, one source record per identifier."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from mediator import records
from tests.conftest import patient, unique_surname
from tests.hapi_helpers import Store

pytestmark = pytest.mark.postgres


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


async def _post(http, url, body):
    async with http.post(f"{url}/fhir/Patient", json=body) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def test_twenty_concurrent_new_submissions_over_two_replicas_make_one_golden(
    replica_urls, pg_hapi_url, http, facility
):
    family = unique_surname()
    bodies = [patient(f"{facility}-{n}", "N1", family=family) for n in range(20)]
    answers = await asyncio.gather(*(_post(http, replica_urls[n % 2], body) for n, body in enumerate(bodies)))
    assert [a[0] for a in answers] == [201] * 20, [a[2] for a in answers if a[0] != 201]
    cruids = {a[1]["X-CRUID"] for a in answers}
    assert len(cruids) == 1
    store = Store(http, pg_hapi_url)
    golden_id = answers[0][1]["LocationCRUID"].split("/")[1]
    golden = await store.read("Patient", golden_id)
    assert golden is not None
    assert len(records.source_ids_of(golden)) == 20
    goldens = {
        records.golden_id_of(s) for n in range(20) for s in await store.sources_with(f"{facility}-{n}")
    }
    assert goldens == {golden_id}


async def test_twenty_concurrent_resubmissions_over_two_replicas_make_one_source_record(
    replica_urls, pg_hapi_url, http, facility
):
    family = unique_surname()
    answers = await asyncio.gather(
        *(
            _post(
                http,
                replica_urls[n % 2],
                patient(facility, "SAME", family=family, phone=f"+2567000000{n:02d}"),
            )
            for n in range(20)
        )
    )
    assert sorted(a[0] for a in answers) == [200] * 19 + [201], [a[2] for a in answers]
    assert len({a[1]["X-CRUID"] for a in answers}) == 1
    store = Store(http, pg_hapi_url)
    sources = await store.sources_with(facility)
    assert len(sources) == 1
    assert sources[0]["meta"]["versionId"] == "20"
    await store.assert_consistent(sources[0]["id"])
