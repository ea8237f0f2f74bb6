"""Curation figures (not a test): ``python -m tests.admin.bench_curation [HAPI base URL] [open Tasks]``.

Writes N (default 1,000) open potential-match Tasks and two golden records with 10 source records each
straight into HAPI, then times listing the queue (sorted by score, paged by HAPI) and the merge of the two
golden records.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid

import aiohttp

from mediator import records
from mediator.admin import queries, score_index
from mediator.admin.curation import SAME_PERSON, Admin, Curation
from mediator.fhir_client import HapiClient
from mediator.review import POTENTIAL_MATCH, review_task
from mediator.settings import Settings


async def main(base: str, n: int = 1000) -> None:
    cruid_system = Settings().cruid_system
    async with aiohttp.ClientSession() as session:
        hapi = HapiClient(session, base, 120, 5)
        run = uuid.uuid4().hex[:8]
        system = f"http://bench-{run}.example.org/mrn"
        t0 = time.perf_counter()
        index = score_index.ScoreIndex()
        rewritten = await index.install(hapi)
        print(
            f"review-score search parameter installed: {time.perf_counter() - t0:.3f} s "
            f"({rewritten} reindexed)"
        )
        # n open potential matches, each with a real source record
        t0 = time.perf_counter()
        for chunk in range(n // 100):
            entries = []
            for i in range(chunk * 100, chunk * 100 + 100):
                sid = records.source_record_id(system, str(i))
                gid, other = records.new_golden_id(), records.new_golden_id()
                src = records.build_source_record(
                    {"identifier": [{"system": system, "value": str(i)}], "name": [{"family": f"B{i}"}]},
                    sid,
                    client_id=None,
                    golden_id=gid,
                    block_keys=[],
                )
                task = review_task(
                    kind=POTENTIAL_MATCH,
                    source_id=sid,
                    golden_id=gid,
                    other_golden_id=other,
                    score=random.uniform(0, 6),
                    rule="bench",
                )
                golden = records.with_source(records.new_golden(gid, cruid_system), sid)
                candidate = records.new_golden(other, cruid_system)
                for r in (golden, candidate, src, task):
                    entries.append(
                        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                    )
            await hapi.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        print(f"wrote {n:,} open potential matches: {time.perf_counter() - t0:.1f} s")
        assert index.is_ready()
        for label, f in (
            (f"{n:,} open (filtered by facility), first page of 50", queries.QueueFilter(system=system)),
            (
                f"{n:,} open (filtered by facility), page 10 of 50",
                queries.QueueFilter(system=system, page=10),
            ),
            ("all open potential matches, first page of 50", queries.QueueFilter()),
        ):
            for attempt in range(3):
                t0 = time.perf_counter()
                page = await queries.queue(hapi, f, index)
                print(
                    f"queue, {label}: {time.perf_counter() - t0:.3f} s "
                    f"(run {attempt + 1}, total {page['total']})"
                )
            scores = [i["score"] for i in page["items"]]
            assert scores == sorted(scores, reverse=True)
        t0 = time.perf_counter()
        total, _ = await queries._queue_in_memory(
            hapi,
            queries.QueueFilter(system=system),
            queries._queue_params(queries.QueueFilter(system=system)),
        )
        print(f"for comparison, the in-memory sort of {total:,} (old path): {time.perf_counter() - t0:.3f} s")

        # two golden records with 10 source records each, and a review Task between them
        goldens = [records.new_golden(records.new_golden_id(), cruid_system) for _ in range(2)]
        entries = []
        first_source = ""
        for g, golden in enumerate(goldens):
            for i in range(10):
                sid = records.source_record_id(system, f"m{g}-{i}")
                first_source = first_source or sid
                src = records.build_source_record(
                    {"identifier": [{"system": system, "value": f"m{g}-{i}"}]},
                    sid,
                    client_id=None,
                    golden_id=golden["id"],
                    block_keys=[],
                )
                goldens[g] = records.with_source(goldens[g], sid)
                entries.append({"resource": src, "request": {"method": "PUT", "url": f"Patient/{sid}"}})
        for golden in goldens:
            entries.append(
                {"resource": golden, "request": {"method": "PUT", "url": f"Patient/{golden['id']}"}}
            )
        task = review_task(
            kind=POTENTIAL_MATCH,
            source_id=first_source,
            golden_id=goldens[0]["id"],
            other_golden_id=goldens[1]["id"],
            score=3.0,
            rule="bench",
        )
        entries.append({"resource": task, "request": {"method": "PUT", "url": f"Task/{task['id']}"}})
        await hapi.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        t0 = time.perf_counter()
        out = await Curation(hapi, cruid_system).decide(task["id"], SAME_PERSON, Admin("bench"))
        print(
            f"merge of two golden records with 10 source records each: {time.perf_counter() - t0:.3f} s "
            f"({out.to_dict()['golden']})"
        )


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8092/fhir",
            int(sys.argv[2]) if len(sys.argv) > 2 else 1000,
        )
    )
