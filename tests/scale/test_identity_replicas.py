"""Two replicas sharing their key locks in PostgreSQL (``CR_LOCKS=postgres``; HAPI: the tests' own) changing
one person's records at once: an admin's move against a POS merge into the moved record (a pairing proxy
shows they take turns), and a relink, a merge and a move sent together (any order they take)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from mediator import records
from mediator.admin.users import UserStore
from mediator.app import create_app
from tests.admin.conftest import PASSWORD, AdminClient
from tests.admin.test_identity_races import Person, _merged, _person, decision_of
from tests.pairing_proxy import PairingProxy
from tests.scale.conftest import PAIRING_HOLD_S

pytestmark = pytest.mark.postgres


async def _replicas(aiohttp_client: Any, settings: Any, pg_dsn: str) -> tuple[Any, AdminClient]:
    """(the settings of a replica sharing its locks in PostgreSQL, replica two with its admin logged in)."""
    shared = dataclasses.replace(settings, locks="postgres", locks_dsn=pg_dsn)
    UserStore(shared.admin.users_file).set_password("alice", PASSWORD)
    two = await AdminClient(await aiohttp_client(create_app(shared))).login()
    return shared, two


async def test_an_admin_move_on_one_replica_and_a_pos_merge_on_the_other_take_turns(
    aiohttp_client, settings, pg_dsn, hapi_url, store, facility
):
    """The admin moves A on replica one while Z's POS merges Z into A on replica two, both sent at once,
    each transaction held by a pairing proxy until the other is pending too. The move takes A's ``src:``
    key in PostgreSQL as the merge does: they never pair (before, they shared no key, and both could
    commit, each holding what the other wrote), and Z ends with A whichever went first."""
    shared, two = await _replicas(aiohttp_client, settings, pg_dsn)
    person = await _person(two.client, facility, with_other=False)
    a, z = person.ids["A"], person.ids["Z"]
    with PairingProxy(hapi_url, hold_s=PAIRING_HOLD_S) as proxy:
        proxied = dataclasses.replace(shared, hapi_base_url=proxy.url)
        one = await AdminClient(await aiohttp_client(create_app(proxied))).login()
        two_proxied = await aiohttp_client(create_app(proxied))

        moved, merge = await asyncio.gather(
            decision_of(one, "move", person),
            two_proxied.put(f"/fhir/Patient/{z}", json=_merged(person.bodies["Z"], a)),
        )

        assert proxy.stats.pairs == 0, "an admin's move and a POS merge of one record must take turns"
    assert moved.status == merge.status == 200, [await moved.text(), await merge.text()]
    survivor = await store.assert_consistent(a)
    assert survivor["id"] == person.target
    assert (await store.assert_consistent(z))["id"] == survivor["id"]


async def test_a_relink_a_merge_and_a_move_sent_together_to_two_replicas_leave_every_person_whole(
    aiohttp_client, settings, pg_dsn, store, facility
):
    """Replica one relinks A to T's person (A resubmitted as T's twin) and moves A to U's person; replica
    two merges Z into A; all at once. Whatever HAPI does first, Z ends with A, every record on one live
    golden record listing it, and each request is answered 200 or 409."""
    shared, two = await _replicas(aiohttp_client, settings, pg_dsn)
    one = await AdminClient(await aiohttp_client(create_app(shared))).login()
    person: Person = await _person(two.client, facility, with_other=False)
    a, z = person.ids["A"], person.ids["Z"]
    other = {**person.bodies["T"], "identifier": [{"system": facility, "value": "U"}], "gender": "male"}
    other["name"] = [{"family": person.bodies["T"]["name"][0]["family"] + "x", "given": ["Baraka"]}]
    u = await two.client.post("/fhir/Patient", json=other)
    assert u.status == 201
    twin = {**person.bodies["T"], "identifier": person.bodies["A"]["identifier"]}

    answers = await asyncio.gather(
        one.client.put(f"/fhir/Patient/{a}", json=twin),
        two.client.put(f"/fhir/Patient/{z}", json=_merged(person.bodies["Z"], a)),
        one.client.post(
            "/admin/api/move",
            json={"source": a, "target": u.headers["X-CRUID"]},
            headers={"X-CSRF-Token": one.csrf},
        ),
    )

    assert [r.status in (200, 409) for r in answers] == [True] * 3, [r.status for r in answers]
    for rid in (a, z, person.ids["T"], (await u.json())["id"]):
        await store.assert_consistent(rid)
    assert (await store.assert_consistent(z))["id"] == (await store.assert_consistent(a))["id"]
    if answers[1].status == 200:
        assert records.pos_survivor(await store.read("Patient", z)) == a
