"""How a bulk window is cut into batches (pure planning; no HAPI)."""

from __future__ import annotations

import itertools

from mediator.bulk import Row, plan_batches


def window(records: list[tuple[str, list[str]]]) -> tuple[list[Row], dict[int, tuple[str | None, list[str]]]]:
    rows = [Row(n, {"resourceType": "Patient"}) for n in range(1, len(records) + 1)]
    return rows, {n: rec for n, rec in enumerate(records, start=1)}


def test_repeated_records_keep_file_order_without_cutting_batches_short() -> None:
    # 200 rows; every 10th row repeats the record of the row before it
    records = []
    for n in range(200):
        record = f"r{n - 1}" if n % 10 == 9 else f"r{n}"
        records.append((record, [f"nmd:{n % 7}", f"dob:{n % 13}"]))
    rows, located = window(records)
    batches = plan_batches(rows, 50, located)
    assert sorted(r.number for b in batches for r in b) == list(range(1, 201))
    # only the layer of second rows starts a new batch: 50, 50, 50, 30 | 20 (each repeat cutting a batch
    # short gave one batch per repeat)
    assert [len(b) for b in batches] == [50, 50, 50, 30, 20]
    position = {r.number: i for i, b in enumerate(batches) for r in b}
    for n, (record, _) in located.items():
        later = [m for m, (other, _) in located.items() if other == record and m > n]
        assert all(position[m] > position[n] for m in later)  # a record's rows in file order, apart


def test_batches_in_flight_together_share_no_lock_key_when_avoidable() -> None:
    # 8 groups of 25 rows; groups 0-2 share the key "hot" and come first in the plan (most frequent key)
    records = []
    for g, n in itertools.product(range(8), range(25)):
        keys = [f"grp:{g}", f"row:{g}:{n}"] + (["hot"] if g < 3 else [])
        records.append((f"r{g}-{n}", keys))
    rows, located = window(records)

    def keys_of(batch: list[Row]) -> set[str]:
        return {k for r in batch for k in located[r.number][1]}

    for apart in (1, 2):
        batches = plan_batches(rows, 25, located, apart=apart)
        assert len(batches) == 8
        for i, b in enumerate(batches):
            for j in range(max(0, i - apart), i):
                assert not keys_of(b) & keys_of(batches[j]), (apart, i, j)
    unspread = plan_batches(rows, 25, located, apart=0)
    assert any(keys_of(a) & keys_of(b) for a, b in itertools.pairwise(unspread))  # the test can fail


def test_records_with_many_rows_keep_file_order_whatever_the_spreading() -> None:
    # 150 rows over 60 records (some with 4-5 rows), keys shared often: spreading must never move a
    # record's later row before an earlier one (a third row once overtook the second)
    import random

    rnd = random.Random(1)
    for _ in range(50):
        records = [
            (f"r{rnd.randrange(60)}", [f"k{rnd.randrange(20)}", f"j{rnd.randrange(30)}"]) for _ in range(150)
        ]
        rows, located = window(records)
        for apart in (1, 2, 3):
            position = {
                r.number: i for i, b in enumerate(plan_batches(rows, 10, located, apart=apart)) for r in b
            }
            for n, (record, _) in located.items():
                later = [m for m, (other, _) in located.items() if other == record and m > n]
                assert all(position[m] > position[n] for m in later), (apart, record)
