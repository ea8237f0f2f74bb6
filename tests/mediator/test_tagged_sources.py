"""Candidate searches list ids and versions (``Patient/$tagged-versions``, the HAPI launcher's operation) and
read only the records not held in that version; what they return is exactly what HAPI holds now."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from mediator import records, tagged_sources
from mediator.app import create_app
from mediator.config import ConfigHolder, RegistryConfig, RulesOrigin
from mediator.context import STORE
from mediator.errors import Unprocessable
from mediator.fhir_client import HapiClient
from mediator.locks import LocalKeyedLocks
from mediator.store import FhirStore, HapiTarget
from mediator.tagged_sources import TaggedSources
from mediator.unit_of_work import UnitOfWork
from tests.conftest import patient, unique_surname
from tests.hapi_helpers import get_now, put_now


def _source(family: str, n: int, keys: list[str], given: str = "Ana") -> dict[str, Any]:
    return records.build_source_record(
        {"resourceType": "Patient", "name": [{"family": family, "given": [given]}]},
        f"src-test-{family.lower()}-{n}",
        client_id=None,
        golden_id="unused",
        block_keys=keys,
    ) | {"link": []}


@pytest.fixture
async def hapi(hapi_url: str) -> AsyncIterator[HapiClient]:
    async with aiohttp.ClientSession() as session:
        yield HapiClient(session, hapi_url, 30, 5)


def test_the_operation_lists_what_a_tag_search_finds_with_versions(hapi_url):
    family = unique_surname()
    key, other = f"test:{family}:k", f"test:{family}:o"
    for n in range(3):
        assert put_now(hapi_url, _source(family, n, [key] if n < 2 else [other])) in (200, 201)
    put_now(hapi_url, _source(family, 1, [key], given="Bea"))  # version 2
    tag = f"{records.BLOCK_SYSTEM}|{key},{records.BLOCK_SYSTEM}|{other}"

    status, listed = get_now(f"{hapi_url}/Patient/$tagged-versions?tag={tag}&max=10")
    _, bundle = get_now(f"{hapi_url}/Patient?_tag={tag}&_count=10")
    assert status == 200
    expected = [[e["resource"]["id"], e["resource"]["meta"]["versionId"]] for e in bundle["entry"]]
    assert sorted(listed["ids"]) == sorted(expected) and len(expected) == 3
    assert dict(map(tuple, listed["ids"]))[f"src-test-{family.lower()}-1"] == "2"

    _, two = get_now(f"{hapi_url}/Patient/$tagged-versions?tag={tag}&max=2")
    assert len(two["ids"]) == 2, "at most max"
    for query in (f"tag={tag}&max=0", f"tag={tag}&max=5001", "tag=no-bar&max=5", "max=5"):
        status, outcome = get_now(f"{hapi_url}/Patient/$tagged-versions?{query}")
        assert status == 400 and outcome["resourceType"] == "OperationOutcome", query


async def test_records_are_read_once_and_again_only_when_changed(hapi, hapi_url):
    family = unique_surname()
    key = f"test:{family}:k"
    sources = TaggedSources(hapi, capacity=100)
    writer = UnitOfWork(hapi)  # another process's cache: this one learns nothing from the write
    for n in range(3):
        writer.put(_source(family, n, [key]))
    await writer.commit()

    first = await sources.find([key], 10)
    assert first is not None and len(first) == 3 and (sources.hits, sources.reads) == (0, 3)
    again = await sources.find([key], 10)
    assert again == first and (sources.hits, sources.reads) == (3, 3)
    assert again[0] is first[0], "one parsed view per version, shared"

    put_now(hapi_url, _source(family, 0, [key], given="Changed"))  # someone else changes one
    changed = await sources.find([key], 10)
    assert changed is not None and (sources.hits, sources.reads) == (5, 4)
    by_id = {r["id"]: r for r in changed}
    now = by_id[f"src-test-{family.lower()}-0"]
    assert now["name"][0]["given"] == ["Changed"] and now["meta"]["versionId"] == "2"

    put_now(hapi_url, _source(family, 1, [f"test:{family}:elsewhere"]))  # leaves the block
    assert {r["id"] for r in await sources.find([key], 10) or []} == {
        f"src-test-{family.lower()}-0",
        f"src-test-{family.lower()}-2",
    }
    assert await sources.find([key], 1) is None, "more than the limit: None, nothing read"
    assert sources.reads == 4


async def test_records_written_through_it_are_known_and_views_cannot_be_written_back(hapi):
    family = unique_surname()
    key = f"test:{family}:k"
    sources = TaggedSources(hapi, capacity=100)
    writer = UnitOfWork(hapi, sources)
    writer.put(_source(family, 0, [key, f"test:{family}:second"]))
    versions = await writer.commit()

    uow = UnitOfWork(hapi, sources)
    [found] = await uow.find_sources([key], 10)
    assert sources.reads == 0 and sources.hits == 1, "known from the write"
    assert found["meta"]["versionId"] == versions[f"Patient/{found['id']}"]
    stored = await hapi.read("Patient", found["id"])
    assert stored is not None
    assert {k: v for k, v in found.items() if k != "meta"} == {
        k: v for k, v in stored.items() if k not in ("meta", "text")
    }
    assert records.tags(found, records.BLOCK_SYSTEM) == records.tags(stored, records.BLOCK_SYSTEM)
    assert records.is_subsetted(found) and not records.is_subsetted(stored)
    with pytest.raises(ValueError, match="SUBSETTED"):
        uow.put(found)


async def test_a_server_without_the_operation_is_searched_by_tag(hapi, monkeypatch):
    family = unique_surname()
    key = f"test:{family}:k"
    monkeypatch.setattr(tagged_sources, "OPERATION", "Patient/$no-such-operation")
    writer = UnitOfWork(hapi)
    for n in range(2):
        writer.put(_source(family, n, [key]))
    await writer.commit()
    sources = TaggedSources(hapi, capacity=100)
    found = await sources.find([key], 10)
    assert found is not None and len(found) == 2 and all(records.is_subsetted(r) for r in found)
    assert await sources.find([key], 1) is None


async def test_a_new_store_address_forgets_the_records_held(hapi_url, settings):
    """The OpenHIM console can point the mediator at another FHIR store while it runs: records held from
    the old one must not answer for records of the new one with the same id and version."""
    family = unique_surname()
    key = f"test:{family}:k"
    config = ConfigHolder(RegistryConfig.from_settings(settings), RulesOrigin(path=str(settings.rules_path)))
    async with aiohttp.ClientSession() as session:
        store = FhirStore(dataclasses.replace(settings, source_cache_records=100), config, LocalKeyedLocks())
        store.open(session)
        sources = store.registry.sources
        writer = UnitOfWork(store.hapi, sources)
        writer.put(_source(family, 0, [key]))
        await writer.commit()
        assert len(sources) == 1

        assert store.use(HapiTarget(hapi_url.replace("127.0.0.1", "localhost"), 30, 5))  # "another" store
        now = store.registry.sources
        found = await now.find([key], 10)
        assert found is not None and len(found) == 1 and (now.hits, now.reads) == (0, 1)
        assert now is not sources and len(sources) == 1  # the old store's cache is left as it was


async def test_other_refusals_of_the_operation_are_errors_not_a_fallback(hapi, monkeypatch):
    monkeypatch.setattr(tagged_sources, "OPERATION_MAX", 10_000)  # the operation allows 5,000
    sources = TaggedSources(hapi, capacity=100)
    with pytest.raises(Unprocessable, match="max must be"):
        await sources.find([f"test:{unique_surname()}:k"], 6000)
    assert sources._operation, "still asks the operation"


async def test_views_shared_by_the_decisions_that_read_them_stay_what_hapi_holds(
    aiohttp_client, settings, hapi
):
    """Views are shared, not copied: no decision may change one. One person from four facilities (matches
    update the golden record and link the candidates' person), then every view a candidate search gives
    equals the record HAPI holds in that version."""
    app = create_app(settings)
    client = await aiohttp_client(app)
    family = unique_surname()
    for n, given in enumerate(["Amina", "Amina", "Aminah", "Amina"]):
        answer = await client.post(
            "/fhir/Patient", json=patient(f"urn:test:fac{n}", f"v{n}", family=family, given=given)
        )
        assert answer.status in (200, 201), await answer.text()
    registry = app[STORE].registry
    stored = [
        await hapi.read("Patient", records.source_record_id(f"urn:test:fac{n}", f"v{n}")) for n in range(4)
    ]
    keys = sorted({k for s in stored if s for k in records.tags(s, records.BLOCK_SYSTEM)})
    views = await UnitOfWork(hapi, registry.sources).find_sources(keys, 100)
    assert registry.sources.hits >= 4, "the views come from what the decisions read"
    by_id = {v["id"]: v for v in views}
    for record in stored:
        assert record is not None
        view = by_id[record["id"]]
        assert view["meta"]["versionId"] == record["meta"]["versionId"]
        assert {k: v for k, v in view.items() if k != "meta"} == {
            k: v for k, v in record.items() if k not in ("meta", "text")
        }
