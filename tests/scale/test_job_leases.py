"""Replicas sharing one jobs directory (one volume) run each job once: a job runs under the lease
``job:<id>`` of the key locks (a PostgreSQL advisory lock with ``CR_LOCKS=postgres``), and a mediator that
starts while another holds it leaves the job to that one — and takes it over, without a restart, once that
replica is gone (its session ends, and the lease with it)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from pathlib import Path

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.fernet import Fernet

from mediator import records
from mediator.admin.jobs import JOB_LEASE, JOBS, Jobs, Wait
from mediator.app import create_app
from mediator.errors import UpstreamUnavailable
from mediator.pg_locks import lease_id
from mediator.settings import AdminSettings, Settings
from tests.admin.test_jobs import _csv_text, _unfinished_job
from tests.conftest import unique_surname
from tests.hapi_helpers import Store
from tests.scale.conftest import mediator_child, mediator_process, replica_admin_login

pytestmark = pytest.mark.postgres
JOB = "bulk-resume"  # the id _unfinished_job gives


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    return tmp_path / "jobs"


@pytest.fixture
def settings(settings: Settings, jobs_dir: Path, tmp_path: Path) -> Settings:
    """The apps of these tests keep their jobs in ``jobs_dir``."""
    admin = AdminSettings(users_file=tmp_path / "users.json", secret_key=Fernet.generate_key())
    return dataclasses.replace(settings, jobs_dir=jobs_dir, admin=admin)


def _status(jobs_dir: Path) -> str:
    """The job's status as its file says."""
    return str(json.loads((jobs_dir / f"{JOB}.job.json").read_text())["status"])


async def _start_and_settle(settings, jobs_dir: Path, retry_wait: Wait = asyncio.sleep) -> str:
    """Start a mediator on the jobs directory (its jobs wait for the FHIR store with ``retry_wait``), wait for
    its task of the job (if any) to end, stop it; the job's status as the directory then says."""
    async with TestClient(TestServer(create_app(settings, job_retry_wait=retry_wait))) as client:
        task = client.app[JOBS].tasks.get(JOB)
        if task is not None:
            await task
    return _status(jobs_dir)


async def test_a_job_another_replica_runs_is_left_to_it(settings, pg_dsn, pg_hapi_url, jobs_dir, facility):
    shared = dataclasses.replace(settings, hapi_base_url=pg_hapi_url, locks="postgres", locks_dsn=pg_dsn)
    _unfinished_job(jobs_dir, facility)
    other_replica = await asyncpg.connect(pg_dsn)
    try:
        assert await other_replica.fetchval("SELECT pg_try_advisory_lock($1)", lease_id(JOB_LEASE + JOB))
        assert await _start_and_settle(shared, jobs_dir) == "running"  # left as it was: not run here
    finally:
        await other_replica.close()  # that replica is gone: its session, and the lease, end
    async with aiohttp.ClientSession() as http:
        assert await Store(http, pg_hapi_url).sources_with(facility) == []
        assert await _start_and_settle(shared, jobs_dir) == "finished"
        assert len(await Store(http, pg_hapi_url).sources_with(facility)) == 1


async def test_a_job_left_by_a_replica_that_is_gone_is_taken_over_while_running(
    settings, pg_dsn, pg_hapi_url, jobs_dir, facility, monkeypatch
):
    shared = dataclasses.replace(
        settings,
        hapi_base_url=pg_hapi_url,
        locks="postgres",
        locks_dsn=pg_dsn,
        jobs_adopt_s=0.05,
    )
    looked: asyncio.Queue[asyncio.Task[None]] = asyncio.Queue()  # the tasks each look for orphans starts
    adopt = Jobs.adopt

    def adopt_and_tell(self: Jobs) -> list[asyncio.Task[None]]:
        tasks = adopt(self)
        for task in tasks:
            looked.put_nowait(task)
        return tasks

    monkeypatch.setattr(Jobs, "adopt", adopt_and_tell)
    _unfinished_job(jobs_dir, facility)
    other_replica = await asyncpg.connect(pg_dsn)
    assert await other_replica.fetchval("SELECT pg_try_advisory_lock($1)", lease_id(JOB_LEASE + JOB))
    async with aiohttp.ClientSession() as http, TestClient(TestServer(create_app(shared))) as client:
        store = Store(http, pg_hapi_url)
        try:
            for _ in range(3):  # looked at again and again: still left to the replica holding the lease
                await (await asyncio.wait_for(looked.get(), 30))
            assert _status(jobs_dir) == "running"
            assert await store.sources_with(facility) == []
        finally:
            await other_replica.close()  # that replica is gone
        for _ in range(100):
            await (await asyncio.wait_for(looked.get(), 30))
            if _status(jobs_dir) == "finished":
                break
        assert _status(jobs_dir) == "finished"
        assert len(await store.sources_with(facility)) == 1
        assert client.app[JOBS].adopting is not None


async def _end_the_session_holding(pg_dsn: str, lease: str) -> None:
    """End the PostgreSQL session that holds the advisory lock of ``lease`` (as a lost connection would)."""
    key = lease_id(lease)
    killer = await asyncpg.connect(pg_dsn)
    try:
        ended = await killer.fetchval(
            # With a timeout, pg_terminate_backend waits until the session has ended and its locks are free;
            # without one it only sends the signal, and a lock taken right after may still be refused.
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1",
            (key >> 32) & 0xFFFFFFFF,
            key & 0xFFFFFFFF,
        )
        assert ended, "no session held the lease"
    finally:
        await killer.close()


@pytest.mark.parametrize("taken_meanwhile", [True, False], ids=["taken-by-another", "nobody-took-it"])
async def test_a_job_that_lost_its_lease_while_it_waited_for_the_fhir_store(
    settings, pg_dsn, pg_hapi_url, jobs_dir, facility, monkeypatch, taken_meanwhile
):
    """A job waiting for the FHIR store loses its lease's connection (the lock database restarted, say). If
    another replica took the job meanwhile, this one stops and leaves it to that one; if nobody did, it takes
    the lease again and finishes the job."""
    shared = dataclasses.replace(settings, hapi_base_url=pg_hapi_url, locks="postgres", locks_dsn=pg_dsn)
    run_once = Jobs._run_once
    runs: list[str] = []
    other_replica = await asyncpg.connect(pg_dsn)

    async def fhir_store_down_the_first_time(self: Jobs, info) -> None:
        runs.append(info.id)
        if len(runs) == 1:
            raise UpstreamUnavailable("The FHIR store cannot be reached (test).")
        await run_once(self, info)

    async def lease_lost_while_waiting(delay: float) -> None:
        await _end_the_session_holding(pg_dsn, JOB_LEASE + JOB)
        if taken_meanwhile:
            assert await other_replica.fetchval("SELECT pg_try_advisory_lock($1)", lease_id(JOB_LEASE + JOB))

    monkeypatch.setattr(Jobs, "_run_once", fhir_store_down_the_first_time)
    _unfinished_job(jobs_dir, facility)
    try:
        async with aiohttp.ClientSession() as http:
            status = await _start_and_settle(shared, jobs_dir, lease_lost_while_waiting)
            stored = await Store(http, pg_hapi_url).sources_with(facility)
    finally:
        await other_replica.close()
    if taken_meanwhile:
        assert (status, runs, stored) == ("running", [JOB], [])  # left to the replica holding the lease
    else:
        assert (status, runs, len(stored)) == ("finished", [JOB, JOB], 1)


async def test_with_locks_of_one_process_jobs_of_other_processes_are_never_taken_over(settings, jobs_dir):
    """In-process locks cannot tell a job another process runs from a job nobody runs: no taking over."""
    local = dataclasses.replace(settings, locks="local", jobs_adopt_s=0.05)
    async with TestClient(TestServer(create_app(local))) as client:
        assert client.app[JOBS].adopting is None


LOGS = Path(__file__).resolve().parents[2] / "var"
# one window (bulk.WINDOW_BATCHES batches of 50): the replica taking the job over decides it again whole
KILLED_JOB_ROWS = 1000


async def test_a_bulk_job_goes_on_when_the_replica_running_it_is_killed(
    pg_dsn, pg_hapi_url, admin_env, tmp_path, facility
):
    """Two real replicas share the jobs directory; the one running an upload is killed (SIGKILL) after its
    first writes. The other takes the job over without a restart and finishes it: every row's record once,
    linked to one golden record."""
    env = {
        **admin_env,
        "CR_HAPI_URL": pg_hapi_url,
        "CR_LOCKS": "postgres",
        "CR_LOCKS_DSN": pg_dsn,
        "CR_HAPI_TIMEOUT": "60",
        "CR_JOBS_DIR": str(tmp_path / "jobs"),  # not the session replicas' directory: they would adopt too
        "CR_JOBS_ADOPT_S": "0.5",
    }
    rows = [
        {
            "id": f"K{n}",
            "family": unique_surname(),
            "given": "Okello",
            "gender": "male",
            "birth_date": "1970-01-01",
        }
        for n in range(KILLED_JOB_ROWS)
    ]
    with (
        mediator_child(env, LOGS / "test-adopt-killed.log") as (killed_url, killed),
        mediator_process(env, LOGS / "test-adopt-survivor.log") as survivor_url,
    ):
        async with (
            aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as admin,
            aiohttp.ClientSession() as http,
        ):
            store = Store(http, pg_hapi_url)
            headers = await replica_admin_login(admin, killed_url)
            form = aiohttp.FormData()
            form.add_field("system", facility)
            form.add_field("file", _csv_text(rows).encode(), filename="clinic.csv", content_type="text/csv")
            async with admin.post(f"{killed_url}/admin/jobs/bulk", data=form, headers=headers) as r:
                assert r.status == 202, await r.text()
                job_id = (await r.json())["id"]
            deadline = time.monotonic() + 120
            while not await store.sources_with(facility):  # its first batch is written
                assert time.monotonic() < deadline, "the job wrote nothing"
                await asyncio.sleep(0.1)  # polling HAPI with a deadline, not synchronising on time
            killed.kill()
            killed.wait()
            job_file = tmp_path / "jobs" / f"{job_id}.job.json"
            assert json.loads(job_file.read_text())["status"] == "running", "killed before it finished"
            written_by_the_killed = len(await store.sources_with(facility))
            assert written_by_the_killed < KILLED_JOB_ROWS

            deadline = time.monotonic() + 300
            while True:  # the survivor's view of the job (the cookie holds on both replicas)
                async with admin.get(f"{survivor_url}/admin/jobs/{job_id}") as r:
                    assert r.status == 200, await r.text()
                    progress = await r.json()
                if progress["status"] != "running":
                    break
                assert time.monotonic() < deadline, progress
                await asyncio.sleep(0.2)  # polling the job with a deadline, not synchronising on time
            assert progress["status"] == "finished", progress
            assert sum(progress["counts"].values()) == KILLED_JOB_ROWS
            sources = await store.sources_with(facility)
            assert sorted(s["identifier"][0]["value"] for s in sources) == sorted(r["id"] for r in rows)
            listed_by: dict[str, list[str]] = {s["id"]: [] for s in sources}  # no golden record left behind
            ids = sorted(listed_by)
            for k in range(0, len(ids), 50):
                refs = ",".join(f"Patient/{i}" for i in ids[k : k + 50])
                for golden in await store.search("Patient", {"link": refs}):
                    for source_id in records.source_ids_of(golden):
                        listed_by.setdefault(source_id, []).append(golden["id"])
            for source in sources:
                assert listed_by[source["id"]] == [records.golden_id_of(source)], source["id"]
