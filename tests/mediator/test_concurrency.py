"""Concurrent submissions keep one golden record per person and one source record per identifier."""

from __future__ import annotations

import asyncio

from mediator import records
from tests.conftest import patient, unique_phone, unique_surname


async def test_twenty_concurrent_new_submissions_of_one_person_make_one_golden(client, store, facility):
    family = unique_surname()
    systems = [f"{facility}-{n}" for n in range(20)]
    responses = await asyncio.gather(
        *(client.post("/fhir/Patient", json=patient(system, "N1", family=family)) for system in systems)
    )
    assert [r.status for r in responses] == [201] * 20
    assert len({r.headers["X-CRUID"] for r in responses}) == 1
    golden = await store.read("Patient", responses[0].headers["X-CRUID"])
    assert len(records.source_ids_of(golden)) == 20
    for source_id in records.source_ids_of(golden):
        source = await store.read("Patient", source_id)
        assert records.golden_id_of(source) == golden["id"]


async def test_twenty_concurrent_resubmissions_make_one_source_record(client, store, facility):
    family = unique_surname()
    phones = [unique_phone() for _ in range(20)]
    responses = await asyncio.gather(
        *(
            client.post("/fhir/Patient", json=patient(facility, "SAME", family=family, phone=p))
            for p in phones
        )
    )
    statuses = sorted(r.status for r in responses)
    assert statuses == [200] * 19 + [201]
    assert len({r.headers["X-CRUID"] for r in responses}) == 1
    sources = await store.sources_with(facility)
    assert len(sources) == 1
    assert sources[0]["meta"]["versionId"] == "20"
    await store.assert_consistent(sources[0]["id"])
