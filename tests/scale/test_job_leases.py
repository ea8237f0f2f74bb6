"""Replicas sharing one jobs directory (one volume) run each job once: a job runs under the lease
``job:<id>`` of the key locks (a PostgreSQL advisory lock with ``CR_LOCKS=postgres``), and a mediator that
starts while another holds it leaves the job to that one — and takes it over, without a restart, once that
replica is gone (its session ends, and the lease with it)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest
from aiohttp.test_utils import TestClient, TestServer
from cryptography.fernet import Fernet

from mediator.admin.jobs import JOB_LEASE, JOBS, Jobs
from mediator.app import create_app
from mediator.pg_locks import lease_id
from tests.admin.test_jobs import _unfinished_job
from tests.hapi_helpers import Store

pytestmark = pytest.mark.postgres
JOB = "bulk-resume"  # the id _unfinished_job gives


@pytest.fixture
def jobs_dir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("CR_JOBS_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("CR_ADMIN_USERS_FILE", str(tmp_path / "users.json"))
    monkeypatch.setenv("CR_ADMIN_SECRET_KEY", Fernet.generate_key().decode())
    return tmp_path / "jobs"


async def _start_and_settle(settings, jobs_dir: Path) -> str:
    """Start a mediator on the jobs directory, wait for its task of the job (if any) to end, stop it; the
    job's status as the directory then says."""
    async with TestClient(TestServer(create_app(settings))) as client:
        task = client.app[JOBS].tasks.get(JOB)
        if task is not None:
            await task
    return str(json.loads((jobs_dir / f"{JOB}.job.json").read_text())["status"])


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


def _status(jobs_dir: Path) -> str:
    return str(json.loads((jobs_dir / f"{JOB}.job.json").read_text())["status"])


async def test_a_job_left_by_a_replica_that_is_gone_is_taken_over_while_running(
    settings, pg_dsn, pg_hapi_url, jobs_dir, facility, monkeypatch
):
    shared = dataclasses.replace(
        settings, hapi_base_url=pg_hapi_url, locks="postgres", locks_dsn=pg_dsn, jobs_adopt_s=0.05
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


async def test_with_locks_of_one_process_jobs_of_other_processes_are_never_taken_over(settings, jobs_dir):
    """In-process locks cannot tell a job another process runs from a job nobody runs: no taking over."""
    local = dataclasses.replace(settings, locks="local", jobs_adopt_s=0.05)
    async with TestClient(TestServer(create_app(local))) as client:
        assert client.app[JOBS].adopting is None
