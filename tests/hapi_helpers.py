"""Direct reads of the real HAPI server, for tests to check what the registry wrote."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from mediator import records, rematch
from mediator.fhir_client import HapiClient
from mediator.registry import Registry


def put_now(base_url: str, resource: dict[str, Any]) -> int:
    """PUT ``resource`` to HAPI synchronously (tests that drive a HAPI process directly); the status."""
    request = urllib.request.Request(
        f"{base_url}/{resource['resourceType']}/{resource['id']}",
        data=json.dumps(resource).encode(),
        headers={"Content-Type": "application/fhir+json"},
        method="PUT",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status


def get_now(url: str) -> tuple[int, dict[str, Any]]:
    """GET a HAPI URL synchronously: (status, JSON body), error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


class Store:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        async with self.session.get(f"{self.base_url}/{resource_type}/{resource_id}") as resp:
            return await resp.json(content_type=None) if resp.status == 200 else None

    async def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        async with self.session.get(
            f"{self.base_url}/{resource_type}", params={**params, "_count": "1000"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            bundle = await resp.json(content_type=None)
        return [e["resource"] for e in bundle.get("entry", [])]

    async def sources_with(self, system: str) -> list[dict[str, Any]]:
        return await self.search(
            "Patient", {"identifier": f"{system}|", "_tag": f"{records.RECORD_TYPE_SYSTEM}|{records.SOURCE}"}
        )

    async def assert_consistent(self, source_id: str) -> dict[str, Any]:
        """The source refers to one golden record, which lists it back and is active. Returns the golden."""
        source = await self.read("Patient", source_id)
        assert source is not None
        golden_id = records.golden_id_of(source)
        assert golden_id is not None
        golden = await self.read("Patient", golden_id)
        assert golden is not None and records.is_golden(golden)
        assert source_id in records.source_ids_of(golden)
        assert golden.get("active") is True
        return golden


def rematch_job(registry: Registry, state: rematch.RematchState, job_dir: Any) -> rematch.RematchJob:
    """A re-match job on the registry's own HAPI client and live config, state kept in ``job_dir``."""
    return rematch.RematchJob(
        state, job_dir=job_dir, hapi=registry.hapi, config=registry.config, registry=registry
    )


async def mark_manually_linked(hapi: HapiClient, source_id: str) -> None:
    """Flag a stored source record as linked by a person (as curation does), straight in HAPI."""
    stored = await hapi.read("Patient", source_id)
    assert stored is not None
    stored["extension"] = [{"url": records.LINK_SOURCE_URL, "valueCode": records.MANUAL}]
    await hapi.transaction(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"resource": stored, "request": {"method": "PUT", "url": f"Patient/{source_id}"}}],
        }
    )


async def forward_to_hapi(hapi_url: str, request: web.Request) -> web.Response:
    """What HAPI answers ``request`` (made to a test proxy whose FHIR base is ``/fhir``), as the proxy's
    answer: for in-process proxies that stand between the mediator and HAPI and fail on demand."""
    body = await request.read()
    target = hapi_url + request.path_qs.removeprefix("/fhir")
    headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
    async with (
        aiohttp.ClientSession() as session,
        session.request(request.method, target, data=body or None, headers=headers) as upstream,
    ):
        payload = await upstream.read()
        content_type = upstream.headers.get("Content-Type", "application/fhir+json")
        return web.Response(body=payload, status=upstream.status, headers={"Content-Type": content_type})


def is_transaction(request: web.Request) -> bool:
    """A POST to the FHIR base of a test proxy: a transaction (or batch) Bundle."""
    return request.method == "POST" and request.path.rstrip("/") == "/fhir"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def serve_proxy(aiohttp_server: Any, forward: Handler) -> str:
    """Serve ``forward`` for every path with pytest-aiohttp's ``aiohttp_server``; the proxy's FHIR base
    URL."""
    app = web.Application(client_max_size=10_000_000)
    app.router.add_route("*", "/{tail:.*}", forward)
    server = await aiohttp_server(app)
    return f"http://127.0.0.1:{server.port}/fhir"


class HoldTransaction:
    """A test proxy (:meth:`handle`): HAPI's answer to every request, but the first transaction (with
    ``marker``: the first whose body holds it) waits at the proxy until :meth:`release`; :attr:`arrived` is
    set once it waits."""

    def __init__(self, hapi_url: str, marker: bytes | None = None) -> None:
        self.hapi_url, self.marker = hapi_url, marker
        self.arrived = asyncio.Event()
        self.released = asyncio.Event()

    def release(self) -> None:
        self.released.set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        waits = is_transaction(request) and not self.released.is_set() and not self.arrived.is_set()
        if waits and (self.marker is None or self.marker in await request.read()):
            self.arrived.set()
            await self.released.wait()
        return await forward_to_hapi(self.hapi_url, request)


class MissingSearchParameter:
    """A test proxy (:meth:`handle`): HAPI's answer to every request, but a search with ``code`` is refused
    as HAPI refuses an unknown search parameter (400) until :attr:`installed`."""

    def __init__(self, hapi_url: str, code: str) -> None:
        self.hapi_url = hapi_url
        self.code = code
        self.installed = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.code in request.query_string and not self.installed:
            outcome = {
                "resourceType": "OperationOutcome",
                "issue": [
                    {"severity": "error", "code": "processing", "diagnostics": "Unknown search parameter"}
                ],
            }
            return web.json_response(outcome, status=400, content_type="application/fhir+json")
        return await forward_to_hapi(self.hapi_url, request)
