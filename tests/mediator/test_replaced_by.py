"""The one walk along ``replaced-by`` links (records.follow_replaced_by): every end case, sync and async."""

from __future__ import annotations

import asyncio
import itertools

from mediator import records

CRUIDS = "urn:test:cruid"


def golden(gid: str, successor: str | None = None) -> records.Resource:
    out = records.new_golden(gid, CRUIDS)
    if successor:
        out["active"] = False
        out["link"] = [{"other": {"reference": records.ref(successor)}, "type": "replaced-by"}]
    return out


def source(sid: str) -> records.Resource:
    return {
        "resourceType": "Patient",
        "id": sid,
        "meta": {"tag": [{"system": records.RECORD_TYPE_SYSTEM, "code": "source"}]},
    }


def store(*resources: records.Resource) -> dict[str, records.Resource]:
    return {r["id"]: r for r in resources}


def walk_both(db: dict[str, records.Resource], start: str | records.Resource, **kw: int) -> records.Walk:
    """Both drivers answer the same and read the same ids in the same order."""
    sync_reads: list[str] = []
    async_reads: list[str] = []

    def lookup(rid: str) -> records.Resource | None:
        sync_reads.append(rid)
        return db.get(rid)

    async def read(rid: str) -> records.Resource | None:
        async_reads.append(rid)
        return db.get(rid)

    sync = records.follow_replaced_by(lookup, start, **kw)
    asynchronous = asyncio.run(records.follow_replaced_by_async(read, start, **kw))
    assert sync == asynchronous and sync_reads == async_reads
    return sync


def test_a_live_golden_record_is_its_own_end():
    walk = walk_both(store(golden("cr-a")), "cr-a")
    assert walk.end == records.LIVE and walk.live is not None and walk.live["id"] == "cr-a"


def test_a_chain_of_merges_ends_on_the_survivor():
    db = store(golden("cr-a", "cr-b"), golden("cr-b", "cr-c"), golden("cr-c"))
    walk = walk_both(db, "cr-a")
    assert walk.end == records.LIVE and walk.live == db["cr-c"]


def test_a_record_already_read_is_not_read_again():
    db = store(golden("cr-a", "cr-b"), golden("cr-b"))
    reads: list[str] = []

    def lookup(rid: str) -> records.Resource | None:
        reads.append(rid)
        return db.get(rid)

    assert records.follow_replaced_by(lookup, db["cr-a"]).live == db["cr-b"]
    assert reads == ["cr-b"]


def test_a_missing_start_or_link_ends_absent_with_the_last_record_that_exists():
    assert walk_both({}, "cr-x") == records.Walk(records.ABSENT, None, missing="cr-x")
    db = store(golden("cr-a", "cr-b"), golden("cr-b", "cr-gone"))
    walk = walk_both(db, "cr-a")
    assert walk == records.Walk(records.ABSENT, db["cr-b"], missing="cr-gone")
    assert walk.live is None


def test_a_record_that_is_not_golden_ends_the_walk():
    db = store(golden("cr-a", "src-1"), source("src-1"))
    walk = walk_both(db, "cr-a")
    assert walk.end == records.NOT_GOLDEN and walk.last == db["src-1"] and walk.live is None
    assert walk_both(db, "src-1").end == records.NOT_GOLDEN


def test_a_cycle_ends_at_the_link_that_closes_it():
    db = store(golden("cr-a", "cr-b"), golden("cr-b", "cr-c"), golden("cr-c", "cr-a"))
    walk = walk_both(db, "cr-a")
    assert walk.end == records.CYCLE and walk.last == db["cr-c"] and walk.live is None
    self_loop = store(golden("cr-s", "cr-s"))
    assert walk_both(self_loop, "cr-s") == records.Walk(records.CYCLE, self_loop["cr-s"])


def test_a_walk_reads_at_most_max_records():
    ids = [f"cr-{i:02d}" for i in range(12)]
    db = store(*(golden(a, b) for a, b in itertools.pairwise(ids)), golden(ids[-1]))
    assert walk_both(db, ids[2]).live == db[ids[-1]]  # 10 records: the survivor is the 10th
    walk = walk_both(db, ids[1])  # the 10th record still has a link
    assert walk.end == records.TOO_LONG and walk.last == db[ids[10]] and walk.live is None
    assert walk_both(db, ids[0], max_records=12).live == db[ids[-1]]
