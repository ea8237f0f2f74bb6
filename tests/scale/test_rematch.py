"""Re-matching after a rules change: dry run (writes nothing) and the apply job, against the real HAPI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mediator import records, rematch
from mediator.app import registry_in_process
from mediator.settings import REPO_ROOT
from tests.conftest import patient, unique_phone, unique_surname
from tests.hapi_helpers import mark_manually_linked, rematch_job


def _rules(auto: float, potential: float) -> Any:
    doc = yaml.safe_load((REPO_ROOT / "rules" / "default.yaml").read_text())
    doc["thresholds"] = {"auto_match": auto, "potential_match": potential}
    doc["deterministic"] = []
    return rematch.rules_from(doc)


async def _submit(client, resource: dict[str, Any]) -> str:
    resp = await client.post("/fhir/Patient", json=resource)
    assert resp.status in (200, 201), await resp.text()
    return resp.headers["Location"].split("/")[1].split("?")[0]


async def test_source_pages_of_a_system_with_search_syntax_characters(client, settings):
    """The systems were joined into `identifier=a|,b|` unescaped: `urn:x,y|` searched `urn:x` OR `y|`."""
    system = f"urn:x,{unique_surname()}"
    source_id = await _submit(client, patient(system, "P1", family=unique_surname()))
    async with registry_in_process(settings) as registry:
        pages = [page async for page in rematch.source_pages(registry.hapi, [system])]
    assert [r["id"] for page in pages for r in page] == [source_id]


async def test_dry_run_then_apply_splits_and_merges_and_leaves_manual_links(
    client, settings, store, facility, tmp_path: Path
):
    family, phone = unique_surname(), unique_phone()
    a = await _submit(client, patient(facility, "A", family=family, phone=phone))
    b = await _submit(client, patient(facility, "B", family=family, phone=phone))
    sources = {r["id"]: r for r in await store.sources_with(facility)}
    assert records.golden_id_of(sources[a]) == records.golden_id_of(sources[b])

    async with registry_in_process(settings) as registry:
        cfg = registry.config.current
        # Rules under which nobody matches: the two linked records would split, nothing written.
        strict = cfg.with_changes(rules=_rules(99.0, 98.0))
        the_plan = await rematch.dry_run(registry.hapi, strict, [facility], page_size=1)
        summary = the_plan.summary()
        assert summary["records"] == 2 and summary["splits"] == 1 and summary["merges"] == 0
        assert summary["examples"]["split"][0]["source_id"] == min(a, b)
        after = {r["id"]: r for r in await store.sources_with(facility)}
        assert {k: records.version_of(v) for k, v in after.items()} == {
            k: records.version_of(v) for k, v in sources.items()
        }

        # Apply it, as a job whose state lives in a folder.
        job = rematch_job(registry, rematch.new_state("j1", strict.rules, [facility]), tmp_path)
        state = await job.run()
        assert state.phase == "finished", state.error
        assert state.changed == 1 and not state.errors
        assert registry.config.current.rules.auto_threshold == 99.0  # live rules switched
        split = {r["id"]: records.golden_id_of(r) for r in await store.sources_with(facility)}
        assert split[a] != split[b]
        moved = min(a, b)
        events = await store.search("AuditEvent", {"entity": f"Patient/{moved}", "_count": "50"})
        assert any(
            d.get("type") == "previous-cruid"
            for e in events
            if e["agent"][0].get("network", {}).get("address") == "rematch:j1"
            for d in e["entity"][0].get("detail", [])
        )
        assert (
            rematch.RematchJob.load(
                tmp_path / "j1.rematch.json",
                hapi=registry.hapi,
                config=registry.config,
                registry=registry,
            ).state.phase
            == "finished"
        )

        # Mark one record manually linked; rules under which everyone matches merge the other back.
        await mark_manually_linked(registry.hapi, moved)
        lenient = cfg.with_changes(rules=_rules(-99.0, -100.0))
        summary = (await rematch.dry_run(registry.hapi, lenient, [facility])).summary()
        assert summary["manual_kept"] == 1 and summary["merges"] == 1
        assert summary["examples"]["merge"][0] == {
            **summary["examples"]["merge"][0],
            "source_id": max(a, b),
            "to_golden": split[moved],
            "partner": moved,
        }
        job = rematch_job(registry, rematch.new_state("j2", lenient.rules, [facility]), tmp_path)
        state = await job.run()
        assert state.phase == "finished" and state.changed == 1, state
    merged = {r["id"]: records.golden_id_of(r) for r in await store.sources_with(facility)}
    assert merged[a] == merged[b] == split[moved]
    for sid in (a, b):
        await store.assert_consistent(sid)
