"""A bulk batch's candidate searches, prefetched in a few ``_tag`` searches, answer exactly as one search per
key would — also when a grouped search is too large and has to be split down to single keys."""

from __future__ import annotations

import aiohttp

from mediator import records
from mediator.fhir_client import HapiClient
from mediator.unit_of_work import UnitOfWork
from tests.conftest import unique_surname
from tests.hapi_helpers import get_now


async def test_split_prefetch_answers_like_one_search_per_key(hapi_url):
    family = unique_surname()
    big, small = f"test:{family}:big", f"test:{family}:small"
    lonely, absent = f"test:{family}:lonely", f"test:{family}:absent"
    async with aiohttp.ClientSession() as session:
        hapi = HapiClient(session, hapi_url, 30, 5)
        writer = UnitOfWork(hapi)
        for n in range(8):  # 6 records in the big block, 2 of them also in the small one, 1 alone elsewhere
            keys = [big] if n < 6 else []
            keys += [small] if n in (4, 5) else []
            keys += [lonely] if n == 7 else []
            writer.put(
                records.build_source_record(
                    {"resourceType": "Patient", "name": [{"family": family}]},
                    f"src-test-{family.lower()}-{n}",
                    client_id=None,
                    golden_id="unused",
                    block_keys=keys,
                )
                | {"link": []}
            )
        await writer.commit()

        limit = 4  # the big block (6) is over the candidate limit
        key_sets = [[big, small], [small, lonely, absent]]
        one_by_one = UnitOfWork(hapi)
        expected = {k: await one_by_one.find_sources([k], limit) for k in (big, small, lonely, absent)}

        prefetched = UnitOfWork(hapi)
        searches = await prefetched.prefetch_blocks(key_sets, limit, chunk=4, cap=5)
        assert searches > 1, "the grouped search reached the cap and was split"
        for key, answer in expected.items():
            got = await prefetched.find_sources([key], limit)
            assert sorted(r["id"] for r in got) == sorted(r["id"] for r in answer), key
        assert await prefetched.find_sources([big], limit) == [], "an oversized block is skipped either way"
        assert len(expected[small]) == 2 and len(expected[lonely]) == 1 and expected[absent] == []

        whole = UnitOfWork(hapi)
        assert await whole.prefetch_blocks(key_sets, limit, chunk=4, cap=1000) == 1, "one search when small"


async def test_staged_records_are_found_under_their_staged_keys_only(hapi_url):
    family = unique_surname()
    one, two = f"test:{family}:one", f"test:{family}:two"

    def source(n: int, keys: list[str]) -> dict:
        patient = {"resourceType": "Patient", "name": [{"family": family}]}
        record_id = f"src-test-{family.lower()}-{n}"
        return records.build_source_record(
            patient, record_id, client_id=None, golden_id="unused", block_keys=keys
        ) | {"link": []}

    async with aiohttp.ClientSession() as session:
        hapi = HapiClient(session, hapi_url, 30, 5)
        writer = UnitOfWork(hapi)
        writer.put(source(0, [one]))
        await writer.commit()

        uow = UnitOfWork(hapi)
        ids = lambda found: sorted(r["id"] for r in found)  # noqa: E731
        stored = f"src-test-{family.lower()}-0"
        assert ids(await uow.find_sources([one], 10)) == [stored]
        uow.put(source(1, [one]))  # a new record staged under "one"
        assert ids(await uow.find_sources([one], 10)) == sorted([stored, f"src-test-{family.lower()}-1"])
        uow.put(source(1, [two]))  # re-staged under "two" only
        uow.put(source(0, [two]))  # the stored record's staged version moves to "two" as well
        assert await uow.find_sources([one], 10) == []
        assert ids(await uow.find_sources([two], 10)) == sorted([stored, f"src-test-{family.lower()}-1"])
        golden = records.new_golden(records.new_golden_id(), "urn:test:cruid")
        uow.put(golden)  # golden records are never candidates
        assert stored in ids(await uow.find_sources([two, one], 10)) and golden["id"] not in ids(
            await uow.find_sources([two, one], 10)
        )


async def test_records_read_ahead_leave_no_search_behind_in_hapi(hapi_url):
    """``UnitOfWork.prefetch`` reads by ``_id`` searches that HAPI answers in one response without keeping the
    search (a kept search writes a search row and a row per result, for paging, then expires them). A kept
    search can be paged again with ``_getpages``; the prefetch's cannot."""
    family = unique_surname()
    ids = [f"src-test-{family.lower()}-{n}" for n in range(3)]
    async with aiohttp.ClientSession() as session:
        hapi = HapiClient(session, hapi_url, 30, 5)
        writer = UnitOfWork(hapi)
        for rid in ids:
            writer.put({"resourceType": "Patient", "id": rid, "name": [{"family": family}]})
        await writer.commit()

        answers: list[dict] = []
        call = hapi._call

        async def spy(name: str, method: str, path: str, **kw):  # type: ignore[no-untyped-def]
            status, payload = await call(name, method, path, **kw)
            answers.append(payload)
            return status, payload

        hapi._call = spy  # type: ignore[method-assign]
        reader = UnitOfWork(hapi)
        await reader.prefetch("Patient", [*ids, f"src-test-{family.lower()}-absent"])
        assert [(await reader.peek("Patient", rid) or {}).get("id") for rid in ids] == ids
        kept = await hapi.search("Patient", {"_id": ",".join(ids), "_count": "3"}, max_results=3)
        assert len(kept) == 3

    prefetch_bundle, kept_bundle = answers[0], answers[-1]
    assert len(answers) == 2 and prefetch_bundle.get("id") and kept_bundle.get("id")
    page = "{}?_getpages={}&_getpagesoffset=0&_count=3"
    assert get_now(page.format(hapi_url, kept_bundle["id"]))[0] == 200  # the check can tell the two apart
    assert get_now(page.format(hapi_url, prefetch_bundle["id"]))[0] in (404, 410)
