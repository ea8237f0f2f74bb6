"""A re-match apply job that loses HAPI in the middle of relinking resumes from its saved state to the same
end result as an uninterrupted run: same links, no duplicate golden records, every change audited once,
manual links untouched.

HAPI "goes away" behind a small proxy: after the N-th relink write has reached HAPI (and committed), the
proxy answers 502 instead of HAPI's answer (the response is lost), and every later request gets 502 too.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from mediator import records, rematch
from mediator.app import registry_in_process
from mediator.audit import Actor
from mediator.registry import Registry, Submission
from mediator.settings import REPO_ROOT
from tests.conftest import patient, unique_phone, unique_surname
from tests.hapi_helpers import mark_manually_linked, rematch_job

PEOPLE = 4  # pairs that the strict rules split, plus one pair with a manually linked record
FAIL_AFTER = 2  # relink writes that reach HAPI before it "goes away" (the last one's answer is lost)


def _strict_rules() -> Any:
    doc = yaml.safe_load((REPO_ROOT / "rules" / "default.yaml").read_text())
    doc["thresholds"] = {"auto_match": 99.0, "potential_match": 98.0}
    doc["deterministic"] = []
    return rematch.rules_from(doc)


@dataclass
class Proxy:
    """Forwards to HAPI until ``fail_after`` relink writes went through; then answers 502 to everything."""

    hapi_url: str
    job_id: str
    fail_after: int
    relink_writes: int = 0
    down: bool = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.down:
            return web.Response(status=502, text="HAPI unreachable")
        body = await request.read()
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() in ("accept", "content-type", "if-match", "prefer", "x-meta-snapshot-mode")
        }
        url = f"{self.hapi_url}{request.path_qs.removeprefix('/fhir')}"
        async with (
            aiohttp.ClientSession() as session,
            session.request(request.method, url, data=body or None, headers=headers) as resp,
        ):
            payload, status, ctype = await resp.read(), resp.status, resp.content_type
        if request.method == "POST" and f"rematch:{self.job_id}".encode() in body:
            self.relink_writes += 1
            if self.relink_writes >= self.fail_after:
                self.down = True  # written in HAPI, but the answer never arrives
                return web.Response(status=502, text="HAPI unreachable")
        return web.Response(status=status, body=payload, content_type=ctype)


async def _people(registry: Registry, facility: str) -> dict[str, str]:
    """PEOPLE + 1 people with two records each (linked by the file's rules); the last one's second record is
    marked as manually linked. Returns identifier value -> source id."""
    ids: dict[str, str] = {}
    actor = Actor(client_id=None, address="test")
    for n in range(PEOPLE + 1):
        family, phone = unique_surname(), unique_phone()
        for suffix in ("a", "b"):
            value = f"P{n}{suffix}"
            result = await registry.submit(
                Submission(
                    patient(facility, value, family=family, phone=phone), actor, conditional=(facility, value)
                )
            )
            ids[value] = result.source_id
    manual = ids[f"P{PEOPLE}b"]
    await mark_manually_linked(registry.hapi, manual)
    return ids


async def _outcome(registry: Registry, ids: dict[str, str], job_id: str) -> dict[str, Any]:
    """What the job left: the partition of the records (by identifier value), the records each active golden
    record lists, the job's AuditEvents per record, the manual record's golden."""
    hapi = registry.hapi
    # which record of a pair splits off depends on the order of their ids (random): name them by that
    # order (but the manual pair by value: its other record splits off)
    value_of = {
        sid: value
        if value.startswith(f"P{PEOPLE}")
        else f"{value[:-1]}-{sorted(s for v, s in ids.items() if v[:-1] == value[:-1]).index(sid)}"
        for value, sid in ids.items()
    }
    golden_of: dict[str, str] = {}
    for sid in ids.values():
        stored = await hapi.read("Patient", sid)
        assert stored is not None
        gid = records.golden_id_of(stored)
        assert gid is not None
        golden_of[sid] = gid
    groups = sorted(
        sorted(value_of[s] for s in golden_of if golden_of[s] == g) for g in set(golden_of.values())
    )
    listed_by: Counter[str] = Counter()  # source -> active golden records that list it
    for sid in ids.values():
        goldens = await hapi.search("Patient", {"link": f"Patient/{sid}", "_count": "50"})
        active = [g for g in goldens if records.is_golden(g) and g.get("active") is True]
        assert all(g["id"] == golden_of[sid] for g in active), (sid, [g["id"] for g in active])
        listed_by[value_of[sid]] = len(active)
    audits: Counter[str] = Counter()
    changes: Counter[str] = Counter()
    for sid in ids.values():
        for ev in await hapi.search("AuditEvent", {"entity": f"Patient/{sid}", "_count": "100"}):
            if ev["agent"][0].get("network", {}).get("address") != f"rematch:{job_id}":
                continue
            audits[value_of[sid]] += 1
            if any(d.get("type") == "previous-cruid" for d in ev["entity"][0].get("detail", [])):
                changes[value_of[sid]] += 1
    return {
        "groups": groups,
        "listed_by": dict(listed_by),
        "audits": dict(audits),
        "changes": dict(changes),
        "golden_of": {value: golden_of[sid] for value, sid in ids.items()},
    }


async def test_a_job_interrupted_while_relinking_resumes_to_the_same_result(
    settings, aiohttp_server, tmp_path: Path
):
    clean_facility = f"http://clean-{unique_surname().lower()}.example.org/mrn"
    broken_facility = f"http://broken-{unique_surname().lower()}.example.org/mrn"
    rules = _strict_rules()
    async with registry_in_process(settings) as registry:
        clean_ids = await _people(registry, clean_facility)
        broken_ids = await _people(registry, broken_facility)
        manual_golden = {
            "clean": records.golden_id_of(
                await registry.hapi.read("Patient", clean_ids[f"P{PEOPLE}b"]) or {}
            ),
            "broken": records.golden_id_of(
                await registry.hapi.read("Patient", broken_ids[f"P{PEOPLE}b"]) or {}
            ),
        }

        # The uninterrupted run.
        clean = await rematch_job(
            registry, rematch.new_state("clean", rules, [clean_facility]), tmp_path / "a"
        ).run()
        assert clean.phase == "finished", clean.error
        assert len(clean.relink) == PEOPLE + 1 and clean.changed == PEOPLE + 1 and not clean.errors

    # The same job on the other facility's identical data, through a proxy that loses HAPI mid-relink.
    proxy = Proxy(settings.hapi_base_url, "broken", FAIL_AFTER)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    server = await aiohttp_server(app)
    through_proxy = replace(
        settings, hapi_base_url=f"http://127.0.0.1:{server.port}/fhir", hapi_timeout_s=30.0
    )
    async with registry_in_process(through_proxy) as registry:
        stopped = await rematch_job(
            registry, rematch.new_state("broken", rules, [broken_facility]), tmp_path / "b"
        ).run()
    assert proxy.down and stopped.phase == "failed" and "UpstreamUnavailable" in stopped.error
    assert stopped.relink_done == FAIL_AFTER - 1  # the last write reached HAPI; its answer did not

    # A restarted mediator resumes the job from its saved state.
    async with registry_in_process(settings) as registry:
        job = rematch.RematchJob.load(
            tmp_path / "b" / "broken.rematch.json",
            hapi=registry.hapi,
            config=registry.config,
            registry=registry,
        )
        resumed = await job.run()
        assert resumed.phase == "finished", resumed.error
        want = await _outcome(registry, clean_ids, "clean")
        got = await _outcome(registry, broken_ids, "broken")
        manual_after = {
            "clean": want["golden_of"][f"P{PEOPLE}b"],
            "broken": got["golden_of"][f"P{PEOPLE}b"],
        }

    assert (resumed.changed, resumed.unchanged, resumed.errors) == (
        clean.changed,
        clean.unchanged,
        clean.errors,
    )
    assert resumed.relink_done == len(resumed.relink) == len(clean.relink)
    assert got["groups"] == want["groups"]  # the same links
    assert set(got["listed_by"].values()) == set(want["listed_by"].values()) == {1}  # one golden each
    moved = {v for v, n in want["changes"].items() if n}
    assert len(moved) == PEOPLE + 1
    assert got["changes"] == want["changes"] == dict.fromkeys(moved, 1)  # every change audited once
    assert got["audits"] == want["audits"] == dict.fromkeys(moved, 1)  # and nothing audited twice
    assert manual_after == manual_golden  # the manually linked records kept their golden records
