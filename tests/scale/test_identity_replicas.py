"""Two replicas sharing their key locks in PostgreSQL (``CR_LOCKS=postgres``; HAPI: the tests' own) changing
one person's records at once: an admin's move against a POS merge into the moved record (held by a proxy
before HAPI, deterministic), and a relink, a merge and a move sent together (any order HAPI takes)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from mediator import records
from mediator.admin.users import UserStore
from mediator.app import create_app
from tests.admin.conftest import PASSWORD, AdminClient
from tests.admin.test_identity_races import (
    HoldAdminTransaction,
    Person,
    _merged,
    _person,
    decision_of,
)
from tests.hapi_helpers import serve_proxy

pytestmark = pytest.mark.postgres


async def _replicas(aiohttp_client: Any, settings: Any, pg_dsn: str) -> tuple[Any, AdminClient]:
    """(the settings of a replica sharing its locks in PostgreSQL, replica two with its admin logged in)."""
    shared = dataclasses.replace(settings, locks="postgres", locks_dsn=pg_dsn)
    UserStore(shared.admin.users_file).set_password("alice", PASSWORD)
    two = await AdminClient(await aiohttp_client(create_app(shared))).login()
    return shared, two


async def test_an_admin_move_on_one_replica_and_a_pos_merge_on_the_other_keep_z_with_a(
    aiohttp_client, aiohttp_server, settings, pg_dsn, hapi_url, store, facility
):
    """As in tests/admin/test_identity_races.py, the admin's and the POS's requests share no key lock, on
    replicas either: the move is refused (409) by HAPI, nothing written, and the admin's second look takes
    Z along."""
    shared, two = await _replicas(aiohttp_client, settings, pg_dsn)
    hold = HoldAdminTransaction(hapi_url)
    held = dataclasses.replace(shared, hapi_base_url=await serve_proxy(aiohttp_server, hold.handle))
    one = await AdminClient(await aiohttp_client(create_app(held))).login()
    person = await _person(two.client, facility, with_other=False)
    a, z = person.ids["A"], person.ids["Z"]
    decided = asyncio.ensure_future(decision_of(one, "move", person))
    await hold.arrived.wait()

    merge = await two.client.put(f"/fhir/Patient/{z}", json=_merged(person.bodies["Z"], a))
    assert merge.status == 200, await merge.text()
    hold.release()

    assert (await decided).status == 409
    assert (await store.assert_consistent(z))["id"] == person.golden
    again = await decision_of(two, "move", person)
    assert again.status == 200, await again.text()
    assert (
        (await store.assert_consistent(z))["id"] == (await store.assert_consistent(a))["id"] == person.target
    )


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
