"""Admin pages at scale: how long every admin page and the API call behind it takes with N submissions stored.

    .venv/bin/python -m bench.admin_pages --hapi http://127.0.0.1:8133/fhir --records 20000 [--tries 5]
                                          [--fresh h2|postgres --port 8133 [--pg-port 5503 --pg-db NAME]]
                                          [--batch 50] [--concurrency 2] [--no-split-audit] [--no-load]
                                          [--seed 7] [--label TEXT]

1. Load (unless ``--no-load``): the stored source records are counted and the rows past that count up to
   ``--records`` are loaded (a few rows are updates of earlier ones, so rerun with ``--no-load``; the
   population of ``bench.population``, through ``mediator.bulk`` in this process, as ``bench.bench_scale``
   does). ``--fresh`` first starts a HAPI of its own on an empty store (``bench.hapi_instance``: H2 in
   ``var/bench-admin-<db>-<port>``, or PostgreSQL on ``scripts/pg-start``'s cluster, database ``--pg-db``
   recreated) and stops it at the end.
2. AuditEvents as single submissions leave them: a bulk batch writes one AuditEvent for its 50 submissions,
   a POS submitting one record at a time writes one per submission. Unless ``--no-split-audit``, every bulk
   AuditEvent is written again as one AuditEvent per submission (plain transaction Bundles straight to HAPI),
   so the store holds at least one AuditEvent per submission, as after N single submissions.
3. A few decisions through the API (same person / different people on open review Tasks), so the decided
   pairs export and its count have something to read.
4. Every admin page and API call (queue, pair, auto-matches, search, person, history, jobs and the rules in
   effect, the logged-in user, the decided-pairs export): one untimed call, then ``--tries`` timed calls;
   median and max in ms, and the HTTP status, in a table. The app runs in this process (aiohttp test server,
   HAPI timeout 120 s so that a slow query shows its time instead of a 504).

Nothing here is a timed test: figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from cryptography.fernet import Fernet

from bench import hapi_instance
from bench.bench_scale import bulk_stage, records
from mediator.admin.score_index import SCORE_INDEX
from mediator.admin.users import UserStore
from mediator.app import create_app, registry_in_process
from mediator.audit import groups
from mediator.records import RECORD_TYPE_SYSTEM, REVIEW_TYPE_SYSTEM, SOURCE
from mediator.settings import AdminSettings, Settings

PASSWORD = "bench admin password 1"
SPLIT_SYSTEM = "urn:bench:split"
SPLIT_TAG = f"{SPLIT_SYSTEM}|per-submission"
REPO = Path(__file__).resolve().parent.parent


async def hapi_get(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url, headers={"Accept": "application/fhir+json"}) as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json(content_type=None)
        return data


async def stored_sources(hapi: str) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        b = await hapi_get(s, f"{hapi}/Patient?_tag={RECORD_TYPE_SYSTEM}|{SOURCE}&_summary=count")
        return int(b.get("total", 0))


async def split_audit_events(hapi: str) -> int:
    """Write every multi-submission AuditEvent again as one AuditEvent per submission; returns how many."""
    written = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        # events written after the newest split one are not split yet (an earlier run split the others)
        last = await hapi_get(s, f"{hapi}/AuditEvent?_tag={SPLIT_TAG}&_sort=-_lastUpdated&_count=1")
        after = ""
        if last.get("entry"):
            after = "&_lastUpdated=gt" + quote(last["entry"][0]["resource"]["meta"]["lastUpdated"])
        url: str | None = f"{hapi}/AuditEvent?_count=200&_tag:not={SPLIT_TAG}{after}"
        batch: list[dict[str, Any]] = []

        async def flush() -> None:
            nonlocal written, batch
            if not batch:
                return
            body = {"resourceType": "Bundle", "type": "transaction", "entry": batch}
            async with s.post(hapi, json=body) as resp:
                assert resp.status == 200, await resp.text()
            written += len(batch)
            batch = []

        while url:
            bundle = await hapi_get(s, url)
            for entry in bundle.get("entry", []):
                ev = entry["resource"]
                parts = groups(ev)
                if len(parts) < 2 or ev.get("meta", {}).get("tag"):
                    continue
                for group in parts:
                    one = {k: v for k, v in ev.items() if k not in ("id", "meta", "entity")}
                    one["entity"] = group
                    one["meta"] = {"tag": [{"system": SPLIT_SYSTEM, "code": "per-submission"}]}
                    batch.append({"resource": one, "request": {"method": "POST", "url": "AuditEvent"}})
                if len(batch) >= 500:
                    await flush()
            url = next((lnk["url"] for lnk in bundle.get("link", []) if lnk["relation"] == "next"), None)
        await flush()
    return written


class Admin:
    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.csrf = ""

    async def login(self) -> None:
        resp = await self.client.post("/admin/api/login", json={"username": "bench", "password": PASSWORD})
        assert resp.status == 200, await resp.text()
        self.csrf = (await resp.json())["csrf"]

    async def get(self, path: str) -> tuple[int, bytes]:
        resp = await self.client.get(path)
        return resp.status, await resp.read()

    async def post(self, path: str, payload: dict[str, Any]) -> tuple[int, Any]:
        resp = await self.client.post(path, json=payload, headers={"X-CSRF-Token": self.csrf})
        return resp.status, await resp.json(content_type=None)


async def timed(call: Callable[[], Awaitable[tuple[int, bytes]]], tries: int) -> tuple[list[float], int]:
    status, _ = await call()  # untimed: caches, JIT
    times = []
    for _ in range(tries):
        t = time.perf_counter()
        status, _ = await call()
        times.append((time.perf_counter() - t) * 1000)
    return times, status


async def measure(hapi: str, tries: int, decisions: int) -> list[tuple[str, list[float], int]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-admin-"))
    users = tmp / "admin-users.json"
    UserStore(users).set_password("bench", PASSWORD)
    settings = Settings(
        hapi_base_url=hapi,
        hapi_timeout_s=120.0,
        admin=AdminSettings(users_file=users, secret_key=Fernet.generate_key()),
        jobs_dir=tmp / "jobs",
    )
    app = create_app(settings)
    async with TestClient(TestServer(app)) as client:
        admin = Admin(client)
        await admin.login()
        status, body = await admin.get("/admin/api/queue?per_page=50")
        deadline = time.monotonic() + 600
        while status == 200 and time.monotonic() < deadline:  # wait for the review-score index
            if app[SCORE_INDEX].is_ready():
                break
            await asyncio.sleep(1)  # polling a condition with a deadline
        queue = json.loads(body)["items"] if status == 200 else []
        task = queue[0]["task"] if queue else None
        for n, item in enumerate(queue[1 : 1 + decisions]):
            decision = "same-person" if n % 2 == 0 else "different-people"
            await admin.post(f"/admin/api/pairs/{item['task']}/decision", {"decision": decision})
        status, body = await admin.get("/admin/api/auto-matches?limit=50")
        autos = json.loads(body)["items"] if status == 200 else []
        golden = autos[0]["golden"] if autos else (queue[0]["golden"] if queue else None)
        family = ""
        identifier = ""
        if autos:
            name = autos[0]["source"]["name"].split()
            family = name[-1] if name else ""
            identifier = autos[0]["source"]["identifiers"][0]
        calls: list[tuple[str, str]] = [
            ("queue page", "/admin/"),
            ("queue API", "/admin/api/queue?per_page=50"),
            ("queue page 5", "/admin/?page=5"),
            ("duplicates page", "/admin/?kind=possible-duplicate"),
            ("duplicates API", "/admin/api/queue?kind=possible-duplicate"),
        ]
        if task:
            calls += [("pair page", f"/admin/pairs/{task}"), ("pair API", f"/admin/api/pairs/{task}")]
        calls += [
            ("auto-matches page", "/admin/auto-matches"),
            ("auto-matches API", "/admin/api/auto-matches?limit=50"),
            ("auto-matches API 200", "/admin/api/auto-matches?limit=200"),
        ]
        if family:
            calls += [
                ("search page (name)", f"/admin/search?q={family}"),
                ("search API (name)", f"/admin/api/search?name={family}"),
                ("search page (identifier)", f"/admin/search?q={identifier}"),
                ("search API (identifier)", f"/admin/api/search?identifier={identifier}"),
            ]
        if golden:
            calls += [
                ("person page", f"/admin/person/{golden}"),
                ("golden API", f"/admin/api/golden/{golden}"),
                ("history (audit)", f"/admin/audit?patient={golden}"),
            ]
        calls += [
            ("jobs page + rules", "/admin/jobs/page"),
            ("jobs API + rules", "/admin/jobs"),
            ("user (me)", "/admin/api/me"),
        ]
        for name, path in (
            ("decisions page", "/admin/decisions"),
            ("decisions API", "/admin/api/decisions"),
            ("decided pairs CSV", "/admin/api/decisions/labels.csv"),
        ):
            if (await admin.get(path))[0] != 404:
                calls.append((name, path))
        out = []
        for name, path in calls:
            times, code = await timed(lambda p=path: admin.get(p), tries)  # type: ignore[misc]
            out.append((name, times, code))
            print(f"  {name}: median {statistics.median(times):.0f} ms, max {max(times):.0f} ms ({code})")
        return out


def fresh_hapi(args: argparse.Namespace) -> dict[str, str]:
    name = f"bench-admin-{args.fresh}-{args.port}"
    jdbc = None
    if args.fresh == "postgres":
        env = {**os.environ, "PG_PORT": str(args.pg_port), "PG_DB": args.pg_db, "PG_RESET_DB": "1"}
        subprocess.run([str(REPO / "scripts" / "pg-start")], env=env, check=True)
        jdbc = f"jdbc:postgresql://127.0.0.1:{args.pg_port}/{args.pg_db}"
    env = hapi_instance.hapi_env(
        name, args.port, postgres_jdbc_url=jdbc, java_opts="-Xmx3g -XX:+ExitOnOutOfMemoryError"
    )
    env.setdefault("HAPI_START_TIMEOUT", "900")
    hapi_instance.start(env, fresh=True)
    return env


async def run(args: argparse.Namespace) -> None:
    hapi = args.hapi.rstrip("/")
    have = await stored_sources(hapi)
    print(f"stored source records: {have}")
    if have < args.records and not args.no_load:
        rows = records(args.records, args.seed)[have:]
        settings = Settings(hapi_base_url=hapi, hapi_timeout_s=120.0)
        with tempfile.TemporaryDirectory() as tmp:
            async with registry_in_process(settings) as registry:
                t = time.perf_counter()
                rate, counts = await bulk_stage(
                    registry, rows, Path(tmp), "load", args.batch, args.concurrency
                )
                print(
                    f"loaded {len(rows)} in {time.perf_counter() - t:.0f} s ({rate:.1f} records/s): {counts}"
                )
    if not args.no_split_audit:
        t = time.perf_counter()
        n = await split_audit_events(hapi)
        print(f"wrote {n} per-submission AuditEvents in {time.perf_counter() - t:.0f} s")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        events = (await hapi_get(s, f"{hapi}/AuditEvent?_summary=count")).get("total")
        tasks = (await hapi_get(s, f"{hapi}/Task?code={REVIEW_TYPE_SYSTEM}|&_summary=count")).get("total")
    print(f"store: {await stored_sources(hapi)} source records, {events} AuditEvents, {tasks} review Tasks")
    results = await measure(hapi, args.tries, args.decisions)
    print()
    print(f"| call ({args.label or hapi}) | median ms | max ms | status |")
    print("| --- | ---: | ---: | ---: |")
    for name, times, status in results:
        print(f"| {name} | {statistics.median(times):.0f} | {max(times):.0f} | {status} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hapi", help="HAPI base URL (default with --fresh: http://127.0.0.1:PORT/fhir)")
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--tries", type=int, default=5)
    p.add_argument("--decisions", type=int, default=6, help="decisions made on open Tasks before timing")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--no-split-audit", action="store_true")
    p.add_argument(
        "--no-load", action="store_true", help="time the store as it is (an earlier run loaded it)"
    )
    p.add_argument("--fresh", choices=("h2", "postgres"))
    p.add_argument("--port", type=int, default=8133)
    p.add_argument("--pg-port", type=int, default=5503)
    p.add_argument("--pg-db", default="hapi_admin_bench")
    p.add_argument("--label", default="", help="a name for the table header (e.g. H2 20k)")
    args = p.parse_args()
    env = None
    if args.fresh:
        env = fresh_hapi(args)
        args.hapi = args.hapi or f"http://127.0.0.1:{args.port}/fhir"
    if not args.hapi:
        p.error("--hapi or --fresh")
    try:
        asyncio.run(run(args))
    finally:
        if env is not None:
            hapi_instance.stop(env)


if __name__ == "__main__":
    main()
