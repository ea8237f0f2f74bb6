"""Two running apps on one HAPI: rules a re-match applies on one (or a reset) reach the other while it runs.

Each app polls ``Basic/cr-rules-applied`` every ``rules_poll_s`` (short here); the tests wait on the other
app's live config with a deadline, never on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mediator import applied_rules, rematch
from mediator.app import create_app
from mediator.config import ConfigHolder
from mediator.context import CONFIG, HTTP_SESSION, STORE
from mediator.fhir_client import HapiClient
from mediator.locks import LocalKeyedLocks
from mediator.settings import REPO_ROOT, Settings
from mediator.store import FhirStore
from tests.conftest import patient, unique_surname
from tests.hapi_helpers import rematch_job

POLL_S = 0.2
DEADLINE_S = 15.0


def _rules(auto: float, potential: float) -> Any:
    doc = yaml.safe_load((REPO_ROOT / "rules" / "default.yaml").read_text())
    doc["thresholds"] = {"auto_match": auto, "potential_match": potential}
    return rematch.rules_from(doc)


async def _until(condition: Callable[[], bool], what: str, within_s: float = DEADLINE_S) -> None:
    """Wait for ``condition()`` (checked every 50 ms) with a deadline; fails naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not condition():
        assert loop.time() < deadline, f"not within {within_s} s: {what}"
        await asyncio.sleep(0.05)  # polling a condition, not synchronising on time


@asynccontextmanager
async def _replica(settings: Settings) -> AsyncIterator[tuple[web.Application, TestClient]]:
    """One running mediator app (own HAPI session, own poll task) with an HTTP test client."""
    app = create_app(dataclasses.replace(settings, rules_poll_s=POLL_S))
    async with TestClient(TestServer(app)) as client:
        yield app, client


async def _submit(client: TestClient, facility: str, value: str, family: str) -> aiohttp.ClientResponse:
    """The person ``family`` (a given name of its own too: the shared test HAPI holds many an Amina born on
    the default date, and one with a similar surname made a new person a potential match)."""
    return await client.post(
        "/fhir/Patient",
        json=patient(facility, value, family=family, given=family[::-1].capitalize()),
        headers={"Content-Type": "application/fhir+json"},
    )


async def _outcome(client: TestClient, facility: str, value: str, family: str) -> str:
    response = await _submit(client, facility, value, family)
    assert response.status in (200, 201), await response.text()
    return response.headers["X-Match-Outcome"]


async def test_a_rematch_on_one_replica_reaches_the_other_while_it_runs(settings, facility, tmp_path: Path):
    file_rules = rematch.rules_from(settings.rules_path)
    family = unique_surname()
    async with _replica(settings) as (app_a, _client_a), _replica(settings) as (app_b, client_b):
        a: ConfigHolder = app_a[CONFIG]
        b: ConfigHolder = app_b[CONFIG]
        assert b.current.rules.auto_threshold == file_rules.auto_threshold
        # under the file's rules the same person sent again under another record id auto-matches
        assert await _outcome(client_b, facility, "P1", family) == "no_match"
        assert await _outcome(client_b, facility, "P2", family) == "match"

        # the apply of a re-match on A (the same code path as the admin jobs page) stores rules no one meets
        state = rematch.new_state("poll-1", _rules(99.0, 98.0), [facility], applied_by="alice")
        state = await rematch_job(app_a[STORE].registry, state, tmp_path).run()
        assert state.phase == "finished", state.error
        generation_a = a.generation
        await _until(lambda: b.origin.job_id == "poll-1", "B uses the rules A applied")
        assert b.current.rules.auto_threshold == 99.0 and b.origin.applied_by == "alice"
        assert await _outcome(client_b, facility, "P3", family) == "no_match"  # decided with the new rules

        # A finds its own write already in effect: nothing installed again
        stored = await app_a[STORE].hapi.read(applied_rules.RESOURCE_TYPE, applied_rules.RESOURCE_ID)
        version = applied_rules.version_of(stored)
        await _until(lambda: a.stored_version == version, "A has seen its own write")
        assert a.generation == generation_a and a.origin.job_id == "poll-1"
        assert b.stored_version == version

        # reset on A: B goes back to the file's rules
        assert await applied_rules.reset(a, app_a[STORE].hapi) is True
        await _until(lambda: not b.origin.applied, "B back to the rules file")
        assert b.current.rules.auto_threshold == file_rules.auto_threshold
        assert b.origin.describe() == f"rules file {settings.rules_path}"
        assert await _outcome(client_b, facility, "P4", family) == "match"


async def test_a_broken_document_written_while_running_refuses_submissions_until_reset(settings, facility):
    family = unique_surname()
    async with _replica(settings) as (app_a, client_a), _replica(settings) as (app_b, client_b):
        a: ConfigHolder = app_a[CONFIG]
        b: ConfigHolder = app_b[CONFIG]
        good = b.current
        doc = _rules(42.0, 21.0).to_dict()
        doc["thresholds"] = {"auto_match": 1.0, "potential_match": 5.0}  # potential above auto
        broken = applied_rules.AppliedRules.of(doc, "broken-1", "bob").to_resource()
        async with aiohttp.ClientSession() as session:  # straight to HAPI, as a hand edit would
            url = f"{settings.hapi_base_url}/Basic/{applied_rules.RESOURCE_ID}"
            async with session.put(url, json=broken, headers={"Content-Type": "application/fhir+json"}) as r:
                assert r.status in (200, 201), await r.text()

        await _until(lambda: b.pending is not None and a.pending is not None, "both replicas refuse")
        assert b.current is good  # the rules in memory are not replaced by broken ones
        for client in (client_a, client_b):
            response = await _submit(client, facility, "B1", family)
            assert response.status == 503
            diagnostics = (await response.json())["issue"][0]["diagnostics"]
            assert "reset-rules" in diagnostics and "invalid" in diagnostics

        assert await applied_rules.reset(a, app_a[STORE].hapi) is True
        await _until(lambda: b.pending is None, "B accepts submissions again")
        assert not b.origin.applied
        assert await _outcome(client_b, facility, "B1", family) == "no_match"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_hapi_unreachable_during_a_poll_keeps_the_rules(settings, facility):
    async with _replica(settings) as (app, client):
        holder: ConfigHolder = app[CONFIG]
        rules_before, version_before = holder.current, holder.stored_version
        unreachable = HapiClient(app[HTTP_SESSION], f"http://127.0.0.1:{_closed_port()}/fhir", 2.0, 1.0)
        assert await applied_rules.poll(holder, lambda: unreachable) is False
        assert holder.current is rules_before and holder.stored_version == version_before
        assert holder.pending is None  # no 503 because one poll failed
        assert await _outcome(client, facility, "U1", unique_surname()) == "no_match"


def test_a_console_rules_text_still_wins_over_rules_stored_while_running():
    """After a poll installs stored rules, the console config in force is built again over them."""
    from mediator.config import RegistryConfig, RulesOrigin
    from mediator.openhim import OpenHIMLink

    settings = Settings()
    holder = ConfigHolder(RegistryConfig.from_settings(settings), RulesOrigin(path=str(settings.rules_path)))
    store = FhirStore(settings, holder, LocalKeyedLocks())  # never opened: never called
    stored = applied_rules.AppliedRules.of(_rules(42.0, 21.0).to_dict(), "job-7", "alice").to_resource()
    stored["meta"] = {"versionId": "3"}

    for console_rules, expected in ((yaml.safe_dump(_rules(30.0, 10.0).to_dict()), 30.0), ("", 42.0)):
        applied_rules.use_file(holder)
        link = OpenHIMLink(settings, {"urn": "urn:test"})
        holder.rules_swapped = lambda link=link: link.reapply(holder, store)  # as create_app wires it
        assert link.apply({"rules": console_rules}, holder, store)
        assert applied_rules._install(holder, stored) is True  # what a poll does on a new version
        assert link.configs_applied == 2  # built again over the stored rules
        # a console rules text wins; an empty one means the rules in effect: the stored ones
        assert holder.current.rules.auto_threshold == expected
        assert holder.origin.job_id == "job-7" and holder.stored_version == "3"
