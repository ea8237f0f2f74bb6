"""HAPI on H2 as the store grows: HAPI's own id lookup against the launcher's one-by-one lookup, side by side.

    .venv/bin/python -m bench.h2_id_lookups [--sizes 10000,50000,100000,200000] [--samples 200] [--rounds 2]
        [--ports 8182,8183]

Starts two HAPIs on H2 from the same jar, fresh data folders ``var/bench-idl-before`` and
``var/bench-idl-after``: ``before`` with ``HAPI_ID_LOOKUPS_ONE_BY_ONE=false`` (HAPI 8.8's one
``(res_type=? and fhir_id=?) or ...`` query for a transaction's several client-assigned ids, which H2 answers
by scanning the resource table), ``after`` with the default (``auto``: one indexed query per id on H2). Fills
both with the same number of plain Patients (transaction Bundles of 500 server-id POSTs, no id lookups) up to
each size, then times ``--samples``
registry-shaped transactions one at a time on each, alternating ``before`` and ``after`` for ``--rounds``
rounds: a new person's source record and golden record (two PUTs with ``If-Match: W/"0"``, the source with
7 block tags and its ``refer`` link, the golden record with its ``seealso`` link) and the transaction's
AuditEvent, as the registry writes them. Prints per transaction the median latency, p95, and HAPI's CPU
(user + system time of the HAPI process over the batch, divided by the transactions). Figures only; not a
test. Both servers are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bench import hapi_instance
from mediator import records
from mediator.audit import Actor, RecordDecision, submission_event

FILL_BATCH = 500
ACTOR = Actor(client_id=None, address="bench")
CRUID_SYSTEM = "urn:bench-cruid"
FACILITY = "urn:bench-idl"
TICK = os.sysconf("SC_CLK_TCK")


def _patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "name": [{"family": "Doe" + uuid.uuid4().hex[:6], "given": ["Jo"]}],
        "gender": "female",
        "birthDate": "1980-02-03",
        "identifier": [{"system": FACILITY, "value": uuid.uuid4().hex}],
    }


def _fill_bundle() -> dict[str, Any]:
    entries = [
        {"resource": _patient(), "request": {"method": "POST", "url": "Patient"}} for _ in range(FILL_BATCH)
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _put(resource: dict[str, Any], if_match: str | None = None) -> dict[str, Any]:
    request = {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}
    if if_match:
        request["ifMatch"] = if_match
    return {"resource": resource, "request": request}


def _new_person_transaction() -> dict[str, Any]:
    submitted = _patient()
    identifier = submitted["identifier"][0]
    source_id = records.source_record_id(identifier["system"], identifier["value"])
    golden_id = records.new_golden_id()
    keys = [f"k{i}:{uuid.uuid4().hex[:10]}" for i in range(7)]
    source = records.build_source_record(
        submitted, source_id, client_id=None, golden_id=golden_id, block_keys=keys
    )
    golden = records.with_source(records.new_golden(golden_id, CRUID_SYSTEM), source_id)
    event = submission_event(
        actor=ACTOR,
        decisions=[RecordDecision("create", source_id, golden_id, None, "no_match", 0.0, "bench")],
    )
    entries = [_put(source, 'W/"0"'), _put(golden, 'W/"0"'), _put(event)]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


class Server:
    def __init__(self, label: str, port: int, one_by_one: str) -> None:
        self.label = label
        self.url = f"http://127.0.0.1:{port}/fhir"
        self.env = hapi_instance.hapi_env(f"bench-idl-{label}", port)
        self.env["HAPI_ID_LOOKUPS_ONE_BY_ONE"] = one_by_one
        self.stored = 0

    def pid(self) -> int:
        return int(Path(self.env["HAPI_PID_FILE"]).read_text())

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid()}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


async def _post(session: aiohttp.ClientSession, url: str, bundle: dict[str, Any]) -> None:
    async with session.post(url, json=bundle, headers={"Content-Type": "application/fhir+json"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url}: HTTP {resp.status} {await resp.text()}")
        await resp.read()


async def fill(session: aiohttp.ClientSession, server: Server, size: int) -> None:
    """Plain Patients until the server holds ``size`` resources (counting the timed transactions' ones)."""
    batches = max(0, (size - server.stored + FILL_BATCH - 1) // FILL_BATCH)

    async def worker() -> None:
        nonlocal batches
        while batches > 0:
            batches -= 1
            await _post(session, server.url, _fill_bundle())
            server.stored += FILL_BATCH

    await asyncio.gather(worker(), worker())


async def timed(session: aiohttp.ClientSession, server: Server, samples: int) -> tuple[list[float], float]:
    """Latencies (ms) of ``samples`` transactions one at a time, and HAPI CPU ms per transaction."""
    bundles = [_new_person_transaction() for _ in range(samples)]
    latencies = []
    cpu_before = server.cpu_s()
    for bundle in bundles:
        started = time.perf_counter()
        await _post(session, server.url, bundle)
        latencies.append((time.perf_counter() - started) * 1000)
    server.stored += 3 * samples
    return latencies, (server.cpu_s() - cpu_before) * 1000 / samples


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(sizes: list[int], samples: int, rounds: int, ports: list[int]) -> None:
    servers = [Server("before", ports[0], "false"), Server("after", ports[1], "auto")]
    for server in servers:
        hapi_instance.start(server.env, fresh=True)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:
            for server in servers:
                async with session.get(f"{server.url}/$id-lookups") as resp:
                    print(f"{server.label}: {server.url} $id-lookups {await resp.text()}", flush=True)
                await timed(session, server, 300)  # warm-up of the transaction path (JIT), untimed
            print(
                f"{'stored':>8} {'lookup':<16} {'p50 ms':>8} {'p95 ms':>8} {'HAPI CPU ms/tx':>15}"
                f"  (CPU per round, {rounds} rounds)",
                flush=True,
            )
            for size in sizes:
                started = time.perf_counter()
                await asyncio.gather(*(fill(session, server, size) for server in servers))
                fill_s = time.perf_counter() - started
                results: dict[str, tuple[list[float], list[float]]] = {s.label: ([], []) for s in servers}
                for _ in range(rounds):
                    for server in servers:
                        latencies, cpu = await timed(session, server, samples)
                        results[server.label][0].extend(latencies)
                        results[server.label][1].append(cpu)
                for server in servers:
                    latencies, cpus = results[server.label]
                    name = "HAPI's one query" if server.label == "before" else "one per id"
                    cpu_text = " / ".join(f"{c:.1f}" for c in cpus)
                    print(
                        f"{server.stored:>8} {name:<16} {statistics.median(latencies):>8.1f} "
                        f"{_p(latencies, 0.95):>8.1f} {cpu_text:>15}",
                        flush=True,
                    )
                print(f"         (filled in {fill_s:.0f} s)", flush=True)
    finally:
        for server in servers:
            hapi_instance.stop(server.env)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,50000,100000,200000")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ports", default="8182,8183")
    args = parser.parse_args()
    asyncio.run(
        main(
            [int(s) for s in args.sizes.split(",")],
            args.samples,
            args.rounds,
            [int(p) for p in args.ports.split(",")],
        )
    )
