"""``GET /metrics``: Prometheus counts and timings of requests, decisions and FHIR store calls — and never an
id, an identifier or a demographic value."""

from __future__ import annotations

import dataclasses

from mediator import records
from mediator.app import create_app
from mediator.context import METRICS
from mediator.settings import Settings
from tests.admin.conftest import make_pair
from tests.conftest import app_settings, metric_samples, patient, unique_surname


async def test_requests_decisions_and_store_calls_are_counted_without_ids_or_demographics(client, facility):
    family = unique_surname()
    first = await client.post("/fhir/Patient", json=patient(facility, "MET1", family=family))
    second = await client.post("/fhir/Patient", json=patient(facility + "/b", "MET2", family=family))
    assert (first.status, second.status) == (201, 201)
    assert first.headers["X-Match-Outcome"] == "no_match" and second.headers["X-Match-Outcome"] == "match"
    assert (await client.get("/fhir/Patient/src-nope/elsewhere")).status == 404

    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    text = await resp.text()
    samples = metric_samples(text)
    assert samples[("cr_decisions_total", (("outcome", "no_match"),))] == 1
    assert samples[("cr_decisions_total", (("outcome", "match"),))] == 1
    created = (("method", "POST"), ("route", "/fhir/Patient"), ("status", "201"))
    assert samples[("cr_http_requests_total", created)] == 2
    unmatched = (("method", "GET"), ("route", "unmatched"), ("status", "404"))
    assert samples[("cr_http_requests_total", unmatched)] == 1
    assert samples[("cr_http_request_duration_seconds_count", created[:2])] == 2
    listings = (("call", "operation Patient/$tagged-versions"),)  # each submission's candidates, once
    assert samples[("cr_fhir_store_call_duration_seconds_count", listings)] == 2
    # (the admin's review-score index may write a transaction of its own at start)
    assert samples[("cr_fhir_store_call_duration_seconds_count", (("call", "transaction"),))] >= 2
    assert not any(name == "cr_fhir_store_failures_total" for name, _ in samples)
    for secret in (family, "MET1", "MET2", first.headers["X-CRUID"], "src-", facility):
        assert secret not in text


async def test_an_unreachable_fhir_store_is_counted_as_a_failure(
    aiohttp_client, unused_tcp_port_factory, facility, tmp_path
):
    port = unused_tcp_port_factory()  # nothing listens there
    client = await aiohttp_client(
        create_app(app_settings(tmp_path, hapi_base_url=f"http://127.0.0.1:{port}/fhir"))
    )
    resp = await client.post("/fhir/Patient", json=patient(facility, "DOWN", family=unique_surname()))
    assert resp.status == 503
    samples = metric_samples(await (await client.get("/metrics")).text())
    failures = {labels: n for (name, labels), n in samples.items() if name == "cr_fhir_store_failures_total"}
    assert failures and all(dict(labels)["reason"] == "connection" for labels in failures), failures
    unavailable = (("method", "POST"), ("route", "/fhir/Patient"), ("status", "503"))
    assert samples[("cr_http_requests_total", unavailable)] == 1
    assert not any(name == "cr_decisions_total" for name, _ in samples)


async def test_the_review_queue_is_counted_in_the_fhir_store(client, store, facility):
    """``cr_review_tasks_open`` is the store's count of open review Tasks, counted again after
    ``REVIEW_COUNT_EVERY_S`` (forced here): a new potential match adds one."""

    async def open_tasks(kind: str) -> int:
        params = {"status": "requested", "code": f"{records.REVIEW_TYPE_SYSTEM}|{kind}", "_summary": "count"}
        async with store.session.get(f"{store.base_url}/Task", params=params) as resp:
            return (await resp.json(content_type=None))["total"]

    async def gauge(kind: str) -> float:
        client.server.app[METRICS].review_counted_at = None  # the next scrape counts again
        samples = metric_samples(await (await client.get("/metrics")).text())
        return samples[("cr_review_tasks_open", (("kind", kind),))]

    before = await gauge("potential-match")
    assert before == await open_tasks("potential-match")
    assert await gauge("possible-duplicate") == await open_tasks("possible-duplicate")
    await make_pair(client, facility)
    assert await gauge("potential-match") == before + 1


async def test_with_a_metrics_token_only_its_bearer_reads_the_metrics(aiohttp_client, settings):
    assert Settings.from_env({}).metrics_token is None
    guarded = Settings.from_env({"CR_METRICS_TOKEN": "s3cret", "CR_HAPI_URL": settings.hapi_base_url})
    assert guarded.metrics_token == "s3cret"
    client = await aiohttp_client(
        create_app(dataclasses.replace(settings, metrics_token=guarded.metrics_token))
    )
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status == 401
    allowed = await client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert allowed.status == 200 and "cr_http_requests_total" in await allowed.text()
