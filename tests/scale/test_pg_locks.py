"""PgAdvisoryLocks on a real PostgreSQL: exclusion across instances (as across replicas), release, timeout."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp.test_utils import TestClient, TestServer

from mediator import pg_locks, records
from mediator.admin.curation import CONFIRM, Admin, Curation, _Change
from mediator.app import create_app
from mediator.errors import UpstreamUnavailable
from mediator.fhir_client import HapiClient
from mediator.pg_locks import PgAdvisoryLocks, key_id
from mediator.registry import Registry
from tests.conftest import patient, unique_surname
from tests.hapi_helpers import Store

pytestmark = pytest.mark.postgres


@pytest.fixture
async def two_managers(pg_dsn):
    """Two lock managers with their own pools: what two mediator processes have."""
    a = PgAdvisoryLocks(pg_dsn, pool_size=4, acquire_timeout_s=5)
    b = PgAdvisoryLocks(pg_dsn, pool_size=4, acquire_timeout_s=0.5)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


def test_key_ids_are_stable_signed_64_bit():
    assert key_id("blk:abc") == key_id("blk:abc")
    assert key_id("blk:abc") != key_id("blk:abd")
    assert all(-(2**63) <= key_id(f"k{n}") < 2**63 for n in range(1000))


async def test_a_held_key_blocks_the_other_instance_until_released(two_managers):
    a, b = two_managers
    entered = asyncio.Event()
    release = asyncio.Event()
    order: list[str] = []

    async def first():
        async with a.hold(["blk:x", "src:1"]):
            order.append("a in")
            entered.set()
            await release.wait()
            order.append("a out")

    async def second():
        await entered.wait()
        async with b.hold(["src:2", "blk:x"]):  # shares blk:x
            order.append("b in")

    b.acquire_timeout_s = 10
    task_a = asyncio.create_task(first())
    task_b = asyncio.create_task(second())
    await entered.wait()
    await until_someone_waits_for_an_advisory_lock(a)
    assert order == ["a in"]
    release.set()
    await asyncio.wait_for(asyncio.gather(task_a, task_b), 10)
    assert order == ["a in", "a out", "b in"]


async def test_disjoint_keys_do_not_wait(two_managers):
    a, b = two_managers
    async with a.hold(["blk:p"]), b.hold(["blk:q"]):
        pass


async def test_lock_wait_times_out_as_503_and_keys_are_released_after_errors(two_managers):
    a, b = two_managers
    with pytest.raises(RuntimeError):
        async with a.hold(["blk:e"]):
            raise RuntimeError("body failed")
    async with a.hold(["blk:t"]):
        with pytest.raises(UpstreamUnavailable):
            async with b.hold(["blk:t"]):
                pass  # pragma: no cover
    async with b.hold(["blk:e", "blk:t"]):  # both free again
        pass


async def test_cancelled_waiter_leaves_no_lock_behind(two_managers):
    a, b = two_managers
    b.acquire_timeout_s = 10
    async with a.hold(["blk:c"]):
        waiter = asyncio.create_task(_enter(b, ["blk:c"]))
        await until_someone_waits_for_an_advisory_lock(a)
        assert not waiter.done()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    b.acquire_timeout_s = 0.5
    async with b.hold(["blk:c"]):
        pass


async def _enter(locks, keys):
    async with locks.hold(keys):
        pass


async def until_someone_waits_for_an_advisory_lock(locks, timeout_s=10.0):
    """Bounded polling of pg_locks until a session waits for (has not been granted) an advisory lock."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with locks._pool.acquire() as conn:
        while not await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ):
            assert loop.time() < deadline, "nobody waited for an advisory lock"
            await asyncio.sleep(0.02)  # poll interval of the bounded wait above


async def test_the_server_ends_the_lock_sessions_of_a_vanished_host_within_a_minute(two_managers):
    """Locks and leases of a replica whose host vanished are released when PostgreSQL ends its sessions:
    the lock connections ask for TCP keepalive probes after 30 s, every 10 s, 3 of them."""
    a, _ = two_managers
    async with a._pool.acquire() as conn:
        settings = await conn.fetch(
            "SELECT name, setting FROM pg_settings WHERE name LIKE 'tcp_keepalives_%' ORDER BY name"
        )
    assert {r["name"]: r["setting"] for r in settings} == {
        "tcp_keepalives_count": "3",
        "tcp_keepalives_idle": "30",
        "tcp_keepalives_interval": "10",
    }


def cutting_the_lock_connection_once(pg_dsn: str, method: Callable[..., Any], cut: list[bool]) -> Any:
    """``method``, but the first call first ends the backend of the lock connection the task holds (as a
    network cut or a database restart would), and records in ``cut`` whether that worked."""

    async def cut_the_lock_connection_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not cut:
            killer = await asyncpg.connect(pg_dsn)
            try:
                pid = pg_locks._HELD.get().get_server_pid()
                # the timeout makes it wait until the session (and its locks) has ended, not just signal it
                cut.append(await killer.fetchval("SELECT pg_terminate_backend($1, 10000)", pid))
            finally:
                await killer.close()
        return await method(self, *args, **kwargs)

    return cut_the_lock_connection_once


async def test_a_submission_whose_lock_connection_was_lost_writes_nothing(
    settings, pg_dsn, pg_hapi_url, facility, monkeypatch
):
    """The lock connection is ended (as a network cut or a database restart would) while the submission
    decides: its locks are gone, so another replica may be deciding the same person. It answers 503 and
    writes nothing; the retry then goes through."""
    shared = dataclasses.replace(settings, hapi_base_url=pg_hapi_url, locks="postgres", locks_dsn=pg_dsn)
    cut: list[bool] = []
    cutting = cutting_the_lock_connection_once(pg_dsn, Registry._process, cut)
    monkeypatch.setattr(Registry, "_process", cutting)
    submitted = patient(facility, "7", family=unique_surname())
    async with aiohttp.ClientSession() as http, TestClient(TestServer(create_app(shared))) as client:
        store = Store(http, pg_hapi_url)
        answer = await client.post("/fhir/Patient", json=submitted)
        assert answer.status == 503, await answer.text()
        assert (await answer.json())["resourceType"] == "OperationOutcome"
        assert cut == [True]
        assert await store.read("Patient", records.source_record_id(facility, "7")) is None
        again = await client.post("/fhir/Patient", json=submitted)
        assert again.status == 201, await again.text()
        await store.assert_consistent(records.source_record_id(facility, "7"))


async def test_a_curation_decision_whose_lock_connection_was_lost_writes_nothing(
    settings, pg_dsn, pg_hapi_url, facility, monkeypatch
):
    """An admin's decision holds the key locks on the records it names; if their connection is lost while it
    reads (another replica's admin may now be deciding on the same records), it answers 503 and writes
    nothing: neither the record nor an AuditEvent. The retry goes through."""
    on_pg = dataclasses.replace(settings, hapi_base_url=pg_hapi_url)
    source_id = records.source_record_id(facility, "8")
    cut: list[bool] = []
    locks = PgAdvisoryLocks(pg_dsn, pool_size=2, acquire_timeout_s=5)
    await locks.start()
    try:
        async with aiohttp.ClientSession() as http, TestClient(TestServer(create_app(on_pg))) as client:
            created = await client.post("/fhir/Patient", json=patient(facility, "8", family=unique_surname()))
            assert created.status == 201, await created.text()
            store = Store(http, pg_hapi_url)
            before = await store.read("Patient", source_id)
            assert before is not None and not records.is_manually_linked(before)
            curation = Curation(HapiClient(http, pg_hapi_url, 30, 5), on_pg.cruid_system, locks=locks)
            monkeypatch.setattr(
                _Change, "require", cutting_the_lock_connection_once(pg_dsn, _Change.require, cut)
            )
            with pytest.raises(UpstreamUnavailable):
                await curation.confirm(source_id, Admin("tester"))
            assert cut == [True]
            after = await store.read("Patient", source_id)
            assert after is not None and after["meta"]["versionId"] == before["meta"]["versionId"]
            events = await store.search("AuditEvent", {"entity": f"Patient/{source_id}"})
            assert [e["subtype"][0]["code"] for e in events] == ["create"]  # the submission's only
            outcome = await curation.confirm(source_id, Admin("tester"))
            assert outcome.action == CONFIRM
            confirmed = await store.read("Patient", source_id)
            assert confirmed is not None and records.is_manually_linked(confirmed)
    finally:
        await locks.close()


async def test_giving_back_a_connection_the_pool_took_back_as_it_closed_raises_nothing():
    """The lock database ends a session just as its locks are given back: the unlock fails, and asyncpg's
    pool, seeing the connection close, has already taken it back (its proxy refuses every call). Releasing
    must still end quietly: the session's end released the locks. (Seen in CI: an InterfaceError from
    ``terminate()`` failed a job's lease release.)"""

    class TakenBackAsItFailed:
        released = False

        def is_closed(self) -> bool:
            return False  # not noticed yet

        async def execute(self, *args: Any) -> None:
            self.released = True  # the pool's close callback runs before the error reaches the caller
            raise asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command")

        def terminate(self) -> None:
            assert self.released
            raise asyncpg.InterfaceError("cannot call Connection.terminate(): connection has been released")

    class Pool:
        def __init__(self) -> None:
            self.given_back: list[Any] = []

        async def release(self, conn: Any) -> None:
            self.given_back.append(conn)

    conn, pool = TakenBackAsItFailed(), Pool()
    await pg_locks._give_back(pool, conn, "SELECT pg_advisory_unlock($1)", 1, what={"lease": "test"})
    assert pool.given_back == [conn]
