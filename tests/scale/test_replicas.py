"""Two real mediator processes against one HAPI (on PostgreSQL), coordinated by PostgreSQL advisory locks,
keep the guarantees of one: one golden record per person, one source record per identifier, one count of
an admin name's failed logins, one re-match apply (or rules reset) at a time.

Left alone, two replicas rarely race closely enough to show a missing lock, so the new-person scenario also
runs with the replicas behind a :class:`~tests.pairing_proxy.PairingProxy`, which holds each HAPI transaction
until a second one is pending (or a bounded wait passes) — and, as the control that proves the test can fail,
with ``CR_LOCKS=local`` replicas behind such a proxy, which do make several golden records."""

from __future__ import annotations

import asyncio

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import pytest

from mediator import records
from mediator.admin.jobs import APPLY_LEASE
from mediator.pg_locks import lease_id
from tests.conftest import patient, unique_surname
from tests.hapi_helpers import Store
from tests.scale.conftest import replica_admin_login

pytestmark = pytest.mark.postgres


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


async def _post(http, url, body):
    async with http.post(f"{url}/fhir/Patient", json=body) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def _twenty_new_submissions(http, urls, facility):
    """20 new source records of one person, submitted at once, alternately to the two replicas."""
    family = unique_surname()
    bodies = [patient(f"{facility}-{n}", "N1", family=family) for n in range(20)]
    return await asyncio.gather(*(_post(http, urls[n % 2], body) for n, body in enumerate(bodies)))


async def _goldens_of(store, facility):
    return {records.golden_id_of(s) for n in range(20) for s in await store.sources_with(f"{facility}-{n}")}


async def _assert_one_golden(answers, store, facility):
    assert [a[0] for a in answers] == [201] * 20, [a[2] for a in answers if a[0] != 201]
    cruids = {a[1]["X-CRUID"] for a in answers}
    assert len(cruids) == 1
    golden_id = answers[0][1]["LocationCRUID"].split("/")[1]
    golden = await store.read("Patient", golden_id)
    assert golden is not None
    assert len(records.source_ids_of(golden)) == 20
    assert await _goldens_of(store, facility) == {golden_id}


async def test_twenty_concurrent_new_submissions_over_two_replicas_make_one_golden(
    replica_urls, pg_hapi_url, http, facility
):
    answers = await _twenty_new_submissions(http, replica_urls, facility)
    await _assert_one_golden(answers, Store(http, pg_hapi_url), facility)


async def test_advisory_locks_keep_replicas_apart_even_when_their_writes_are_held_for_a_partner(
    proxied_replicas, pg_hapi_url, http, facility
):
    """Through the pairing proxy, two submissions that both searched before either wrote would reach HAPI
    as a pair. The shared locks make the second replica wait before it searches: never two transactions of
    this person pending at once, one golden record."""
    proxy = proxied_replicas.proxy
    proxy.reset()
    answers = await _twenty_new_submissions(http, proxied_replicas.urls, facility)
    await _assert_one_golden(answers, Store(http, pg_hapi_url), facility)
    # submissions that wait on a replica share a transaction (mediator/registry.py): 20 at most, one a replica
    # at least
    assert 2 <= proxy.stats.transactions <= 20, proxy.stats
    assert proxy.stats.pairs == 0, proxy.stats
    assert proxy.stats.max_concurrent == 1, proxy.stats


async def test_without_shared_locks_the_same_scenario_makes_several_goldens(
    proxied_local_replicas, pg_hapi_url, http, facility
):
    """The control: with in-process locks only (``CR_LOCKS=local``) the replicas' first submissions both
    search, find nothing and write, paired by the proxy — so the test above can fail, and does without
    ``CR_LOCKS=postgres``."""
    proxy = proxied_local_replicas.proxy
    proxy.reset()
    await _twenty_new_submissions(http, proxied_local_replicas.urls, facility)
    goldens = await _goldens_of(Store(http, pg_hapi_url), facility)
    assert proxy.stats.pairs >= 1, proxy.stats
    assert len(goldens) > 1, (goldens, proxy.stats)


async def test_twenty_concurrent_resubmissions_over_two_replicas_make_one_source_record(
    replica_urls, pg_hapi_url, http, facility
):
    family = unique_surname()
    answers = await asyncio.gather(
        *(
            _post(
                http,
                replica_urls[n % 2],
                patient(facility, "SAME", family=family, phone=f"+2567000000{n:02d}"),
            )
            for n in range(20)
        )
    )
    assert sorted(a[0] for a in answers) == [200] * 19 + [201], [a[2] for a in answers]
    assert len({a[1]["X-CRUID"] for a in answers}) == 1
    store = Store(http, pg_hapi_url)
    sources = await store.sources_with(facility)
    assert len(sources) == 1
    assert sources[0]["meta"]["versionId"] == "20"
    await store.assert_consistent(sources[0]["id"])


async def test_both_replicas_are_ready_with_the_store_and_the_lock_database(replica_urls, http):
    for url in replica_urls:
        async with http.get(f"{url}/ready") as resp:
            assert resp.status == 200
            assert (await resp.json())["checks"] == {"fhir_store": "ok", "locks": "ok"}


async def _failed_logins_then_try(http, urls, name, failures):
    """``failures`` wrong passwords for ``name``, alternately on the replicas; then the answer of each."""
    for n in range(failures):
        async with http.post(
            f"{urls[n % 2]}/admin/api/login", json={"username": name, "password": "wrong-password"}
        ) as resp:
            assert resp.status == 401, await resp.text()
    answers = []
    for url in urls:
        async with http.post(f"{url}/admin/api/login", json={"username": name, "password": "x" * 12}) as resp:
            answers.append((resp.status, resp.headers.get("Retry-After")))
    return answers


async def test_failed_logins_spread_over_two_replicas_lock_the_name_on_both(replica_urls, http):
    """Five failures (three on one replica, two on the other) reach the limit of five per name: the shared
    count in PostgreSQL refuses the name on both replicas, before any password check."""
    answers = await _failed_logins_then_try(http, replica_urls, f"mallory-{unique_surname()}", 5)
    assert [status for status, _ in answers] == [429, 429], answers
    assert all(0 < int(after) <= 900 for _, after in answers)


async def test_replicas_counting_in_their_own_memory_let_the_same_failures_through(
    proxied_local_replicas, http
):
    """The control: with ``CR_LOCKS=local`` each replica counts only its own failures (three and two), so
    the same attempts are not refused — the test above fails without the shared count."""
    name = f"mallory-{unique_surname()}"
    answers = await _failed_logins_then_try(http, proxied_local_replicas.urls, name, 5)
    assert [status for status, _ in answers] == [401, 401], answers


async def _resets_while_the_apply_lease_is_held_elsewhere(pg_dsn, urls):
    """Log in on the first replica (the cookie holds on both), hold the apply lease from another PostgreSQL
    session (as a replica applying a re-match does), and ask each replica to reset the rules; then the
    answer of a reset once the lease is free."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as admin:
        headers = await replica_admin_login(admin, urls[0])
        elsewhere = await asyncpg.connect(pg_dsn)
        try:
            assert await elsewhere.fetchval("SELECT pg_try_advisory_lock($1)", lease_id(APPLY_LEASE))
            held = []
            for url in urls:
                async with admin.post(f"{url}/admin/jobs/rules/reset", json={}, headers=headers) as r:
                    held.append(r.status)
        finally:
            await elsewhere.close()  # ends the session: the lease is free
        async with admin.post(f"{urls[1]}/admin/jobs/rules/reset", json={}, headers=headers) as r:
            return held, r.status


async def test_no_replica_resets_or_applies_rules_while_another_applies(replica_urls, pg_dsn):
    """The apply lease is a PostgreSQL advisory lock: while any session holds it, both replicas refuse."""
    held, free = await _resets_while_the_apply_lease_is_held_elsewhere(pg_dsn, replica_urls)
    assert held == [409, 409] and free == 200


async def test_replicas_with_local_locks_do_not_see_a_lease_held_elsewhere(proxied_local_replicas, pg_dsn):
    """The control: with ``CR_LOCKS=local`` the lease is each process's own, so the test above fails
    without the shared lease."""
    held, free = await _resets_while_the_apply_lease_is_held_elsewhere(pg_dsn, proxied_local_replicas.urls)
    assert held == [200, 200] and free == 200
