"""Rules applied by a re-match are stored in HAPI and win over CR_RULES at the next start; reset undoes it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from mediator import applied_rules, rematch
from mediator.admin.__main__ import main as admin_main
from mediator.app import create_app, registry_in_process
from mediator.audit import Actor
from mediator.context import CONFIG, STORE
from mediator.errors import UpstreamUnavailable
from mediator.registry import Submission
from mediator.settings import REPO_ROOT, Settings
from tests.conftest import app_settings, patient, unique_surname
from tests.hapi_helpers import rematch_job


def _rules(auto: float, potential: float) -> Any:
    doc = yaml.safe_load((REPO_ROOT / "rules" / "default.yaml").read_text())
    doc["thresholds"] = {"auto_match": auto, "potential_match": potential}
    return rematch.rules_from(doc)


async def test_applied_rules_survive_a_restart_until_reset(settings, facility, tmp_path: Path):
    file_rules = rematch.rules_from(settings.rules_path)
    async with registry_in_process(settings) as registry:
        assert registry.config.current.rules.auto_threshold == file_rules.auto_threshold
        assert not registry.config.origin.applied
        state = rematch.new_state("applied-1", _rules(42.0, 21.0), [facility], applied_by="alice")
        job = rematch_job(registry, state, tmp_path)
        state = await job.run()
        assert state.phase == "finished", state.error
        stored = await applied_rules.read(registry.hapi)
        assert stored is not None and stored.job_id == "applied-1" and stored.applied_by == "alice"
        assert stored.applied_at == state.applied_at

    # A new app on the same HAPI (a restart, or another replica) starts with the applied rules.
    async with registry_in_process(settings) as registry:
        assert registry.config.current.rules.auto_threshold == 42.0
        assert registry.config.current.rules.potential_threshold == 21.0
        origin = registry.config.origin
        assert origin.applied and origin.job_id == "applied-1" and origin.applied_by == "alice"
        assert origin.describe().startswith("applied by job applied-1 by alice at ")
        # and decides with them
        family = unique_surname()
        result = await registry.submit(
            Submission(
                patient(facility, "X1", family=family),
                Actor(client_id=None, address="test"),
                conditional=(facility, "X1"),
            )
        )
        assert result.outcome == "no_match"
        assert await applied_rules.reset(registry.config, registry.hapi) is True
        assert registry.config.current.rules.auto_threshold == file_rules.auto_threshold
        assert not registry.config.origin.applied

    async with registry_in_process(settings) as registry:
        assert registry.config.current.rules.auto_threshold == file_rules.auto_threshold
        assert registry.config.origin.describe() == f"rules file {settings.rules_path}"
        assert await applied_rules.remove(registry.hapi) is False


async def test_broken_stored_rules_fail_start_up_until_reset(settings, monkeypatch, capsys):
    async with registry_in_process(settings) as registry:
        doc = _rules(42.0, 21.0).to_dict()
        doc["thresholds"] = {"auto_match": 1.0, "potential_match": 5.0}  # potential above auto
        broken = applied_rules.AppliedRules.of(doc, "broken-1", "bob")
        await applied_rules.write(registry.hapi, broken)
    with pytest.raises(applied_rules.StoredRulesError, match="reset-rules"):
        async with registry_in_process(settings):
            pass

    monkeypatch.setenv("CR_HAPI_URL", settings.hapi_base_url)
    assert await asyncio.to_thread(admin_main, ["show-rules"]) == 1
    assert "invalid" in capsys.readouterr().err
    assert await asyncio.to_thread(admin_main, ["reset-rules"]) == 0
    assert "applied rules removed" in capsys.readouterr().out
    assert await asyncio.to_thread(admin_main, ["show-rules"]) == 0
    assert capsys.readouterr().out.startswith("rules file ")
    async with registry_in_process(settings) as registry:
        assert not registry.config.origin.applied


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_hapi_down_at_start_up_submissions_wait_for_the_applied_rules(tmp_path):
    settings = app_settings(
        tmp_path,
        hapi_base_url=f"http://127.0.0.1:{_closed_port()}/fhir",
        hapi_timeout_s=2.0,
        hapi_connect_timeout_s=1.0,
    )
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()  # starts although HAPI is unreachable
    try:
        assert app[CONFIG].pending is not None  # the stored rules are still to be read
        with pytest.raises(UpstreamUnavailable):
            await app[STORE].registry.submit(
                Submission(
                    patient("http://x.example.org/mrn", "1", family="Okello"),
                    Actor(client_id=None, address="test"),
                )
            )
    finally:
        await runner.cleanup()


def test_an_empty_console_rules_text_keeps_the_applied_rules():
    from mediator.openhim_config import live_config

    settings = Settings()
    applied = _rules(42.0, 21.0).to_dict()
    assert live_config({}, settings, applied).registry.rules.auto_threshold == 42.0
    assert live_config({}, settings).registry.rules.auto_threshold != 42.0  # no applied rules: the file
    own = yaml.safe_dump(_rules(30.0, 10.0).to_dict())
    assert live_config({"rules": own}, settings, applied).registry.rules.auto_threshold == 30.0
