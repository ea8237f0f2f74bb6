"""Direct reads of the real HAPI server, for tests to check what the registry wrote."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import aiohttp

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
