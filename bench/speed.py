"""Speed benchmark (prints figures; not a test).

    python -m bench.speed [--sizes 10000,100000] [--queries 1000]

- bulk comparison throughput: field comparisons per second (pairs x fields) in the vectorised comparator
  path used by ``dedupe``;
- ``dedupe`` wall time for populations of the given sizes (records), blocking + comparison + clustering;
- one-record decision latency: blocking keys of the incoming record looked up in an in-memory index of the
  largest population (key -> records), then ``matching.decide`` on those candidates, as the mediator does.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

import matching
from matching.dedupe import candidate_pairs, compare_all, dedupe
from matching.scoring import Table, extract

from .population import generate_population

RECORDS_PER_PERSON = 2.4


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--rules", default="rules/default.yaml")
    ap.add_argument("--latency-only", action="store_true", help="skip dedupe and bulk timings")
    args = ap.parse_args(argv)
    rules = matching.load_rules(args.rules)
    sizes = [int(x) for x in args.sizes.split(",")]
    print(f"cpus: {os.cpu_count()}, rules: {args.rules} ({len(rules.fields)} fields)")
    population = None
    for size in sizes:
        t0 = time.perf_counter()
        patients, _ = generate_population(int(size / RECORDS_PER_PERSON), seed=size)
        gen = time.perf_counter() - t0
        population = patients
        if args.latency_only:
            continue
        t0 = time.perf_counter()
        result = dedupe(patients, rules)
        wall = time.perf_counter() - t0
        print(
            f"dedupe {len(patients):>7,} records: {wall:6.1f} s wall  ({len(result.left):,} candidate pairs, "
            f"{len(set(result.labels.tolist())):,} clusters; generating the population took {gen:.1f} s)"
        )
        population = patients

    assert population is not None
    keys = [matching.keys_of(p, rules) for p in population]
    if not args.latency_only:
        # bulk comparison throughput on the largest population's candidate pairs
        table = Table.from_patients(population, rules)
        left, right, _ = candidate_pairs(
            [k.index for k in keys], rules.max_block_size, [k.search for k in keys]
        )
        t0 = time.perf_counter()
        compare_all(table, left, right, rules, None)
        sec = time.perf_counter() - t0
        n_cmp = len(left) * len(rules.fields)
        print(
            f"bulk comparison: {len(left):,} pairs x {len(rules.fields)} fields = {n_cmp:,} field "
            "comparisons "
            f"in {sec:.2f} s -> {n_cmp / sec:,.0f} field comparisons/s ({len(left) / sec:,.0f} pairs/s)"
        )

    # one-record decision latency against an in-memory index. Stored records carry meta.versionId as HAPI's
    # do, which lets matching cache their normalised values between decisions.
    population = [dict(p, meta={"versionId": "1"}) for p in population]
    index: dict[str, list[int]] = defaultdict(list)
    for i, ks in enumerate(keys):
        for k in ks.index:
            index[k].append(i)
    rng = np.random.default_rng(1)
    queries = rng.choice(len(population), size=min(args.queries, len(population)), replace=False).tolist()
    _latency("cold (candidates' normalised values not cached yet)", population, index, queries, rules)
    for p in population:  # steady state: every stored record has been a candidate before
        extract(p, rules)
    _latency(
        "warm (stored records' normalised values cached by id + versionId)", population, index, queries, rules
    )
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
    return 0


def _latency(
    label: str,
    population: list[dict[str, Any]],
    index: dict[str, list[int]],
    queries: list[int],
    rules: matching.Rules,
) -> None:
    lat, lat_keys, n_cand, cpu = [], [], [], []
    for q in queries:
        record = {k: v for k, v in population[q].items() if k != "meta"} | {"id": "incoming"}
        c0 = time.process_time()
        t0 = time.perf_counter()
        cand_idx = sorted({i for k in matching.keys_of(record, rules).search for i in index.get(k, ())})
        t1 = time.perf_counter()
        cands = [matching.Candidate(population[i]["id"], f"g{i}", population[i]) for i in cand_idx]
        matching.decide(record, cands, rules)
        t2 = time.perf_counter()
        cpu.append((time.process_time() - c0) * 1000)
        lat.append((t2 - t0) * 1000)
        lat_keys.append((t1 - t0) * 1000)
        n_cand.append(len(cands))
    lat.sort()
    cpu.sort()
    print(
        f"one-record decision, {label}, index of {len(population):,} records, {len(queries)} queries: "
        f"p50 {statistics.median(lat):.2f} ms, p95 {lat[int(0.95 * len(lat))]:.2f} ms, "
        f"p99 {lat[int(0.99 * len(lat))]:.2f} ms wall; CPU time p50 {statistics.median(cpu):.2f} ms, "
        f"p95 {cpu[int(0.95 * len(cpu))]:.2f} ms (key lookup p50 {statistics.median(lat_keys):.3f} ms; "
        f"candidates p50 {statistics.median(n_cand):.0f}, max {max(n_cand)})"
    )


if __name__ == "__main__":
    sys.exit(main())
