"""Admin jobs under /admin/jobs: bulk upload with progress and report, re-match dry run and apply, resume."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from mediator import records
from mediator.admin.jobs import APPLY_LEASE, JOBS, UPSTREAM_RETRY_S, Jobs
from mediator.app import create_app
from mediator.context import STORE
from mediator.settings import REPO_ROOT, Settings
from tests.admin.conftest import AdminClient
from tests.conftest import metric_samples, unique_phone, unique_surname
from tests.hapi_helpers import forward_to_hapi, is_transaction, serve_proxy


@pytest.fixture
def jobs_dir(tmp_path: Path) -> Path:
    return tmp_path / "jobs"


@pytest.fixture
def settings(settings: Settings, jobs_dir: Path) -> Settings:
    """Every app of these tests keeps its jobs in ``jobs_dir``."""
    return dataclasses.replace(settings, jobs_dir=jobs_dir)


async def _finished(admin: AdminClient, job_id: str) -> dict[str, Any]:
    """Wait for the job's own task (no sleeping), then read its progress through the API."""
    task = admin.client.app[JOBS].tasks.get(job_id)
    if task is not None:
        await asyncio.wait_for(asyncio.shield(task), 120)
    return await admin.get(f"/admin/jobs/{job_id}")


def _csv_text(facility_rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, ["id", "family", "given", "gender", "birth_date", "phone"])
    writer.writeheader()
    writer.writerows(facility_rows)
    return out.getvalue()


async def _upload(
    admin: AdminClient,
    text: str,
    system: str,
    csrf: str | None = None,
    *,
    saved_as: str = "utf-8",
    encoding: str | None = None,
) -> aiohttp.ClientResponse:
    form = aiohttp.FormData()
    form.add_field("system", system)
    if encoding is not None:
        form.add_field("encoding", encoding)
    form.add_field("file", text.encode(saved_as), filename="clinic.csv", content_type="text/csv")
    headers = {"X-CSRF-Token": admin.csrf if csrf is None else csrf}
    return await admin.client.post("/admin/jobs/bulk", data=form, headers=headers)


async def test_bulk_upload_progress_and_report(admin: AdminClient, facility: str):
    family, phone = unique_surname(), unique_phone()
    person = {"family": family, "given": "Amina", "gender": "F", "birth_date": "1987-04-12", "phone": phone}
    text = _csv_text(
        [
            {"id": "A1", **person},
            {"id": "A2", **person},
            {"id": "A3", **person, "gender": "x"},
            {
                "id": "A4",
                **{"family": unique_surname(), "given": unique_surname(), "gender": "male"},
                **{"birth_date": "1950-01-02", "phone": unique_phone()},
            },
        ]
    )
    assert (await _upload(admin, text, facility, csrf="wrong")).status == 403
    resp = await _upload(admin, text, facility)
    assert resp.status == 202, await resp.text()
    started = await resp.json()
    assert started["kind"] == "bulk" and started["rows_total"] == 4
    progress = await _finished(admin, started["id"])
    assert progress["status"] == "finished", progress
    assert progress["rows_done"] == 4
    counts = progress["counts"]
    assert (
        counts["match"] == 1 and counts["error"] == 1
    )  # the first row may be 'potential' to other tests' Aminas
    assert counts.get("no_match", 0) + counts.get("potential", 0) == 2
    resp = await admin.client.get(f"/admin/jobs/{started['id']}/report.csv")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
    report = {int(r["row"]): r for r in csv.DictReader(io.StringIO(await resp.text()))}
    assert report[3]["outcome"] == "match" and report[2]["golden_id"] == report[3]["golden_id"]
    assert "gender" in report[4]["error"]
    listing = await admin.get("/admin/jobs")
    assert started["id"] in [j["id"] for j in listing["items"]]
    page = await admin.client.get("/admin/jobs/page")
    assert page.status == 200 and started["id"] in await page.text()


async def test_a_csv_saved_in_another_encoding_is_read_when_the_upload_names_it(
    admin: AdminClient, facility: str, store, jobs_dir: Path
):
    """Spreadsheets often save CSV files as cp1252: without 'encoding' the upload is refused (400, naming
    the field) and nothing is kept; with it, the names arrive intact."""
    family = unique_surname() + "-Ouédraogo"
    text = _csv_text(
        [{"id": "E1", "family": family, "given": "Zoé", "gender": "F", "birth_date": "1990-03-04"}]
    )
    refused = await _upload(admin, text, facility, saved_as="cp1252")
    assert refused.status == 400
    diagnostics = (await refused.json())["issue"][0]["diagnostics"]
    assert "not UTF-8: byte 0xE9" in diagnostics and "'encoding'" in diagnostics, diagnostics
    assert list((jobs_dir / "uploads").iterdir()) == []
    unknown = await _upload(admin, text, facility, saved_as="cp1252", encoding="klingon")
    assert unknown.status == 400 and "klingon" in await unknown.text()
    resp = await _upload(admin, text, facility, saved_as="cp1252", encoding="cp1252")
    assert resp.status == 202, await resp.text()
    progress = await _finished(admin, (await resp.json())["id"])
    assert progress["status"] == "finished" and progress["counts"].get("error", 0) == 0, progress
    [source] = await store.sources_with(facility)
    assert source["name"][0]["family"] == family and source["name"][0]["given"] == ["Zoé"]


async def test_replicas_sharing_the_jobs_directory_list_each_others_jobs(
    aiohttp_client, settings, admin_settings, facility: str
):
    """Behind a load balancer the admin may ask either replica: both list a job and its progress, whichever
    runs it (here two apps on one jobs directory; the second started before the upload)."""
    one = await AdminClient(await aiohttp_client(create_app(settings))).login()
    two = await AdminClient(await aiohttp_client(create_app(settings))).login()
    person = {"family": unique_surname(), "given": "Achieng", "gender": "F", "phone": unique_phone()}
    resp = await _upload(one, _csv_text([{"id": "S1", **person}, {"id": "S2", **person}]), facility)
    started = await resp.json()
    seen = await two.get(f"/admin/jobs/{started['id']}")  # still running on the first, or finished
    assert seen["kind"] == "bulk" and seen["rows_total"] == 2
    done = await _finished(one, started["id"])
    assert done["status"] == "finished"
    listed = {j["id"]: j for j in (await two.get("/admin/jobs"))["items"]}
    assert listed[started["id"]]["status"] == "finished"
    assert listed[started["id"]]["counts"] == done["counts"] and sum(done["counts"].values()) == 2
    report = await two.client.get(f"/admin/jobs/{started['id']}/report.csv")
    assert report.status == 200 and len((await report.text()).splitlines()) == 3


async def test_jobs_need_a_session(app_client):
    assert (await app_client.get("/admin/jobs")).status == 401


async def test_rematch_dry_run_then_apply(admin: AdminClient, facility: str, store):
    family, phone = unique_surname(), unique_phone()
    person = {"family": family, "given": "Amina", "gender": "F", "birth_date": "1987-04-12", "phone": phone}
    resp = await _upload(admin, _csv_text([{"id": "A1", **person}, {"id": "A2", **person}]), facility)
    await _finished(admin, (await resp.json())["id"])
    doc = yaml.safe_load((REPO_ROOT / "rules" / "default.yaml").read_text())
    doc["thresholds"] = {"auto_match": 99.0, "potential_match": 98.0}
    doc["deterministic"] = []
    bad = await admin.post("/admin/jobs/rematch/dry-run", {"rules": {"name": "x"}}, status=400)
    assert bad["resourceType"] == "OperationOutcome"
    deep = await admin.post("/admin/jobs/rematch/dry-run", {"rules_yaml": "[" * 50_000}, status=400)
    assert "nested too deeply" in deep["issue"][0]["diagnostics"]  # a 500 before
    deep_json = await admin.client.post(
        "/admin/jobs/rematch/dry-run",
        data="[" * 50_000 + "]" * 50_000,
        headers={"X-CSRF-Token": admin.csrf, "Content-Type": "application/json"},
    )
    assert deep_json.status == 400, await deep_json.text()  # a 500 before
    dry = await admin.post(
        "/admin/jobs/rematch/dry-run", {"rules_yaml": yaml.safe_dump(doc), "systems": [facility]}, status=202
    )
    result = (await _finished(admin, dry["id"]))["result"]
    assert result["records"] == 2 and result["links_changed"] == 1 and result["splits"] == 1
    goldens = {records.golden_id_of(r) for r in await store.sources_with(facility)}
    assert len(goldens) == 1  # the dry run wrote nothing
    apply = await admin.post("/admin/jobs/rematch/apply", {"rules": doc, "systems": [facility]}, status=202)
    progress = await _finished(admin, apply["id"])
    assert progress["status"] == "finished" and progress["changed"] == 1, progress
    assert progress["relink_done"] == progress["relink_total"] == 1
    assert len({records.golden_id_of(r) for r in await store.sources_with(facility)}) == 2

    # The applied rules are in effect (and stored in HAPI for a restart); the page says so; reset.
    in_effect = (await admin.get("/admin/jobs"))["rules_in_effect"]
    assert in_effect["source"] == "applied" and in_effect["job"] == apply["id"], in_effect
    assert in_effect["applied_by"] == "alice" and in_effect["auto_match"] == 99.0
    page = await (await admin.client.get("/admin/jobs/page")).text()
    assert f"applied by job {apply['id']} by alice at" in page and "Back to the rules file" in page
    assert (await admin.client.post("/admin/jobs/rules/reset", json={})).status == 403  # no CSRF token
    reset = await admin.post("/admin/jobs/rules/reset", {})
    assert reset["removed"] is True and reset["rules_in_effect"]["source"] == "file"
    assert reset["rules_in_effect"]["auto_match"] != 99.0
    page = await (await admin.client.get("/admin/jobs/page")).text()
    assert "rules file" in page and "Back to the rules file" not in page


async def test_one_apply_or_reset_at_a_time_under_the_apply_lease(admin: AdminClient, facility: str):
    """An apply runs under the apply lease of the key locks and gives it back when it ends; while the lease
    is held (here by the test, as another replica's apply would hold it) apply and reset are refused."""
    locks = admin.client.app[STORE].registry.locks
    doc = yaml.safe_load((REPO_ROOT / "rules" / "default.yaml").read_text())
    held = await locks.try_lease(APPLY_LEASE)
    assert held is not None
    try:
        refused = await admin.post(
            "/admin/jobs/rematch/apply", {"rules": doc, "systems": [facility]}, status=409
        )
        assert "being applied" in refused["issue"][0]["diagnostics"]
        await admin.post("/admin/jobs/rules/reset", {}, status=409)
    finally:
        await held.release()
    apply = await admin.post("/admin/jobs/rematch/apply", {"rules": doc, "systems": [facility]}, status=202)
    assert (await _finished(admin, apply["id"]))["status"] == "finished"
    again = await locks.try_lease(APPLY_LEASE)  # the finished apply gave the lease back
    assert again is not None
    await again.release()
    assert (await admin.post("/admin/jobs/rules/reset", {}))["removed"] is True


def _unfinished_job(jobs_dir: Path, facility: str) -> None:
    """The files a mediator leaves of a bulk job that it had started and not finished."""
    upload = jobs_dir / "uploads"
    upload.mkdir(parents=True)
    data = upload / "bulk-resume.csv"
    data.write_text(
        _csv_text([{"id": "R1", "family": unique_surname(), "given": "Okello", "gender": "male"}])
    )
    info = {
        "id": "bulk-resume",
        "kind": "bulk",
        "created": time.time(),
        "params": {"file": str(data), "filename": "c.csv", "system": facility, "rows_total": 1},
        "status": "running",
    }
    (jobs_dir / "bulk-resume.job.json").write_text(json.dumps(info))


async def test_an_unfinished_job_resumes_when_the_mediator_starts(
    aiohttp_client, settings, admin_settings, jobs_dir: Path, facility: str, store
):
    _unfinished_job(jobs_dir, facility)
    admin = await AdminClient(await aiohttp_client(create_app(settings))).login()
    progress = await _finished(admin, "bulk-resume")
    assert progress["status"] == "finished" and progress["counts"] == {"no_match": 1}
    assert len(await store.sources_with(facility)) == 1


@pytest.fixture
async def losing_proxy(aiohttp_server, hapi_url):
    """Forwards to HAPI; the next ``state["lose"]`` transactions reach HAPI and commit, but their answer is
    replaced by a 502 (HAPI gone before it answered: the worst case for the job)."""
    state: dict[str, Any] = {"lose": 0, "lost": 0}

    async def forward(request: web.Request) -> web.StreamResponse:
        answer = await forward_to_hapi(hapi_url, request)
        if is_transaction(request) and state["lose"] > 0:
            state["lose"] -= 1
            state["lost"] += 1
            return web.Response(status=502, text="HAPI unreachable")
        return answer

    state["url"] = await serve_proxy(aiohttp_server, forward)
    return state


async def _job_waiting_for_the_store(
    aiohttp_client, settings, jobs_dir: Path, facility: str, losing_proxy
) -> tuple[AdminClient, asyncio.Event, list[float]]:
    """A mediator (behind ``losing_proxy``) whose unfinished bulk job lost its first write's answer and now
    waits for the FHIR store: the admin client, the event that ends the wait, the delays it was to wait."""
    _unfinished_job(jobs_dir, facility)
    waiting, resume = asyncio.Event(), asyncio.Event()
    delays: list[float] = []

    async def held_until_the_test_resumes(delay: float) -> None:
        delays.append(delay)
        waiting.set()
        await resume.wait()

    losing_proxy["lose"] = 1
    on_proxy = dataclasses.replace(settings, hapi_base_url=losing_proxy["url"])
    app = create_app(on_proxy, job_retry_wait=held_until_the_test_resumes)
    admin = await AdminClient(await aiohttp_client(app)).login()
    await asyncio.wait_for(waiting.wait(), 60)
    return admin, resume, delays


async def test_a_job_waits_while_the_fhir_store_is_down_then_finishes(
    aiohttp_client, settings, admin_settings, jobs_dir: Path, facility: str, store, losing_proxy
):
    """The FHIR store goes away under a running bulk job (its first write committed, the answer lost): the job
    does not fail; it stays running, says it waits for the FHIR store, and once the store is back it goes on
    from its saved position and finishes, every row's source record stored once and consistent."""
    admin, resume, delays = await _job_waiting_for_the_store(
        aiohttp_client, settings, jobs_dir, facility, losing_proxy
    )
    progress = await admin.get("/admin/jobs/bulk-resume")
    assert progress["status"] == "running", progress
    assert progress["error"].startswith("Waiting for the FHIR store (UpstreamUnavailable"), progress
    assert losing_proxy["lost"] == 1 and delays == [UPSTREAM_RETRY_S[0]]
    metrics = metric_samples(await (await admin.client.get("/metrics")).text())
    assert metrics[("cr_jobs_waiting_for_fhir_store", (("kind", "bulk"),))] == 1
    assert metrics[("cr_jobs", (("kind", "bulk"), ("status", "running")))] == 1
    lost = (("call", "transaction"), ("reason", "server_error"))
    assert metrics[("cr_fhir_store_failures_total", lost)] == 1
    resume.set()
    progress = await _finished(admin, "bulk-resume")
    assert progress["status"] == "finished" and progress["error"] == "", progress
    metrics = metric_samples(await (await admin.client.get("/metrics")).text())
    assert metrics[("cr_jobs_waiting_for_fhir_store", (("kind", "bulk"),))] == 0
    assert metrics[("cr_jobs", (("kind", "bulk"), ("status", "finished")))] == 1
    assert ("cr_jobs", (("kind", "bulk"), ("status", "running"))) not in metrics
    assert progress["rows_done"] == 1
    sources = await store.sources_with(facility)
    assert len(sources) == 1
    await store.assert_consistent(sources[0]["id"])


async def test_an_admin_cancels_a_job_waiting_for_the_fhir_store(
    aiohttp_client, settings, admin_settings, jobs_dir: Path, facility: str, store, losing_proxy
):
    """Cancelled (202), the job stops after its wait instead of trying again, and no start resumes it;
    cancelling it again is a 409."""
    admin, resume, _ = await _job_waiting_for_the_store(
        aiohttp_client, settings, jobs_dir, facility, losing_proxy
    )
    assert (await admin.client.post("/admin/jobs/bulk-resume/cancel")).status == 403  # no CSRF token
    cancel_form = 'action="/admin/jobs/bulk-resume/cancel"'
    assert cancel_form in await (await admin.client.get("/admin/jobs/page")).text()
    cancelled = await admin.post("/admin/jobs/bulk-resume/cancel", {}, status=202)
    assert cancelled["status"] == "cancelled" and cancelled["error"] == "Cancelled by alice.", cancelled
    resume.set()
    progress = await _finished(admin, "bulk-resume")
    assert progress["status"] == "cancelled" and progress["rows_done"] == 0, progress
    assert losing_proxy["lost"] == 1  # tried once, never again
    await admin.post("/admin/jobs/bulk-resume/cancel", {}, status=409)
    assert cancel_form not in await (await admin.client.get("/admin/jobs/page")).text()
    again = await AdminClient(await aiohttp_client(create_app(settings))).login()
    assert again.client.app[JOBS].tasks.get("bulk-resume") is None  # not resumed at start
    assert (await again.get("/admin/jobs/bulk-resume"))["status"] == "cancelled"
    # the record whose answer was lost is in HAPI, whole: the job's one write before the outage
    sources = await store.sources_with(facility)
    assert len(sources) == 1
    await store.assert_consistent(sources[0]["id"])


async def test_a_bulk_job_cancelled_on_another_replica_stops_after_its_window(
    aiohttp_client, settings, admin_settings, jobs_dir: Path, facility: str, store, monkeypatch
):
    """A replica sharing the jobs directory cancels the job (its file says so) while this one runs it: the
    job stops after the window it was deciding, whose rows are written whole and reported, and goes no
    further."""
    monkeypatch.setattr("mediator.bulk.job.WINDOW_BATCHES", 1)  # windows of one batch: 50 rows
    rows = [
        {
            "id": f"W{n}",
            "family": unique_surname(),
            "given": "Nakato",
            "gender": "female",
            "phone": unique_phone(),
        }
        for n in range(120)
    ]
    stop_if_cancelled = Jobs._stop_if_cancelled
    windows: list[str] = []

    def cancelled_elsewhere_after_the_first_window(self: Jobs, job_id: str) -> None:
        windows.append(job_id)
        if len(windows) == 1:  # what the other replica's cancel writes
            info = json.loads((jobs_dir / f"{job_id}.job.json").read_text())
            (jobs_dir / f"{job_id}.job.json").write_text(
                json.dumps({**info, "status": "cancelled", "error": "Cancelled by bob."})
            )
        stop_if_cancelled(self, job_id)

    monkeypatch.setattr(Jobs, "_stop_if_cancelled", cancelled_elsewhere_after_the_first_window)
    admin = await AdminClient(await aiohttp_client(create_app(settings))).login()
    resp = await _upload(admin, _csv_text(rows), facility)
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["id"]
    progress = await _finished(admin, job_id)
    assert (progress["status"], progress["error"]) == ("cancelled", "Cancelled by bob."), progress
    assert progress["rows_done"] == 50 and windows == [job_id]
    report = await admin.client.get(f"/admin/jobs/{job_id}/report.csv")
    reported = [r["source_id"] for r in csv.DictReader(io.StringIO(await report.text()))]
    stored = sorted(p["id"] for p in await store.sources_with(facility))
    assert len(reported) == 50 and sorted(reported) == stored


async def test_a_csv_line_the_csv_reader_cannot_read_is_a_row_error(admin: AdminClient, facility: str, store):
    """A field over the csv module's limit (128 KiB) made the upload answer 500; now that line is reported
    with its number and the other lines are loaded."""
    rows = [
        {"id": "L1", "family": unique_surname(), "given": unique_surname(), "gender": "F"},
        {"id": "L2", "family": "x" * 200_000, "given": "Ana", "gender": "F"},
        {"id": "L3", "family": unique_surname(), "given": unique_surname(), "gender": "M"},
    ]
    resp = await _upload(admin, _csv_text(rows), facility)
    assert resp.status == 202, await resp.text()
    started = await resp.json()
    assert started["rows_total"] == 3
    progress = await _finished(admin, started["id"])
    assert progress["status"] == "finished" and progress["counts"]["error"] == 1, progress
    report = await admin.client.get(f"/admin/jobs/{started['id']}/report.csv")
    by_row = {int(r["row"]): r for r in csv.DictReader(io.StringIO(await report.text()))}
    assert "field larger than field limit" in by_row[3]["error"]
    assert sorted(i["value"] for s in await store.sources_with(facility) for i in s["identifier"]) == [
        "L1",
        "L3",
    ]
