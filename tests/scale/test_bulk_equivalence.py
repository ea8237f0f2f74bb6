"""Bulk load and single submissions give identical decisions on the same data, submitted in the same order:
one after the other, and all at once (sharing transactions, mediator/registry.py ``Registry.submit``).

Each path needs a store of its own (the records of one run would be candidates of the other), so this test
starts three fresh HAPI servers (H2, temporary folders, free ports) side by side — slow, but nothing shared.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bench import hapi_instance
from bench.population import generate_population
from mediator import bulk
from mediator import registry as registry_module
from mediator.app import registry_in_process
from mediator.audit import Actor
from mediator.registry import Submission
from tests.conftest import REPO, app_settings
from tests.scale.conftest import free_port


def _hapi_env(tmp: Path, port: int) -> dict[str, str]:
    return hapi_instance.hapi_env(f"hapi-{port}", port, folder=tmp, java_opts="-Xmx768m")


@pytest.fixture(scope="module")
def fresh_hapis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    tmp = tmp_path_factory.mktemp("hapis")
    envs = [_hapi_env(tmp, free_port()) for _ in range(3)]
    start = [str(REPO / "scripts" / "hapi-start")]
    try:
        with ThreadPoolExecutor(3) as pool:
            for done in pool.map(lambda env: subprocess.run(start, env=env, check=False), envs):
                assert done.returncode == 0, "a HAPI did not start; see its log in the tmp folder"
        yield [f"http://127.0.0.1:{env['HAPI_PORT']}/fhir" for env in envs]
    finally:
        for env in envs:
            hapi_instance.stop(env)


def _population(n_people: int, seed: int) -> list[dict[str, Any]]:
    patients, _ = generate_population(n_people, seed)
    return [{k: v for k, v in p.items() if k not in ("id", "meta")} for p in patients]


def _key(p: dict[str, Any]) -> str:
    own = next(i for i in p["identifier"] if i["system"] != "http://example.org/national-id")
    return f"{own['system']}|{own['value']}"


@pytest.mark.timeout(900)  # three HAPIs start first
async def test_bulk_and_single_submissions_decide_alike(
    fresh_hapis: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """And in the bulk load each entry of a batch is scored once, in the batch's one comparison: also
    against the records earlier entries of its batch stage (they become its candidates). Submitted all at
    once, single submissions share transactions (one in flight, so they are decided in the order sent)
    and decide alike too."""
    population = _population(60, 3)
    assert len(population) > 100
    path = tmp_path / "population.ndjson"
    path.write_text("".join(json.dumps(p) + "\n" for p in population))

    bulk_url, single_url, shared_url = fresh_hapis
    reused: list[tuple[int, int, int]] = []  # per batch entry: candidates, known scores, known as peers
    known_scores = registry_module._Foreseen.known_scores

    def spy(self: Any, candidates: list[Any], rules: Any) -> dict[str, Any]:
        known = known_scores(self, candidates, rules)
        before = {c.id for c in self.candidates}
        reused.append((len(candidates), len(known), sum(1 for c in known if c not in before)))
        return known

    monkeypatch.setattr(registry_module._Foreseen, "known_scores", spy)
    async with registry_in_process(
        app_settings(tmp_path / "bulk", hapi_base_url=bulk_url, hapi_timeout_s=60)
    ) as registry:
        job = bulk.BulkJob(
            path,
            bulk.InProcess(registry, None),
            system=None,
            job_dir=tmp_path / "jobs",
            batch_size=25,
            concurrency=1,  # concurrent batches of overlapping blocks may interleave in either order
        )
        state = await job.run()
        assert state.finished and not state.counts.get("error"), state.counts
        with job.report_path.open() as f:
            by_row = {int(r["row"]): r for r in csv.DictReader(f)}
    monkeypatch.undo()
    assert all(n == known for n, known, _ in reused), "a batch entry was scored again"
    assert sum(peers for _, _, peers in reused) > 0, "no entry had a record of its own batch as a candidate"
    bulk_decisions = [(by_row[n + 1]["outcome"], by_row[n + 1]["golden_id"]) for n in range(len(population))]
    # the bulk job regroups rows by blocking key: single submissions go in the order it decided them
    order = sorted(range(len(population)), key=lambda n: int(by_row[n + 1]["seq"]))
    assert order != list(range(len(population))), "the rows were regrouped"

    single_by_row: dict[int, tuple[str, str]] = {}
    actor = Actor(client_id=None, address="test")
    async with registry_in_process(
        app_settings(tmp_path / "single", hapi_base_url=single_url, hapi_timeout_s=60)
    ) as registry:
        for n in order:
            result = await registry.submit(Submission(patient=population[n], actor=actor))
            single_by_row[n] = (result.outcome, result.golden_id)
    single_decisions = [single_by_row[n] for n in range(len(population))]

    shared_by_row: dict[int, tuple[str, str]] = {}
    async with registry_in_process(
        # one transaction in flight: the waiting ones are decided in the order sent
        app_settings(tmp_path / "shared", hapi_base_url=shared_url, hapi_timeout_s=60, shared_writes=1)
    ) as registry:
        assert registry.metrics is not None
        before = registry.metrics.store_calls("transaction")
        results = await asyncio.gather(
            *(registry.submit(Submission(patient=population[n], actor=actor)) for n in order)
        )
        shared_by_row = {n: (r.outcome, r.golden_id) for n, r in zip(order, results, strict=True)}
        transactions = registry.metrics.store_calls("transaction") - before
    assert 0 < transactions < len(population) / 5, transactions
    shared_decisions = [shared_by_row[n] for n in range(len(population))]

    assert [o for o, _ in bulk_decisions] == [o for o, _ in single_decisions]
    assert [o for o, _ in shared_decisions] == [o for o, _ in single_decisions]
    assert {o for o, _ in bulk_decisions} >= {"match", "no_match"}  # the population exercises both

    def partition(decisions: list[tuple[str, str]]) -> set[frozenset[str]]:
        groups: dict[str, set[str]] = {}
        for p, (_, golden) in zip(population, decisions, strict=True):
            groups.setdefault(golden, set()).add(_key(p))
        return {frozenset(g) for g in groups.values()}

    # golden ids are random uuids: compare who is grouped with whom
    assert partition(bulk_decisions) == partition(single_decisions) == partition(shared_decisions)
