"""HAPI down or slow: 503/504 with an OperationOutcome, nothing half-written, and retries converge.

A real HAPI cannot be made to hang mid-transaction on demand, so these tests put a small in-process
proxy between the mediator and the real HAPI server; the proxy forwards everything and, when told,
swallows HAPI's answer to a transaction after HAPI has committed it (the worst case for a client).
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from aiohttp import web

from mediator.app import create_app
from tests.conftest import app_settings, patient, unique_surname
from tests.hapi_helpers import forward_to_hapi, is_transaction, serve_proxy


async def test_hapi_down_gives_503(aiohttp_client, unused_tcp_port_factory, facility, tmp_path):
    port = unused_tcp_port_factory()  # nothing listens there
    client = await aiohttp_client(
        create_app(app_settings(tmp_path, hapi_base_url=f"http://127.0.0.1:{port}/fhir"))
    )
    resp = await client.post("/fhir/Patient", json=patient(facility, "DOWN", family=unique_surname()))
    assert resp.status == 503
    body = await resp.json(content_type=None)
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "transient"
    query = {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": patient(facility, "Q", family="X")}],
    }
    resp = await client.post("/fhir/Patient/$match", json=query)  # no answer without its audit record
    assert resp.status == 503
    assert (await resp.json(content_type=None))["issue"][0]["code"] == "transient"
    resp = await client.delete("/fhir/Patient/src-0123456789abcdef")
    assert resp.status == 503
    assert (await resp.json(content_type=None))["issue"][0]["code"] == "transient"


async def test_ready_says_whether_the_fhir_store_answers(
    aiohttp_client, unused_tcp_port_factory, settings, tmp_path
):
    """``/health`` is liveness (the process answers); ``/ready`` is 503 while HAPI cannot be reached."""
    up = await aiohttp_client(create_app(settings))
    resp = await up.get("/ready")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "checks": {"fhir_store": "ok", "locks": "ok"}}
    port = unused_tcp_port_factory()  # nothing listens there
    down = await aiohttp_client(
        create_app(app_settings(tmp_path, hapi_base_url=f"http://127.0.0.1:{port}/fhir"))
    )
    assert (await down.get("/health")).status == 200
    resp = await down.get("/ready")
    assert resp.status == 503
    assert await resp.json() == {
        "status": "unavailable",
        "checks": {"fhir_store": "unavailable", "locks": "ok"},
    }


@pytest.fixture
async def proxy(aiohttp_server, hapi_url):
    state = {"swallow_transactions": False, "swallowed": asyncio.Event()}
    never = asyncio.Event()

    async def forward(request: web.Request) -> web.StreamResponse:
        answer = await forward_to_hapi(hapi_url, request)
        if state["swallow_transactions"] and is_transaction(request):
            state["swallowed"].set()
            await never.wait()  # HAPI committed; the answer never reaches the mediator
        return answer

    state["url"] = await serve_proxy(aiohttp_server, forward)
    yield state
    never.set()


async def test_timeout_mid_transaction_then_retry_gives_the_same_cruid(
    aiohttp_client, proxy, store, facility, settings
):
    slow = await aiohttp_client(
        create_app(dataclasses.replace(settings, hapi_base_url=proxy["url"], hapi_timeout_s=2.0))
    )
    submission = patient(facility, "SLOW", family=unique_surname())
    proxy["swallow_transactions"] = True
    resp = await slow.post("/fhir/Patient", json=submission)
    assert proxy["swallowed"].is_set()
    assert resp.status == 504
    assert (await resp.json(content_type=None))["issue"][0]["code"] == "timeout"

    proxy["swallow_transactions"] = False
    retry = await slow.post("/fhir/Patient", json=submission)
    assert retry.status == 200, "HAPI had committed the first attempt: the retry updates that record"
    sources = await store.sources_with(facility)
    assert len(sources) == 1
    golden = await store.assert_consistent(sources[0]["id"])
    assert retry.headers["X-CRUID"] == golden["id"]


async def test_a_deletion_whose_answer_was_lost_is_retried_to_the_same_answer(
    aiohttp_client, proxy, store, facility, settings
):
    """HAPI committed the retraction but its answer never came (504): the retry finds the record deleted
    and answers as the first attempt would have, without a second deletion or AuditEvent."""
    slow = await aiohttp_client(
        create_app(dataclasses.replace(settings, hapi_base_url=proxy["url"], hapi_timeout_s=2.0))
    )
    created = await slow.post("/fhir/Patient", json=patient(facility, "GONE", family=unique_surname()))
    source_id = (await created.json(content_type=None))["id"]
    proxy["swallow_transactions"] = True
    resp = await slow.delete(f"/fhir/Patient/{source_id}")
    assert proxy["swallowed"].is_set()
    assert resp.status == 504

    proxy["swallow_transactions"] = False
    retry = await slow.delete(f"/fhir/Patient/{source_id}")
    assert retry.status == 200
    assert f"Patient/{source_id} is deleted." in (await retry.text())
    assert await store.read("Patient", source_id) is None
    events = await store.search("AuditEvent", {"entity": f"Patient/{source_id}"})
    assert [e.get("action") for e in events].count("D") == 1
