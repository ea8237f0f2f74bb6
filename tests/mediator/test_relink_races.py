"""Two replicas (``CR_LOCKS=local``: each holds only its own key locks; HAPI's ``If-Match`` is what keeps
them apart) changing one person's records at once: a relink by matching against a POS merge, a
retraction, a resubmission. A proxy before HAPI holds replica one's transaction, after all its reads,
until replica two's request has been written. No sleeps: the proxy waits on events the test sets."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from aiohttp import web

from mediator import records
from mediator.app import create_app
from tests.conftest import patient, unique_surname
from tests.hapi_helpers import HoldTransaction, forward_to_hapi, is_transaction, serve_proxy


def merged(body: dict[str, Any], survivor_id: str) -> dict[str, Any]:
    link = [{"type": "replaced-by", "other": {"reference": f"Patient/{survivor_id}"}}]
    return {**body, "active": False, "link": link}


async def _replicas(aiohttp_client: Any, aiohttp_server: Any, settings: Any, hold: Any) -> tuple[Any, Any]:
    """(replica one, behind the holding proxy; replica two, straight to HAPI)."""
    proxied = dataclasses.replace(settings, hapi_base_url=await serve_proxy(aiohttp_server, hold.handle))
    return await aiohttp_client(create_app(proxied)), await aiohttp_client(create_app(settings))


async def test_a_relink_by_matching_racing_a_pos_merge_into_the_relinked_record_keeps_them_together(
    aiohttp_client, aiohttp_server, settings, hapi_url, store, facility
):
    """A and Z are one person; replica one relinks A to T's person (A resubmitted as T's twin) while
    replica two merges Z into A. The merge changes neither A nor their golden record (HAPI keeps their
    versions), so the relink, which read Z before it followed A, passed every If-Match and left Z behind,
    replaced-by A on another person. Now it holds the records it leaves: refused, decided again, and Z
    goes along."""
    hold = HoldTransaction(hapi_url)
    one, two = await _replicas(aiohttp_client, aiohttp_server, settings, hold)
    family, twin = unique_surname(), unique_surname()
    bodies = {
        "A": patient(facility, "A", family=family),
        "Z": patient(facility, "Z", family=family),
        "T": patient(facility.replace("facility-", "ward-"), "T", family=twin, given="Neema"),
    }
    answers = {key: await two.post("/fhir/Patient", json=body) for key, body in bodies.items()}
    assert (
        answers["A"].headers["X-CRUID"] == answers["Z"].headers["X-CRUID"] != answers["T"].headers["X-CRUID"]
    )
    a, z = (records.source_record_id(facility, key) for key in ("A", "Z"))
    as_twin = {**bodies["T"], "identifier": bodies["A"]["identifier"]}

    relink = asyncio.ensure_future(one.put(f"/fhir/Patient/{a}", json=as_twin))
    await hold.arrived.wait()  # replica one decided the relink and is about to write it
    merge = await two.put(f"/fhir/Patient/{z}", json=merged(bodies["Z"], a))
    assert merge.status == 200, await merge.text()
    hold.release()
    answer = await relink

    assert answer.status == 200, await answer.text()
    assert answer.headers["X-CRUID"] == answers["T"].headers["X-CRUID"], "relinked to T's person"
    assert (await store.assert_consistent(z))["id"] == (await store.assert_consistent(a))["id"]
    assert records.pos_survivor(await store.read("Patient", z)) == a


async def test_a_pos_merge_whose_answer_was_lost_is_retried_to_the_same_answer(
    aiohttp_client, aiohttp_server, settings, hapi_url, store, facility
):
    """Held: HAPI committed a POS merge of Z (the last record of its person) into A, but the answer never
    came (504). The retry answers 200 with A's CRUID, writes no second version of Z, and the emptied person
    stays replaced-by A's."""
    never, swallowed = asyncio.Event(), asyncio.Event()
    swallow = {"on": False}

    async def forward(request: web.Request) -> web.StreamResponse:
        answer = await forward_to_hapi(hapi_url, request)
        if swallow["on"] and is_transaction(request):
            swallow["on"] = False
            swallowed.set()
            await never.wait()
        return answer

    proxied = dataclasses.replace(
        settings, hapi_base_url=await serve_proxy(aiohttp_server, forward), hapi_timeout_s=3.0
    )
    client = await aiohttp_client(create_app(proxied))
    bodies = {
        "A": patient(facility, "A", family=unique_surname()),
        "Z": patient(facility, "Z", family=unique_surname(), given="Halima", birth_date="1990-01-02"),
    }
    answers = {key: await client.post("/fhir/Patient", json=body) for key, body in bodies.items()}
    a, z = (records.source_record_id(facility, key) for key in ("A", "Z"))
    old = answers["Z"].headers["X-CRUID"]
    assert old != answers["A"].headers["X-CRUID"]

    swallow["on"] = True
    lost = await client.put(f"/fhir/Patient/{z}", json=merged(bodies["Z"], a))
    assert swallowed.is_set() and lost.status == 504, await lost.text()
    version = (await store.read("Patient", z))["meta"]["versionId"]

    retry = await client.put(f"/fhir/Patient/{z}", json=merged(bodies["Z"], a))
    never.set()

    assert retry.status == 200, await retry.text()
    assert retry.headers["X-CRUID"] == answers["A"].headers["X-CRUID"]
    assert retry.headers["X-Match-Outcome"] == "pos-merge"
    assert (await store.read("Patient", z))["meta"]["versionId"] == version, "nothing written again"
    assert (await store.assert_consistent(z))["id"] == answers["A"].headers["X-CRUID"]
    emptied = await store.read("Patient", old)
    assert records.replaced_by(emptied) == answers["A"].headers["X-CRUID"] and emptied["active"] is False
