"""Scale benchmark: bulk load vs single submissions vs HAPI's own plain creates, in one run.

    .venv/bin/python -m bench.bench_scale --hapi URL [--hapi-pid PIDFILE] [--stages 10000,100000] [--batch 50]
                                          [--samples 200] [--concurrency 2] [--plain 2000]
                                          [--plain-warmup 2000] [--load bulk|singles] [--clients 4]
                                          [--plain-hapi URL2]

Against a running, preferably empty HAPI (e.g. on PostgreSQL: ``scripts/pg-start`` then ``HAPI_DB=postgres
SPRING_DATASOURCE_URL=jdbc:postgresql://127.0.0.1:5433/hapi_bench HAPI_PORT=8097 scripts/hapi-start``):

1. HAPI baseline: ``--plain-warmup`` plain Patient creates first, untimed (HAPI's JIT warm-up changes its
   rate several-fold), then ``--plain`` Patients posted as plain transaction Bundles of ``--batch`` creates
   (no registry, an identifier system of their own), records/s at the start of the run.
2. Stages (``--stages``, increasing stored sizes; ``--records N`` is one stage): the population of
   ``bench.population.generate_population`` (NDJSON) is loaded up to each size through ``mediator.bulk`` in
   this process (``Registry.submit_all`` per batch), records/s and outcome counts per stage; after each stage
   ``--samples`` records of another seed (new people, some of them namesakes of stored ones) are submitted one
   at a time, p50/p95 latency and records/s. The samples stay stored, so "stored" counts them too.
   ``--load singles`` loads the stages as single submissions instead (``Registry.submit``, one record per
   transaction) from ``--clients`` concurrent clients: records/s and p50/p95 latency over the whole stage.
3. HAPI plain creates again at the end (same size, new people), records/s; the overall bulk rate and its
   ratio to plain creates at the start and at the end; the p95 growth from the first to the last stage.
4. RSS of this process (the mediator's registry) and of HAPI (``--hapi-pid``).

``--plain-hapi URL2`` (a second HAPI, freshly started on an empty database of its own) measures HAPI's plain
creates over the very load the registry takes, before the registry's stages: the same generated records, up to
the same stored sizes, in transaction Bundles of ``--batch`` with ``--concurrency`` in flight, from its cold
start like the registry's HAPI. Records/s per stage and overall, and the registry's ratio to them, stage by
stage and overall. The second HAPI is idle during the registry's load. The samples at 2,000 records at the
start and the end measure HAPI at one moment of its JIT warm-up and one database size; this measures both over
the whole load.
Figures only; nothing here is a timed test.

Measured 2026-11-25, 2 cores shared with other test runs (noisy), HAPI 8.8.0 on PostgreSQL 15, 10k records,
batches of 50, 2 in flight: HAPI plain creates 147 records/s; bulk load 36 records/s = 25 % of that
(4811 no_match, 4261 match, 922 potential, 6 row errors); single submissions with 10k stored: p50 28 ms,
p95 60 ms, 30 records/s one at a time; RSS mediator 120 MB, HAPI 1096 MB. 100k not run (~45 min at this
rate on this machine). Bulk is batch-bounded by the per-record reads (own record, candidate search, golden)
that ``submit_all`` still does one by one, and by key locks that serialise overlapping batches.

Since then ``submit_all`` prefetches a batch's reads: own records and goldens by ``_id`` searches, and the
candidate searches of the whole batch as a few ``_tag`` searches of 60 keys each, split locally into each
record's answer (per-record searches again when a block is huge). Measured 2026-11-25, same noisy 2 cores,
HAPI on PostgreSQL 15, 1500 records per run on top of the earlier runs, batches of 50, 2 in flight: bulk
37.0 records/s without the prefetch, 49.3 with per-record searches prefetched, 69.7 with the batched
``_tag`` searches (1.9x). HAPI's plain creates are very sensitive to its JIT warm-up: 133 records/s in the
first run of a fresh HAPI, 437-853 once warm, so the ratio is 15 % cold and 8 % warm: the 30 % target is not
met. What remains per record: 3-4 resources written (source, golden, AuditEvent, Tasks) against 1 for a
plain create, HAPI indexing 6 block-key tags per source record, and the key locks of overlapping batches.
Profile of 1000 records, one batch in flight (78 records/s): the transaction commit 49 % of the time, the
prefetch (searches, reads) 30 %, deciding and staging 19 %. Batches of 100 with 3 in flight: no gain.

Staged run 2026-11-25 (``--stages 10000,100000 --samples 200``, fresh HAPI 8.8.0 on PostgreSQL 15, -Xmx3g,
batches of 50, 2 in flight), 2 cores shared with another benchmark, a CI test run and its HAPIs (load average
8-14): plain creates 157 records/s in the untimed warm-up round, 215 at the start, 832 at the end (HAPI
still warming up after 2000 creates: the start figure is not a steady state). Stage 1: bulk 48.8 records/s
(23 % of plain at start, 6 % of plain at end; 9175 no_match, 622 match, 200 potential, 3 row errors: the first
10k rows of a 100k population are mostly distinct people, unlike a 10k-only run), then single submissions
at 10k stored p50 54 ms, p95 108 ms, 16.2 records/s. Stage 2 did not finish in the time available: stopped
at 54,350 of 90,000 rows (about 64.5k stored) after 1483 s, 36.7 records/s on average (50-70 records/s
while the machine was quieter, 17-31 once the other runs started; contention and growth not separated);
30220 no_match, 19551 match, 4571 potential, 8 errors. Measured afterwards in a separate process on the same
HAPI, at ~64.5k stored: single submissions p50 46 ms, p95 108 ms (p95 growth 10k -> 64.5k: 1.00x), 17.9
records/s. Bulk overall 38.1 records/s (64,350 rows) = 18 % of plain at start, 4.6 % at end: the 30 %
target is not met. RSS at the stop: mediator process 389 MB (it also holds the 100k generated records),
HAPI 2021 MB (2148 MB after the end measurements). 100k stored still not reached on this machine.

100k reached 2026-11-26 (quiet machine, fresh HAPI 8.8.0 on PostgreSQL 15, -Xmx4g, tags INLINE, one
AuditEvent per transaction, rows grouped by blocking key): plain creates 594 records/s at start, 1282 at
the end; bulk 169 records/s for the first 10k (29 % of plain at start), 89.5 for the next 90k, 93.9 overall
(16 % / 7 %); single submissions p50 33 / p95 49 ms at 10k stored, p50 29 / p95 60 ms at 100.2k (p95 growth
1.22x); RSS mediator 505 MB (with the generated records), HAPI 1801 MB. Details: docs/scale.md.
With candidate searches no-store (same settings, fresh database): plain 575 / 1004 records/s; bulk 164.3
for the first 10k (29 %), 92.0 for the next 90k, 96.2 overall (17 % / 10 %); single p50 28 / p95 44 ms at
10k, p50 25 / p95 57 ms at 100.2k (1.30x); RSS mediator 503 MB, HAPI 1716 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp

from bench.population import generate_population
from mediator import bulk
from mediator.app import registry_in_process
from mediator.audit import Actor
from mediator.errors import RegistryError, UpstreamTimeout, UpstreamUnavailable
from mediator.registry import Submission
from mediator.settings import Settings


def rss_mb(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def hapi_pid(pid_file: str) -> str:
    return Path(pid_file).read_text().strip()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def records(n: int, seed: int) -> list[dict[str, Any]]:
    patients, _ = generate_population(max(1, n // 2), seed)
    while len(patients) < n:
        patients += generate_population(max(1, n // 2), seed + len(patients))[0]
    out = []
    for p in patients[:n]:
        p = {k: v for k, v in p.items() if k not in ("id", "meta")}
        out.append(p)
    return out


def valid_birth_date(value: str | None) -> bool:
    if value is None or len(value) < 10:
        return True
    try:
        date.fromisoformat(value[:10])
    except ValueError:
        return False
    return True


async def plain_creates(hapi: str, patients: list[dict[str, Any]], batch: int, concurrency: int) -> float:
    """HAPI's own throughput: transaction Bundles of plain Patient creates (a system of their own).

    Records whose birth date HAPI would reject (the generator's digit typos, e.g. 2016-04-31) are left out."""
    patients = [p for p in patients if valid_birth_date(p.get("birthDate"))]
    bundles = []
    for start in range(0, len(patients), batch):
        entries = []
        for p in patients[start : start + batch]:
            ids = [{**i, "system": "urn:bench-plain:" + i["system"]} for i in p.get("identifier", [])]
            entries.append(
                {"resource": {**p, "identifier": ids}, "request": {"method": "POST", "url": "Patient"}}
            )
        bundles.append({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    queue = list(bundles)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                async with session.post(hapi, json=body) as resp:
                    assert resp.status == 200, await resp.text()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(patients) / (time.perf_counter() - started)


async def bulk_stage(
    registry: Any, rows: list[dict[str, Any]], tmp: Path, name: str, batch: int, concurrency: int
) -> tuple[float, dict[str, int]]:
    path = tmp / f"{name}.ndjson"
    path.write_text("".join(json.dumps(p) + "\n" for p in rows))
    last = [time.perf_counter(), 0]

    def progress(state: bulk.JobState) -> None:  # a line about every 60 s, for long stages
        if time.perf_counter() - last[0] >= 60:
            rate = (state.rows_done - last[1]) / (time.perf_counter() - last[0])
            print(f"  {name}: {state.rows_done}/{len(rows)} rows, {rate:.1f} records/s lately")
            last[0], last[1] = time.perf_counter(), state.rows_done

    job = bulk.BulkJob(
        path,
        bulk.InProcess(registry, None),
        system=None,
        job_dir=tmp / "jobs",
        batch_size=batch,
        concurrency=concurrency,
        progress=progress,
    )
    started = time.perf_counter()
    state = await job.run()
    rate = len(rows) / (time.perf_counter() - started)
    path.unlink()
    return rate, state.counts


async def singles_stage(
    registry: Any, rows: list[dict[str, Any]], name: str, clients: int
) -> tuple[float, dict[str, int], list[float]]:
    """Load ``rows`` as single submissions (``Registry.submit``, one record per transaction) from ``clients``
    concurrent clients, each waiting for its answer before sending the next row: records/s, outcomes,
    latencies (ms). A refused row is counted as an error; HAPI down stops the stage."""
    actor = Actor(client_id=None, address="bench")
    counts: Counter[str] = Counter()
    latencies: list[float] = []
    todo = iter(rows)
    last = [time.perf_counter(), 0]

    async def client() -> None:
        for patient in todo:  # one shared iterator: each client takes the next row
            t = time.perf_counter()
            try:
                result = await registry.submit(Submission(patient=patient, actor=actor))
                counts[result.outcome] += 1
            except (UpstreamUnavailable, UpstreamTimeout):
                raise
            except RegistryError:
                counts["error"] += 1
            latencies.append((time.perf_counter() - t) * 1000)
            if time.perf_counter() - last[0] >= 60:  # a line about every 60 s
                rate = (len(latencies) - last[1]) / (time.perf_counter() - last[0])
                print(f"  {name}: {len(latencies)}/{len(rows)} rows, {rate:.1f} records/s lately")
                last[0], last[1] = time.perf_counter(), len(latencies)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return len(rows) / (time.perf_counter() - started), dict(counts), latencies


async def singles(registry: Any, samples: list[dict[str, Any]]) -> tuple[list[float], float]:
    actor = Actor(client_id=None, address="bench")
    latencies = []
    started = time.perf_counter()
    for p in samples:
        t = time.perf_counter()
        await registry.submit(Submission(patient=p, actor=actor))
        latencies.append((time.perf_counter() - t) * 1000)
    return latencies, len(samples) / (time.perf_counter() - started)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hapi", required=True)
    parser.add_argument("--hapi-pid", help="pid file of that HAPI, for its RSS")
    parser.add_argument("--stages", default="10000", help="stored sizes to measure at, e.g. 10000,100000")
    parser.add_argument("--records", type=int, help="one stage of this size (same as --stages N)")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--plain", type=int, default=2000)
    parser.add_argument("--plain-warmup", type=int, default=2000, help="untimed plain creates first")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--load",
        choices=("bulk", "singles"),
        default="bulk",
        help="load the stages through a bulk job (default) or as single submissions",
    )
    parser.add_argument("--clients", type=int, default=4, help="--load singles: concurrent clients")
    parser.add_argument(
        "--plain-hapi",
        help="a second, empty HAPI: load the same records there as plain creates first, stage by stage",
    )
    args = parser.parse_args()
    hapi = args.hapi.rstrip("/")
    stages = [args.records] if args.records else [int(s) for s in args.stages.split(",")]
    if stages != sorted(stages):
        parser.error("--stages must be increasing")

    t0 = time.perf_counter()
    population = records(stages[-1], args.seed)
    print(f"population: {len(population)} records generated in {time.perf_counter() - t0:.1f}s")

    def plain_label(n: int) -> str:
        return f"{n} Patients, transaction Bundles of {args.batch}, {args.concurrency} in flight"

    plain_stages: list[float] = []  # the second HAPI's plain-create rate per stage
    if args.plain_hapi:
        done, plain_records, plain_seconds = 0, 0, 0.0
        for i, size in enumerate(stages):
            kept = [p for p in population[done:size] if valid_birth_date(p.get("birthDate"))]
            rate = await plain_creates(args.plain_hapi.rstrip("/"), kept, args.batch, args.concurrency)
            plain_stages.append(rate)
            plain_records += len(kept)
            plain_seconds += len(kept) / rate
            print(
                f"second HAPI, plain creates of the same load, stage {i + 1}: {len(kept)} records at "
                f"{rate:.1f} records/s ({done} -> {size} rows; {size - done - len(kept)} with birth dates "
                f"HAPI refuses left out)"
            )
            done = size
        plain_load_rate = plain_records / plain_seconds
        print(f"second HAPI, plain creates of the same load overall: {plain_load_rate:.1f} records/s")

    if args.plain_warmup:
        warm = await plain_creates(
            hapi, records(args.plain_warmup, args.seed + 98), args.batch, args.concurrency
        )
        print(
            f"HAPI plain creates, warm-up (untimed round): {warm:.1f} records/s "
            f"({plain_label(args.plain_warmup)})"
        )
    plain_start = await plain_creates(hapi, records(args.plain, args.seed + 99), args.batch, args.concurrency)
    print(f"HAPI plain creates at start: {plain_start:.1f} records/s ({plain_label(args.plain)})")

    settings = Settings(hapi_base_url=hapi, hapi_timeout_s=120.0)
    results: list[tuple[int, float, float, float]] = []  # stored, p50, p95, single rate
    loaded, stored, bulk_seconds = 0, 0, 0.0
    with tempfile.TemporaryDirectory() as tmp:
        async with registry_in_process(settings) as registry:
            for i, size in enumerate(stages):
                rows = population[loaded:size]
                if args.load == "singles":
                    name = f"stage{i + 1}"
                    rate, counts, stage_ms = await singles_stage(registry, rows, name, args.clients)
                    how = (
                        f"single submissions, {args.clients} clients; latency p50 "
                        f"{statistics.median(stage_ms):.0f} ms, p95 {pct(stage_ms, 0.95):.0f} ms"
                    )
                else:
                    rate, counts = await bulk_stage(
                        registry, rows, Path(tmp), f"stage{i + 1}", args.batch, args.concurrency
                    )
                    how = f"batches of {args.batch}, {args.concurrency} in flight"
                bulk_seconds += len(rows) / rate
                loaded = size
                stored += len(rows)
                same_load = f", {rate / plain_stages[i]:.1%} of the same load's" if plain_stages else ""
                print(
                    f"{args.load} load stage {i + 1}: {len(rows)} records at {rate:.1f} records/s ({how}) = "
                    f"{rate / plain_start:.1%} of plain creates at start{same_load}; {counts}"
                )
                samples = records(args.samples, args.seed + 1_000_003 + i)
                latencies, single_rate = await singles(registry, samples)
                print(
                    f"single submissions at {stored} stored: p50 {statistics.median(latencies):.0f} ms, "
                    f"p95 {pct(latencies, 0.95):.0f} ms, {single_rate:.1f} records/s one at a time "
                    f"({len(samples)} samples)"
                )
                results.append((stored, statistics.median(latencies), pct(latencies, 0.95), single_rate))
                stored += len(samples)

            bulk_rate = loaded / bulk_seconds
            plain_end = await plain_creates(
                hapi, records(args.plain, args.seed + 97), args.batch, args.concurrency
            )
            print(f"HAPI plain creates at end: {plain_end:.1f} records/s ({plain_label(args.plain)})")
            print(
                f"{args.load} load overall: {bulk_rate:.1f} records/s ({loaded} records); ratio to plain: "
                f"{bulk_rate / plain_start:.1%} of start, {bulk_rate / plain_end:.1%} of end"
                + (f", {bulk_rate / plain_load_rate:.1%} of the same load's" if plain_stages else "")
            )
            if len(results) > 1:
                (n0, _, p0, _), (n1, _, p1, _) = results[0], results[-1]
                print(
                    f"single-submission p95 growth {n0} -> {n1} stored: {p1 / p0:.2f}x "
                    f"({p0:.0f} -> {p1:.0f} ms)"
                )
            print(f"RSS: mediator (this process) {rss_mb():.0f} MB", end="")
            if args.hapi_pid:
                pid = hapi_pid(args.hapi_pid)
                print(f", HAPI {rss_mb(pid):.0f} MB")
            else:
                print()


if __name__ == "__main__":
    import sys

    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    asyncio.run(main())
