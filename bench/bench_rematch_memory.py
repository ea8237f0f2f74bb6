"""Memory of the re-match dry run: what ``rematch.load_snapshot`` holds per stored source record, and the peak
while planning (tracemalloc, Python allocations only).

    python -m bench.bench_rematch_memory --hapi http://127.0.0.1:8291/fhir --load 3000

``--load N`` first decides N generated records (``bench/population.py``) through the registry in this
process (bulk path), so the store holds realistic source records; without it the store's records are used.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import tempfile
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

from bench.bench_scale import bulk_stage, records
from mediator import rematch
from mediator.app import registry_in_process
from mediator.settings import Settings


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hapi", required=True)
    parser.add_argument("--load", type=int, default=0, help="first decide this many generated records")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    settings = replace(Settings.from_env(), hapi_base_url=args.hapi.rstrip("/"), hapi_timeout_s=120.0)
    async with registry_in_process(settings) as registry:
        if args.load:
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                _rate, counts = await bulk_stage(
                    registry, records(args.load, args.seed), Path(tmp), "m", 50, 2
                )
                print(f"loaded {args.load} records in {time.perf_counter() - started:.0f}s: {counts}")
        cfg = registry.config.current
        gc.collect()
        tracemalloc.start()
        started = time.perf_counter()
        snapshot = await rematch.load_snapshot(registry.hapi, cfg.rules)
        loaded = time.perf_counter() - started
        gc.collect()
        held, load_peak = tracemalloc.get_traced_memory()
        n = max(1, len(snapshot.sources))
        tracemalloc.reset_peak()
        started = time.perf_counter()
        the_plan = rematch.plan(snapshot, cfg)
        planned = time.perf_counter() - started
        _, plan_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(
            f"{len(snapshot.sources)} source records, {len(snapshot.goldens)} golden records; "
            f"snapshot held {held / 1e6:.1f} MB = {held / n:.0f} B/record "
            f"(peak while loading {load_peak / 1e6:.1f} MB); "
            f"peak while planning {plan_peak / 1e6:.1f} MB = {plan_peak / n:.0f} B/record; "
            f"load {loaded:.1f}s, plan {planned:.1f}s (under tracemalloc); "
            f"{len(the_plan.changes)} changes"
        )
        digest = hashlib.sha256(json.dumps(the_plan.summary(), sort_keys=True, default=str).encode())
        print(f"plan summary sha256 {digest.hexdigest()[:16]} (identical plans, identical digests)")


if __name__ == "__main__":
    asyncio.run(main())
