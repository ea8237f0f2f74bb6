"""Single-submission latency of the registry against the real HAPI server, and the raw HAPI baseline.

    .venv/bin/python -m bench.bench_registry [--sizes 1000,10000] [--samples 200] [--hapi URL]

Loads the population generator's records through the mediator until the store holds each size, then
times ``--samples`` single submissions (new identifiers of people already known and of new people), and
in the same run times a plain HAPI "search by identifier + create" of the same Patients. Prints p50/p95
and the ratio. Without ``--hapi`` it starts its own HAPI (port 8093, data in var/bench-hapi, wiped).
Figures only; nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import statistics
import subprocess
import time
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from bench import hapi_instance
from bench.population import generate_population
from mediator.app import create_app
from mediator.errors import RegistryError
from mediator.settings import Settings
from mediator.validation import validate_patient


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_hapi(port: str) -> dict[str, str]:
    env = hapi_instance.hapi_env("bench-hapi", port)
    hapi_instance.start(env, fresh=True)
    return env


async def load(client: TestClient, patients: list[dict[str, Any]], concurrency: int = 4) -> tuple[float, int]:
    """Submit the records; returns records/s and how many the registry refused with a 4xx (the generator
    makes some invalid on purpose, e.g. a day-month swap giving month 13)."""
    queue = list(patients)
    refused = 0
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal refused
        while queue:
            p = queue.pop()
            resp = await client.post("/fhir/Patient", json=p)
            if 400 <= resp.status < 500:
                refused += 1
            elif resp.status not in (200, 201):
                raise RuntimeError(f"load failed: HTTP {resp.status} {await resp.text()}")
            await resp.release()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(patients) / (time.perf_counter() - started), refused


async def time_registry(client: TestClient, samples: list[dict[str, Any]]) -> list[float]:
    out = []
    for p in samples:
        t0 = time.perf_counter()
        resp = await client.post("/fhir/Patient", json=p)
        await resp.read()
        if resp.status in (200, 201):
            out.append((time.perf_counter() - t0) * 1000)
    return out


async def time_raw_hapi(
    session: aiohttp.ClientSession, hapi: str, samples: list[dict[str, Any]]
) -> list[float]:
    out = []
    headers = {"Content-Type": "application/fhir+json"}
    for p in samples:
        ident = p["identifier"][0]
        raw = copy.deepcopy(p)
        raw["identifier"][0]["value"] = "raw-" + ident["value"]
        t0 = time.perf_counter()
        async with session.get(
            f"{hapi}/Patient", params={"identifier": f"{ident['system']}|raw-{ident['value']}"}
        ) as r:
            await r.read()
        async with session.post(f"{hapi}/Patient", json=raw, headers=headers) as r:
            await r.read()
            assert r.status == 201, r.status
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _valid(patient: dict[str, Any]) -> bool:
    try:
        validate_patient(copy.deepcopy(patient))
    except RegistryError:
        return False
    return True


async def main(sizes: list[int], n_samples: int, hapi: str) -> None:
    biggest = max(sizes)
    records, _truth = generate_population(int(biggest / 1.6) + n_samples * len(sizes), seed=7)
    samples_pool = [p for p in records[biggest:] if _valid(p)]  # same valid Patients for both timings
    records = records[:biggest]
    print(f"population: {len(records)} records to store, {len(samples_pool)} for timing")
    settings = Settings(hapi_base_url=hapi, hapi_timeout_s=60)
    async with TestClient(TestServer(create_app(settings))) as client, aiohttp.ClientSession() as session:
        stored = 0
        for i, size in enumerate(sorted(sizes)):
            rate, refused = await load(client, records[stored:size])
            print(
                f"loaded {size - stored} records through the registry at {rate:.1f} records/s "
                f"({refused} refused with 4xx)"
            )
            stored = size
            samples = samples_pool[i * n_samples : (i + 1) * n_samples]
            reg = await time_registry(client, samples)
            raw = await time_raw_hapi(session, hapi, samples)
            print(
                f"stored={size:>6}  registry p50={pct(reg, 0.5):6.1f} ms p95={pct(reg, 0.95):6.1f} ms  "
                f"raw HAPI search+create p50={pct(raw, 0.5):6.1f} ms p95={pct(raw, 0.95):6.1f} ms  "
                f"ratio p50={pct(reg, 0.5) / pct(raw, 0.5):.2f} p95={pct(reg, 0.95) / pct(raw, 0.95):.2f}  "
                f"(mean {statistics.mean(reg):.1f} vs {statistics.mean(raw):.1f} ms, n={len(reg)})"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--hapi", default=None)
    args = parser.parse_args()
    env = None
    url = args.hapi
    if url is None:
        env = start_hapi("8093")
        url = "http://127.0.0.1:8093/fhir"
    try:
        asyncio.run(main([int(s) for s in args.sizes.split(",")], args.samples, url))
    finally:
        if env is not None:
            rss = subprocess.run(
                ["bash", "-c", f"ps -o rss= -p $(cat {env['HAPI_PID_FILE']})"], capture_output=True, text=True
            ).stdout.strip()
            print(f"HAPI RSS at the end: {int(rss or 0) / 1024:.0f} MiB")
            hapi_instance.stop(env)
