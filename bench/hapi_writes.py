"""What HAPI's writes cost the registry, against HAPI's plain creates on the same server.

    .venv/bin/python -m bench.hapi_writes --hapi URL [--records 1000] [--rounds 2] [--warmup 3000]
        [--kinds K,…] [--hapi-pid PIDFILE] [--pg-port PORT]

Posts transaction Bundles of 50 rows, 2 in flight, and prints records/s (a record = one submitted row) and
the ratio to the round's ``plain POST`` for each kind of Bundle (with ``--hapi-pid`` / ``--pg-port`` also
HAPI's and the PostgreSQL cluster's CPU ms per record, as ``bench.concurrent_singles`` counts them):

- ``plain POST``: 50 Patients, server-assigned ids — the baseline of issue #6;
- ``PUT no tags``, ``PUT 6 distinct tags``, ``+ AuditEvent per record``, ``+ one AuditEvent per Bundle``:
  50 Patients with client ids (as the registry writes), with tags, with AuditEvents;
- ``new person``: per row, what the registry writes at the least for a person it has not seen — a source
  record (``If-Match: W/"0"``, its record-type tag, its ``refer`` link) and a new golden record (the CRUID,
  its ``seealso`` link): 100 Patients per Bundle, no block tags, no AuditEvent, no review Task;
- ``new person + 7 block tags``, ``… + one AuditEvent per Bundle``: with a source record's blocking keys
  and the transaction's AuditEvent, as the registry writes them;
- ``known person``: per row, a new source record linked to a golden record stored before the timer starts,
  and that golden record's update (``If-Match`` on its version) with the second ``seealso`` link.

The ``new person`` rate over the ``plain POST`` rate bounds what the registry's bulk load can reach against
plain creates on the same machine (docs/scale.md): it writes at least that for every record, and it also
looks up candidates and decides. Run it on a warm HAPI with the registry's launcher settings. Figures only;
not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from mediator import records
from mediator.audit import Actor, RecordDecision, submission_event

BATCH = 50
ACTOR = Actor(client_id=None, address="bench")
CRUID_SYSTEM = "urn:bench-cruid"
FACILITY = "urn:bench-writes"
ABSENT = 'W/"0"'

Entry = dict[str, Any]
Bundle = dict[str, Any]


def _demographics() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "name": [{"family": "Doe" + uuid.uuid4().hex[:5], "given": ["Jo"]}],
        "gender": "female",
        "birthDate": "1980-02-03",
        "identifier": [{"system": FACILITY, "value": uuid.uuid4().hex}],
    }


def _put(resource: dict[str, Any], if_match: str | None = None) -> Entry:
    request = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
    if if_match:
        request["ifMatch"] = if_match
    return {"resource": resource, "request": request}


def _patient(tags: int, put: bool) -> tuple[str, Entry]:
    pid = "bench-" + uuid.uuid4().hex
    resource = _demographics()
    if tags:
        codes = [f"k{i}:{uuid.uuid4().hex[:10]}" for i in range(tags)]
        resource["meta"] = {"tag": [{"system": "urn:bench-block", "code": c} for c in codes]}
    if put:
        resource["id"] = pid
        return pid, _put(resource)
    return pid, {"resource": resource, "request": {"method": "POST", "url": "Patient"}}


def _audit_entries(decisions: list[RecordDecision], audit: str) -> list[Entry]:
    events = []
    if audit == "per-record":
        events = [submission_event(actor=ACTOR, decisions=[d]) for d in decisions]
    elif audit == "per-bundle":
        events = [submission_event(actor=ACTOR, decisions=decisions)]
    return [_put(ev) for ev in events]


def _patients_bundle(tags: int, put: bool, audit: str) -> Bundle:
    made = [_patient(tags, put) for _ in range(BATCH)]
    decisions = [RecordDecision("create", pid, pid, None, "no_match", 0.0, "bench") for pid, _ in made]
    entries = [entry for _, entry in made] + _audit_entries(decisions, audit)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _source(golden_id: str, block_tags: int) -> dict[str, Any]:
    submitted = _demographics()
    identifier = submitted["identifier"][0]
    record_id = records.source_record_id(identifier["system"], identifier["value"])
    keys = [f"k{i}:{uuid.uuid4().hex[:10]}" for i in range(block_tags)]
    return records.build_source_record(
        submitted, record_id, client_id=None, golden_id=golden_id, block_keys=keys
    )


def _new_people(block_tags: int, audit: str) -> Bundle:
    entries: list[Entry] = []
    decisions = []
    for _ in range(BATCH):
        golden_id = records.new_golden_id()
        source = _source(golden_id, block_tags)
        golden = records.with_source(records.new_golden(golden_id, CRUID_SYSTEM), source["id"])
        entries += [_put(source, ABSENT), _put(golden, ABSENT)]
        decisions.append(RecordDecision("create", source["id"], golden_id, None, "no_match", 0.0, "bench"))
    entries += _audit_entries(decisions, audit)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _known_people(stored: list[dict[str, Any]]) -> Bundle:
    """Rows whose person is one of ``stored`` (golden records HAPI holds at version 1)."""
    entries: list[Entry] = []
    for golden in stored:
        source = _source(golden["id"], 0)
        entries += [_put(source, ABSENT), _put(records.with_source(golden, source["id"]), 'W/"1"')]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def _post_all(session: aiohttp.ClientSession, url: str, bundles: list[Bundle]) -> None:
    async def worker() -> None:
        while bundles:
            async with session.post(url, json=bundles.pop()) as resp:
                assert resp.status == 200, await resp.text()

    await asyncio.gather(worker(), worker())


async def _known_people_bundles(session: aiohttp.ClientSession, url: str, count: int) -> list[Bundle]:
    """Store ``count`` Bundles' worth of people (untimed); return Bundles of new records for them."""
    setup = [_new_people(0, "none") for _ in range(count)]
    goldens = [
        [entry["resource"] for entry in bundle["entry"] if entry["resource"]["id"].startswith("cr-")]
        for bundle in setup
    ]
    await _post_all(session, url, setup)
    return [_known_people(batch) for batch in goldens]


def _built(make: Callable[[], Bundle]) -> Callable[[aiohttp.ClientSession, str, int], Any]:
    async def bundles(_session: aiohttp.ClientSession, _url: str, count: int) -> list[Bundle]:
        return [make() for _ in range(count)]

    return bundles


KINDS = {
    "plain POST": _built(lambda: _patients_bundle(0, False, "none")),
    "PUT no tags": _built(lambda: _patients_bundle(0, True, "none")),
    "PUT 6 distinct tags": _built(lambda: _patients_bundle(6, True, "none")),
    "PUT 6 tags + AuditEvent per record": _built(lambda: _patients_bundle(6, True, "per-record")),
    "PUT 6 tags + one AuditEvent per Bundle": _built(lambda: _patients_bundle(6, True, "per-bundle")),
    "new person": _built(lambda: _new_people(0, "none")),
    "new person + 7 block tags": _built(lambda: _new_people(7, "none")),
    "new person + 7 block tags + one AuditEvent per Bundle": _built(lambda: _new_people(7, "per-bundle")),
    "known person": _known_people_bundles,
}


def _pid(pid_file: str) -> int:
    return int(Path(pid_file).read_text())


class _Cpu:
    """CPU seconds of HAPI (``--hapi-pid``) and of a PostgreSQL cluster (``--pg-port``), when given."""

    def __init__(self, hapi_pid: int | None, pg_pid: int | None) -> None:
        self.hapi_pid, self.pg_pid = hapi_pid, pg_pid

    def now(self) -> tuple[float, float]:
        from bench.concurrent_singles import cluster_cpu_s, proc_cpu_s

        hapi = proc_cpu_s(self.hapi_pid) if self.hapi_pid else float("nan")
        pg = cluster_cpu_s(self.pg_pid) if self.pg_pid else float("nan")
        return hapi, pg


async def _rate(
    session: aiohttp.ClientSession, url: str, n: int, kind: str, cpu: _Cpu | None = None
) -> tuple[float, float, float]:
    """records/s, and HAPI and PostgreSQL CPU ms per record (nan when not measured)."""
    bundles = await KINDS[kind](session, url, max(1, n // BATCH))
    total = len(bundles) * BATCH
    cpu = cpu or _Cpu(None, None)
    h0, p0 = cpu.now()
    started = time.perf_counter()
    await _post_all(session, url, bundles)
    wall = time.perf_counter() - started
    h1, p1 = cpu.now()
    return total / wall, (h1 - h0) * 1000 / total, (p1 - p0) * 1000 / total


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hapi", required=True)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3000, help="untimed plain creates first (JIT warm-up)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma list; plain POST always runs")
    parser.add_argument("--hapi-pid", help="HAPI's pid file: print its CPU ms per record")
    parser.add_argument("--pg-port", type=int, help="PostgreSQL's port: print its CPU ms per record")
    args = parser.parse_args()
    from bench.concurrent_singles import postgres_pid

    cpu = _Cpu(
        _pid(args.hapi_pid) if args.hapi_pid else None,
        postgres_pid(args.pg_port) if args.pg_port else None,
    )
    url = args.hapi.rstrip("/")
    kinds = ["plain POST"] + [k for k in args.kinds.split(",") if k and k != "plain POST"]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kinds {unknown}; known: {list(KINDS)}")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        if args.warmup:
            warm, _, _ = await _rate(session, url, args.warmup, "plain POST")
            print(f"warm-up, plain POST: {warm:.0f} records/s")
        for round_ in range(1, args.rounds + 1):
            plain = 0.0
            for kind in kinds:
                rate, hapi_ms, pg_ms = await _rate(session, url, args.records, kind, cpu)
                plain = plain or rate
                ratio = f"{rate / plain:.1%} of plain"
                used = "" if hapi_ms != hapi_ms else f"; CPU ms/record HAPI {hapi_ms:.2f}"
                used += "" if pg_ms != pg_ms else f", PostgreSQL {pg_ms:.2f}"
                print(f"round {round_}: {kind}: {rate:.0f} records/s = {ratio}{used}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
