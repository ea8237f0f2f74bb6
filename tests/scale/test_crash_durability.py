"""A write the registry confirmed (201/200) survives HAPI being killed with SIGKILL; the store stays whole.

Each case starts a HAPI of its own (H2 in its own data folder, or PostgreSQL in its own database) on
``CR_TEST_CRASH_HAPI_PORT`` (8097), sends 200 concurrent submissions through the mediator app (100 people,
each submitted by two facilities), kills HAPI with SIGKILL as soon as ``KILL_AFTER`` submissions have been
answered 201/200 (the others are still in flight), restarts it on the same data, and checks that:

- every submission answered 201/200 is stored, at least in the version it was answered with, linked to the
  golden record it was answered with, and that golden record exists and carries the CRUID it answered;
- resubmitting it now lands on the same record and CRUID (200);
- the store is consistent: every source record is linked (``refer``) to exactly one golden record, which lists
  it (``seealso``), no golden record lists a source that does not refer to it, and no active golden record is
  without sources.

Before ``WRITE_DELAY=0`` in the H2 URL (hapi-server's application.yaml), H2 kept commits in memory for up to
half a second, and runs of this test lost confirmed submissions.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bench import hapi_instance
from mediator import records
from mediator.app import create_app
from tests.conftest import app_settings, patient, unique_surname

REPO = Path(__file__).resolve().parents[2]
CRASH_HAPI_PORT = os.environ.get("CR_TEST_CRASH_HAPI_PORT", "8097")
PG_PORT = os.environ.get("CR_TEST_PG_PORT", "5433")
CRASH_PG_DB = "hapi_crash_test"
PEOPLE = 100  # each submitted by two facilities: 200 submissions
KILL_AFTER = 60  # confirmed answers before HAPI is killed


@pytest.fixture(params=["h2", "postgres"])
def crash_hapi(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The environment of a HAPI of this test's own, started fresh (empty store)."""
    if request.param == "h2":
        env = hapi_instance.hapi_env(f"test-crash-h2-{CRASH_HAPI_PORT}", CRASH_HAPI_PORT)
        hapi_instance.start(env, fresh=True)
    else:
        pg_env = {**os.environ, "PG_PORT": PG_PORT, "PG_DB": CRASH_PG_DB, "PG_RESET_DB": "1"}
        subprocess.run([str(REPO / "scripts" / "pg-start")], env=pg_env, check=True)
        env = hapi_instance.hapi_env(
            f"test-crash-pg-{CRASH_HAPI_PORT}",
            CRASH_HAPI_PORT,
            postgres_jdbc_url=f"jdbc:postgresql://127.0.0.1:{PG_PORT}/{CRASH_PG_DB}",
        )
        hapi_instance.start(env, fresh=False)  # pg-start recreated the database
    try:
        yield env
    finally:
        hapi_instance.stop(env)


def _kill_hapi(env: dict[str, str]) -> None:
    pid = int(Path(env["HAPI_PID_FILE"]).read_text())
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "java"  # the server itself, not a wrapper
    os.kill(pid, signal.SIGKILL)


def _wait_until_dead(env: dict[str, str], timeout_s: float = 30.0) -> None:
    """Until the killed process has ended: its pidfd becomes readable when it exits (no polling)."""
    pid = int(Path(env["HAPI_PID_FILE"]).read_text())
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # already gone
    try:
        ended, _, _ = select.select([fd], [], [], timeout_s)
        assert ended, f"HAPI pid {pid} still alive {timeout_s}s after SIGKILL"
    finally:
        os.close(fd)


def _all_patients(base_url: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    url: str | None = f"{base_url}/Patient?_count=1000"
    while url:
        with urllib.request.urlopen(url, timeout=60) as response:
            bundle = json.load(response)
        found += [entry["resource"] for entry in bundle.get("entry", [])]
        url = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)
    return found


def _inconsistencies(patients: list[dict[str, Any]]) -> list[str]:
    by_id = {p["id"]: p for p in patients}
    goldens = {pid: p for pid, p in by_id.items() if records.is_golden(p)}
    sources = {
        pid: p for pid, p in by_id.items() if records.SOURCE in records.tags(p, records.RECORD_TYPE_SYSTEM)
    }
    problems = []
    for sid, source in sources.items():
        refers = [link for link in source.get("link", []) if link.get("type") == "refer"]
        golden_id = records.golden_id_of(source)
        if len(refers) != 1 or golden_id not in goldens:
            problems.append(f"source {sid}: refer links {refers}, not to exactly one existing golden record")
            continue
        listing = [gid for gid, golden in goldens.items() if sid in records.source_ids_of(golden)]
        if listing != [golden_id]:
            problems.append(f"source {sid} refers to {golden_id}, listed by {listing}")
    for gid, golden in goldens.items():
        for sid in records.source_ids_of(golden):
            if sid not in sources or records.golden_id_of(sources[sid]) != gid:
                problems.append(f"golden {gid} lists {sid}, which does not refer to it")
        if golden.get("active") is True and not records.source_ids_of(golden):
            problems.append(f"golden {gid} is active without sources")
    return problems


@pytest.mark.hapi
@pytest.mark.timeout(900)
async def test_confirmed_submissions_survive_hapi_killed_under_load(
    crash_hapi: dict[str, str], aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    base_url = f"http://127.0.0.1:{crash_hapi['HAPI_PORT']}/fhir"
    settings = app_settings(tmp_path, hapi_base_url=base_url, hapi_timeout_s=60.0, rules_poll_s=0.0)
    client = await aiohttp_client(create_app(settings))

    run = uuid.uuid4().hex[:8]
    submissions = []
    for n in range(PEOPLE):
        family = unique_surname()
        for facility in ("a", "b"):
            submissions.append(patient(f"urn:crash:{run}:{facility}", f"P{n}", family=family))

    confirmed: list[tuple[dict[str, Any], dict[str, str]]] = []
    failed: list[int] = []
    killed = False

    async def submit(resource: dict[str, Any]) -> None:
        nonlocal killed
        response = await client.post("/fhir/Patient", json=resource)
        await response.read()
        if response.status in (200, 201):
            confirmed.append((resource, dict(response.headers)))
            if len(confirmed) == KILL_AFTER and not killed:
                _kill_hapi(crash_hapi)  # right now, with the other submissions in flight
                killed = True
        else:
            failed.append(response.status)

    await asyncio.gather(*(submit(resource) for resource in submissions))
    assert killed, f"only {len(confirmed)} of {len(submissions)} submissions were confirmed: {failed[:5]}"
    assert failed, "HAPI was killed after every submission had been answered: nothing was in flight"
    assert set(failed) <= {503, 504}, failed
    await client.close()

    _wait_until_dead(crash_hapi)
    hapi_instance.start(crash_hapi, fresh=False)  # the same data folder / database

    lost = []
    async with aiohttp.ClientSession() as session:
        for _resource, headers in confirmed:
            _, source_id, _, answered_version = headers["Location"].split("/")  # Patient/id/_history/n
            golden_id = headers["LocationCRUID"].split("/")[1]
            async with session.get(f"{base_url}/Patient/{source_id}") as r:
                source = await r.json(content_type=None) if r.status == 200 else None
            async with session.get(f"{base_url}/Patient/{golden_id}") as r:
                golden = await r.json(content_type=None) if r.status == 200 else None
            if (
                source is None
                or int(records.version_of(source) or 0) < int(answered_version)
                or records.golden_id_of(source) != golden_id
                or golden is None
                or records.cruid_of(golden, settings.cruid_system) != headers["X-CRUID"]
            ):
                lost.append(source_id)
    assert not lost, f"{len(lost)} of {len(confirmed)} confirmed submissions lost after SIGKILL: {lost[:5]}"

    assert _inconsistencies(_all_patients(base_url)) == []

    client = await aiohttp_client(create_app(settings))
    for resource, headers in confirmed:
        response = await client.post("/fhir/Patient", json=resource)
        assert response.status == 200, await response.text()
        assert response.headers["X-CRUID"] == headers["X-CRUID"]
