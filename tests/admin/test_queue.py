"""The review queue sorted and paged by HAPI through the review-score SearchParameter (real HAPI)."""

from __future__ import annotations

import asyncio
from typing import Any

from mediator import records
from mediator.admin import score_index
from mediator.admin.score_index import SCORE_INDEX
from mediator.context import STORE
from mediator.fhir_client import HapiClient
from mediator.review import POTENTIAL_MATCH, review_task

SCORES = [2.5, 4.1234, 4.1235, -1.0, 3.0]  # 4.1234/4.1235 differ below HAPI's two stored decimals


async def _write_tasks(hapi: HapiClient, system: str, cruid_system: str) -> list[dict[str, Any]]:
    entries, tasks = [], []
    for i, score in enumerate(SCORES):
        sid = records.source_record_id(system, str(i))
        gid, other = records.new_golden_id(), records.new_golden_id()
        src = records.build_source_record(
            {"identifier": [{"system": system, "value": str(i)}], "name": [{"family": f"Q{i}"}]},
            sid,
            client_id=None,
            golden_id=gid,
            block_keys=[],
        )
        task = review_task(
            kind=POTENTIAL_MATCH, source_id=sid, golden_id=gid, other_golden_id=other, score=score, rule="t"
        )
        tasks.append(task)
        golden = records.with_source(records.new_golden(gid, cruid_system), sid)
        for r in (golden, records.new_golden(other, cruid_system), src, task):
            entries.append(
                {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            )
    await hapi.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    return tasks


def _expected(tasks: list[dict[str, Any]]) -> list[str]:
    by_score = sorted(zip(SCORES, tasks, strict=True), key=lambda p: -p[0])
    return [t["id"] for _, t in by_score]


async def _pages(admin, system: str) -> tuple[list[str], list[int]]:
    ids, totals = [], []
    for page in (1, 2, 3):
        got = await admin.get("/admin/api/queue", system=system, per_page="2", page=str(page))
        ids += [i["task"] for i in got["items"]]
        totals.append(got["total"])
    return ids, totals


async def test_queue_is_sorted_and_paged_by_hapi(admin, app_client, facility, settings):
    hapi, index = app_client.server.app[STORE].hapi, app_client.server.app[SCORE_INDEX]
    await index.install(hapi)
    assert index.is_ready()
    tasks = await _write_tasks(hapi, facility, settings.cruid_system)
    assert await score_index.unindexed_open_tasks(hapi) == []  # written after the parameter: indexed
    ids, totals = await _pages(admin, facility)
    assert ids == _expected(tasks) and totals == [5, 5, 5]
    empty = await admin.get("/admin/api/queue", system=facility, per_page="2", page="4")
    assert empty["items"] == [] and empty["total"] == 5


async def test_install_indexes_tasks_written_before_the_parameter(admin, app_client, facility, settings):
    hapi, index = app_client.server.app[STORE].hapi, app_client.server.app[SCORE_INDEX]
    await index.install(hapi)
    await index.stop()  # no install started by the app may run while the parameter is gone
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": f"SearchParameter/{score_index.SP_ID}"}}],
    }
    await hapi.transaction(bundle)  # as on a store that never had it
    index.forget()
    tasks = await _write_tasks(hapi, facility, settings.cruid_system)
    # Whether HAPI indexed these Tasks depends on when its search-parameter cache notices the delete
    # (seconds, more under load), so the test does not assert it; it asserts the outcome of install below.
    # not ready: the queue is still right (sorted in memory)
    ids, _ = await _pages(admin, facility)
    assert ids == _expected(tasks)

    await index.install(hapi)  # (the queue may have started one in the background too)
    assert index.is_ready()
    assert await score_index.unindexed_open_tasks(hapi) == []
    assert await index.install(hapi) == 0  # idempotent: nothing written the second time
    stored = await hapi.read("SearchParameter", score_index.SP_ID)
    assert stored is not None and stored["expression"] == score_index.EXPRESSION
    ids, totals = await _pages(admin, facility)
    assert ids == _expected(tasks) and totals == [5, 5, 5]


async def test_each_app_owns_its_install(app_client):
    """Stopping one app's install leaves another app's running (the state was module-wide: one app's
    shutdown cancelled every app's install in the process)."""
    hapi = app_client.server.app[STORE].hapi
    mine, theirs = score_index.ScoreIndex(), score_index.ScoreIndex()
    theirs.start(hapi)
    await mine.stop()
    assert theirs._running is not None
    await theirs._running
    assert theirs.is_ready() and not mine.is_ready()


async def test_a_new_store_starts_the_index_state_over(monkeypatch):
    """The app changed FHIR store (OpenHIM console): what was known of the old store is forgotten, and an
    install for the old store that ends afterwards does not make the new one look ready."""
    started, finish = asyncio.Event(), asyncio.Event()

    async def held_install(hapi) -> int:
        started.set()
        await finish.wait()
        return 0

    monkeypatch.setattr(score_index, "install", held_install)
    old, new = object(), object()  # the clients (install is replaced: never called)
    index = score_index.ScoreIndex()
    finish.set()
    await index.install(old)
    assert index.is_ready()
    index.reset()
    assert not index.is_ready()

    finish.clear()
    started.clear()
    for_the_old = asyncio.create_task(index.install(old))
    await started.wait()
    index.reset()  # the store changes while that install runs
    finish.set()
    assert await for_the_old == 0 and not index.is_ready()
    index.start(new)  # what the app does after a change: the new store's own install
    assert index._running is not None
    await index._running
    assert index.is_ready()
