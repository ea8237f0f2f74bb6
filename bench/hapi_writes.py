"""What HAPI's writes cost the registry: Patients with and without distinct tags, and with AuditEvents.

    .venv/bin/python -m bench.hapi_writes --hapi URL [--records 1000] [--rounds 2] [--warmup 3000]

Posts transaction Bundles of 50 entries, 2 in flight, and prints records/s for: ``plain POST`` (no tags),
``PUT no tags`` (client ids, as the registry writes), ``PUT 6 distinct tags`` (a source record's blocking
keys), ``+ AuditEvent per record`` and ``+ one AuditEvent per Bundle`` (50 Patients with tags).
Run it against a HAPI started with ``HAPI_TAG_STORAGE_MODE=VERSIONED`` and one with the default (INLINE) to
see what the tag storage mode changes. Figures only; not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

import aiohttp

from mediator.audit import Actor, RecordDecision, submission_event

BATCH = 50
ACTOR = Actor(client_id=None, address="bench")


def _patient(tags: int, put: bool) -> tuple[str, dict[str, Any]]:
    pid = "bench-" + uuid.uuid4().hex
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "name": [{"family": "Doe" + uuid.uuid4().hex[:5], "given": ["Jo"]}],
        "gender": "female",
        "birthDate": "1980-02-03",
        "identifier": [{"system": "urn:bench-writes", "value": uuid.uuid4().hex}],
    }
    if tags:
        codes = [f"k{i}:{uuid.uuid4().hex[:10]}" for i in range(tags)]
        resource["meta"] = {"tag": [{"system": "urn:bench-block", "code": c} for c in codes]}
    if put:
        resource["id"] = pid
        return pid, {"resource": resource, "request": {"method": "PUT", "url": f"Patient/{pid}"}}
    return pid, {"resource": resource, "request": {"method": "POST", "url": "Patient"}}


def _bundle(tags: int, put: bool, audit: str) -> dict[str, Any]:
    made = [_patient(tags, put) for _ in range(BATCH)]
    entries = [entry for _, entry in made]
    decisions = [RecordDecision("create", pid, pid, None, "no_match", 0.0, "bench") for pid, _ in made]
    events = []
    if audit == "per-record":
        events = [submission_event(actor=ACTOR, decisions=[d]) for d in decisions]
    elif audit == "per-bundle":
        events = [submission_event(actor=ACTOR, decisions=decisions)]
    for ev in events:
        entries.append({"resource": ev, "request": {"method": "PUT", "url": f"AuditEvent/{ev['id']}"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def _rate(session: aiohttp.ClientSession, url: str, n: int, **kind: Any) -> float:
    bundles = [_bundle(**kind) for _ in range(max(1, n // BATCH))]
    total = len(bundles) * BATCH

    async def worker() -> None:
        while bundles:
            async with session.post(url, json=bundles.pop()) as resp:
                assert resp.status == 200, await resp.text()

    started = time.perf_counter()
    await asyncio.gather(worker(), worker())
    return total / (time.perf_counter() - started)


KINDS = {
    "plain POST": dict(tags=0, put=False, audit="none"),
    "PUT no tags": dict(tags=0, put=True, audit="none"),
    "PUT 6 distinct tags": dict(tags=6, put=True, audit="none"),
    "PUT 6 tags + AuditEvent per record": dict(tags=6, put=True, audit="per-record"),
    "PUT 6 tags + one AuditEvent per Bundle": dict(tags=6, put=True, audit="per-bundle"),
}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hapi", required=True)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3000, help="untimed plain creates first (JIT warm-up)")
    args = parser.parse_args()
    url = args.hapi.rstrip("/")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        if args.warmup:
            warm = await _rate(session, url, args.warmup, **KINDS["plain POST"])
            print(f"warm-up, plain POST: {warm:.0f} records/s")
        for round_ in range(1, args.rounds + 1):
            for label, kind in KINDS.items():
                rate = await _rate(session, url, args.records, **kind)
                print(f"round {round_}: {label}: {rate:.0f} records/s", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
