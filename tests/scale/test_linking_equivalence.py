"""A dry run, its apply and live submissions give the same links on the same records (mediator/linking.py).

A generated population (households, twins, typos) is submitted live; a rules change is planned (dry run),
applied, and the partition of records into people the plan foresaw must be the one the apply wrote. Then a
second plan is made under the applied rules and every record is submitted again, live, in the plan's order:
the partition must be the one that plan foresaw. All three decide through the same linking decision.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import yaml

from bench.population import generate_population
from mediator import applied_rules, records, rematch
from mediator.app import registry_in_process
from mediator.context import CONFIG, STORE
from mediator.settings import REPO_ROOT
from tests.conftest import unique_phone, unique_surname
from tests.hapi_helpers import rematch_job

NATIONAL_ID = "http://example.org/national-id"


def _own_population(n_people: int) -> tuple[list[dict[str, Any]], str]:
    """A generated population (a fixed seed: its rules change below moves records) made this test's own:
    facility systems, family names, phone numbers and national ids no other test (or earlier run) uses, each
    replaced the same way wherever it occurs, so no record of another test is a candidate that could be
    linked; the population's own structure (households, twins, typos, updates) intact."""
    token = uuid.uuid4().hex[:8]
    patients, _ = generate_population(n_people, seed=7)
    families: dict[str, str] = {}
    phones: dict[str, str] = {}
    out = []
    for p in patients:
        p = {k: v for k, v in p.items() if k not in ("id", "meta")}
        p["identifier"] = [
            {**i, "value": f"{token}-{i['value']}"}
            if i["system"] == NATIONAL_ID
            else {**i, "system": f"{i['system']}/{token}"}
            for i in p["identifier"]
        ]
        p["name"] = [
            {**n, "family": families.setdefault(n["family"], unique_surname())} if n.get("family") else n
            for n in p["name"]
        ]
        p["telecom"] = [
            {**t, "value": phones.setdefault(t["value"], unique_phone())} if t.get("system") == "phone" else t
            for t in p.get("telecom", [])
        ]
        out.append(p)
    return out, token


def _key(p: dict[str, Any]) -> str:
    own = next(i for i in p["identifier"] if i["system"] != NATIONAL_ID)
    return f"{own['system']}|{own['value']}"


def _partition(golden_of: dict[str, str]) -> set[frozenset[str]]:
    people: dict[str, set[str]] = {}
    for sid, gid in golden_of.items():
        people.setdefault(gid, set()).add(sid)
    return {frozenset(s) for s in people.values()}


def _foreseen(before: dict[str, str], plan: rematch.Plan) -> set[frozenset[str]]:
    """The partition the plan ends with: its changes applied in order to the stored links."""
    after = dict(before)
    for change in plan.changes:
        after[change.source_id] = change.to_golden or f"new:{change.source_id}"
    return _partition(after)


async def test_dry_run_apply_and_live_submissions_link_alike(client, store, settings, tmp_path: Path):
    population, token = _own_population(60)
    systems = sorted({i["system"] for p in population for i in p["identifier"] if i["system"] != NATIONAL_ID})
    for p in population:
        resp = await client.post("/fhir/Patient", json=p)
        assert resp.status in (200, 201), await resp.text()

    async def stored_links() -> dict[str, str]:
        found = [r for s in systems for r in await store.sources_with(s)]
        return {r["id"]: records.golden_id_of(r) or "" for r in found}

    before = await stored_links()
    assert len(before) > 100  # some records update earlier ones (the same identifier sent again)
    doc = yaml.safe_load((REPO_ROOT / "rules" / "default.yaml").read_text())
    doc["thresholds"] = {"auto_match": 0.5, "potential_match": -2.0}  # potential pairs become links
    async with registry_in_process(settings) as registry:
        cfg = registry.config.current.with_changes(rules=rematch.rules_from(doc))
        plan = await rematch.dry_run(registry.hapi, cfg, systems)
        assert plan.changes, "the rules change should move some records"
        state = await rematch_job(
            registry, rematch.new_state(f"eq-{token}", cfg.rules, systems), tmp_path
        ).run()
        assert state.phase == "finished" and not state.errors, state
        applied = await stored_links()
        assert _partition(applied) == _foreseen(before, plan)

        # Live, under the applied rules: every record sent again as stored, in the plan's (_id) order, moves
        # exactly as a dry run planned just before says. (Not "nobody moves": a record re-decided after the
        # records after it moved may move again; the plan simulates that order too.)
        # the client's app is another replica: it takes the applied rules at its next poll; poll now
        app = client.server.app
        await applied_rules.poll(app[CONFIG], lambda: app[STORE].hapi)
        assert app[CONFIG].current.rules.auto_threshold == 0.5
        replan = await rematch.dry_run(registry.hapi, registry.config.current, systems)
        latest = {records.source_record_id(*_key(p).split("|", 1)): p for p in population}
        assert set(latest) == set(applied)
        for sid in sorted(latest):
            resp = await client.post("/fhir/Patient", json=latest[sid])
            assert resp.status == 200, await resp.text()
        assert _partition(await stored_links()) == _foreseen(applied, replan)
