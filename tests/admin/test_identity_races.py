"""Races of an admin's identity changes (move, break, undo) with a POS's own changes of the same records.

In one process (and across replicas with ``CR_LOCKS=postgres``) a decision naming a source record takes
that record's ``src:`` key lock, as the POS's submissions, merges into it and retraction do: they take
turns (a :class:`~tests.pairing_proxy.PairingProxy` never pairs their transactions). Across replicas with
``CR_LOCKS=local`` only HAPI's ``If-Match`` keeps them apart: there, a proxy before HAPI holds the admin's
transaction (after all its reads) until the POS's request, sent to another replica, has been written. No
sleeps: the proxies wait on events (or a bounded wait for a partner).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any

import pytest
from aiohttp import web

from mediator import records
from mediator.app import create_app
from mediator.logs import JsonFormatter
from tests.admin.conftest import AdminClient, make_pair
from tests.conftest import patient, unique_surname
from tests.hapi_helpers import HoldTransaction, forward_to_hapi, is_transaction, serve_proxy
from tests.pairing_proxy import PairingProxy

ADMIN_ACTION = b"admin-action"  # in the AuditEvent of every admin decision (its subtype system)


@dataclasses.dataclass(frozen=True)
class Person:
    """One person of the records ``A`` and ``Z`` of one facility (and ``W`` of another, if asked), and a
    person ``T`` of its own: their resources, source ids and golden records."""

    bodies: dict[str, dict[str, Any]]
    ids: dict[str, str]
    golden: str
    target: str


async def _person(client: Any, facility: str, *, with_other: bool) -> Person:
    family = unique_surname()
    ward = facility.replace("facility-", "ward-")
    bodies = {
        "A": patient(facility, "A", family=family),
        "Z": patient(facility, "Z", family=family),
        "T": patient(facility, "T", family=unique_surname(), given="Neema", birth_date="1970-03-03"),
    }
    if with_other:
        bodies["W"] = patient(ward, "W", family=family)
    answers = {key: await client.post("/fhir/Patient", json=body) for key, body in bodies.items()}
    assert all(a.status == 201 for a in answers.values())
    same = {answers[k].headers["X-CRUID"] for k in bodies if k != "T"}
    assert len(same) == 1 and answers["T"].headers["X-CRUID"] not in same
    ids = {k: (await a.json())["id"] for k, a in answers.items()}
    return Person(bodies, ids, answers["A"].headers["X-CRUID"], answers["T"].headers["X-CRUID"])


def _merged(body: dict[str, Any], survivor_id: str) -> dict[str, Any]:
    return {
        **body,
        "active": False,
        "link": [{"type": "replaced-by", "other": {"reference": f"Patient/{survivor_id}"}}],
    }


async def _proxied_admin(aiohttp_client: Any, aiohttp_server: Any, settings: Any, hold: Any) -> AdminClient:
    proxied = dataclasses.replace(settings, hapi_base_url=await serve_proxy(aiohttp_server, hold.handle))
    return await AdminClient(await aiohttp_client(create_app(proxied))).login()


def decision_of(admin: AdminClient, action: str, person: Person) -> Any:
    """The admin's request moving A to T's person, or breaking A out of its person (not awaited)."""
    headers = {"X-CSRF-Token": admin.csrf}
    if action == "move":
        body = {"source": person.ids["A"], "target": person.target}
        return admin.client.post("/admin/api/move", json=body, headers=headers)
    path = f"/admin/api/golden/{person.golden}/break"
    return admin.client.post(path, json={"source": person.ids["A"]}, headers=headers)


@pytest.mark.parametrize("action", ["move", "break"])
async def test_a_pos_merge_into_a_record_an_admin_moves_meanwhile_keeps_it_with_its_survivor(
    action, aiohttp_client, aiohttp_server, settings, hapi_url, store, facility, app_client
):
    """A and Z are one person; the admin moves (or breaks out) A on replica one while Z's POS merges Z into
    A on replica two (``CR_LOCKS=local``). The merge
    changes neither A nor their golden record (HAPI keeps an unchanged record's version), so the admin's
    transaction, decided before Z was A's follower, passed every If-Match and left Z on the old person,
    replaced-by A on another. Now the records it read are held (If-Match): 409, nothing written; the
    admin's second look takes Z along."""
    hold = HoldTransaction(hapi_url, ADMIN_ACTION)
    admin = await _proxied_admin(aiohttp_client, aiohttp_server, settings, hold)
    person = await _person(admin.client, facility, with_other=action == "break")
    a, z = person.ids["A"], person.ids["Z"]
    decided = asyncio.ensure_future(decision_of(admin, action, person))
    await hold.arrived.wait()  # the admin's decision has read everything and is about to write

    merge = await app_client.put(f"/fhir/Patient/{z}", json=_merged(person.bodies["Z"], a))  # replica two
    assert merge.status == 200 and merge.headers["X-CRUID"] == person.golden, await merge.text()
    hold.release()
    answer = await decided

    assert answer.status == 409, await answer.text()
    for rid in (a, z):
        assert (await store.assert_consistent(rid))["id"] == person.golden, "nothing written"
    assert records.pos_survivor(await store.read("Patient", z)) == a
    assert records.source_ids_of(await store.read("Patient", person.target)) == [person.ids["T"]]

    again = await decision_of(admin, action, person)  # the admin looks again: Z goes with A now
    assert again.status == 200, await again.text()
    survivor = await store.assert_consistent(a)
    assert (await store.assert_consistent(z))["id"] == survivor["id"] != person.golden


async def _moved_with_follower(admin: AdminClient, facility: str) -> Person:
    """A and Z one person, Z merged into A by its POS; the admin moved A (and with it Z) to T's person."""
    person = await _person(admin.client, facility, with_other=False)
    a, z = person.ids["A"], person.ids["Z"]
    merge = await admin.client.put(f"/fhir/Patient/{z}", json=_merged(person.bodies["Z"], a))
    assert merge.status == 200, await merge.text()
    await admin.post("/admin/api/move", {"source": a, "target": person.target})
    assert (await admin.get(f"/admin/api/golden/{person.target}"))["sources"]
    return person


async def _states(store: Any, ids: list[str]) -> list[dict[str, Any]]:
    return [records.link_state(await store.read("Patient", rid)) for rid in ids]


async def test_undo_of_a_move_after_its_pos_merged_another_record_into_the_moved_one_is_refused(
    admin, facility, store
):
    """After the move, T's POS merges T (already on the target person) into A: nothing the move's
    AuditEvent names changes (HAPI keeps the unchanged golden record's version), and undo used to take A
    and Z back, leaving T on the target person replaced-by A on another. Now 409, nothing written."""
    person = await _moved_with_follower(admin, facility)
    a, t = person.ids["A"], person.ids["T"]
    merge = await admin.client.put(f"/fhir/Patient/{t}", json=_merged(person.bodies["T"], a))
    assert merge.status == 200 and merge.headers["X-CRUID"] == person.target, await merge.text()
    ids = [*person.ids.values(), person.golden, person.target]
    before = await _states(store, ids)

    refused = await admin.post("/admin/api/undo", {"patient": a}, status=409)

    assert f"Patient/{t}" in refused["issue"][0]["diagnostics"]
    assert await _states(store, ids) == before
    assert (await store.assert_consistent(t))["id"] == (await store.assert_consistent(a))["id"]


@pytest.mark.parametrize("change", ["merged elsewhere", "retracted", "updated"])
async def test_undo_of_a_move_after_its_follower_changed_at_its_pos(change, admin, facility, store):
    """Z, moved along with A, is then merged by its POS into T, or retracted: undo is 409, nothing written.
    Its POS only updating its demographics changes no link: undo takes it back with A."""
    person = await _moved_with_follower(admin, facility)
    a, z = person.ids["A"], person.ids["Z"]
    if change == "merged elsewhere":
        answer = await admin.client.put(
            f"/fhir/Patient/{z}", json=_merged(person.bodies["Z"], person.ids["T"])
        )
    elif change == "retracted":
        answer = await admin.client.delete(f"/fhir/Patient/{z}")
    else:
        body = {**person.bodies["Z"], "active": False, "gender": "other"}
        answer = await admin.client.put(f"/fhir/Patient/{z}", json=body)
    assert answer.status == 200, await answer.text()
    ids = [*person.ids.values(), person.golden, person.target]
    before = await _states(store, ids)

    if change == "updated":
        await admin.post("/admin/api/undo", {"patient": a})
        assert (await store.assert_consistent(z))["id"] == person.golden
        assert (await store.assert_consistent(a))["id"] == person.golden
        assert records.pos_survivor(await store.read("Patient", z)) == a
        return
    refused = await admin.post("/admin/api/undo", {"patient": a}, status=409)
    assert f"Patient/{z}" in refused["issue"][0]["diagnostics"]
    assert await _states(store, ids) == before


class FailingHapi:
    """A test proxy (:meth:`handle`) for failures a real HAPI cannot be made to show on demand: the next
    admin's transaction is answered 503 without reaching HAPI (``mode`` "refuse"), or reaches HAPI and is
    committed but its answer never comes back ("swallow": the mediator times out)."""

    def __init__(self, hapi_url: str) -> None:
        self.hapi_url = hapi_url
        self.mode: str | None = None
        self.failed = asyncio.Event()
        self.never = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        mode = self.mode
        if mode and is_transaction(request) and ADMIN_ACTION in await request.read():
            self.mode = None
            self.failed.set()
            if mode == "refuse":
                return web.json_response({"resourceType": "OperationOutcome", "issue": []}, status=503)
            await forward_to_hapi(self.hapi_url, request)
            await self.never.wait()
        return await forward_to_hapi(self.hapi_url, request)


@pytest.mark.parametrize("action", ["move", "break"])
@pytest.mark.parametrize("mode", ["refuse", "swallow"])
async def test_hapi_failing_mid_decision_writes_all_or_nothing_and_the_retry_answers_the_same(
    action, mode, aiohttp_client, aiohttp_server, settings, hapi_url, store, facility
):
    """The admin's transaction (taking the merged record Z along) fails at HAPI: 503 before it reached
    HAPI (nothing written), or 504 after HAPI committed it (all written). The admin's retry answers 200
    with the decision as written, once: one AuditEvent (after a 504 the retry used to be a 400, "already
    belongs to that golden record" / "not a source record of" it)."""
    failing = FailingHapi(hapi_url)
    proxied = dataclasses.replace(
        settings, hapi_base_url=await serve_proxy(aiohttp_server, failing.handle), hapi_timeout_s=3.0
    )
    admin = await AdminClient(await aiohttp_client(create_app(proxied))).login()
    person = await _person(admin.client, facility, with_other=action == "break")
    a, z = person.ids["A"], person.ids["Z"]
    merge = await admin.client.put(f"/fhir/Patient/{z}", json=_merged(person.bodies["Z"], a))
    assert merge.status == 200, await merge.text()
    ids = [*person.ids.values(), person.golden, person.target]
    before = await _states(store, ids)

    failing.mode = mode
    failed = await decision_of(admin, action, person)
    assert failing.failed.is_set()
    assert failed.status == (503 if mode == "refuse" else 504), await failed.text()
    if mode == "refuse":
        assert await _states(store, ids) == before, "nothing written"
    else:
        assert (await store.assert_consistent(z))["id"] != person.golden, "all written"

    retry = await decision_of(admin, action, person)
    assert retry.status == 200, await retry.text()
    survivor = await store.assert_consistent(a)
    assert survivor["id"] != person.golden
    assert (await store.assert_consistent(z))["id"] == survivor["id"]
    again = await decision_of(admin, action, person)
    assert (await again.json())["auditEvent"] == (await retry.json())["auditEvent"]
    events = await store.search("AuditEvent", {"entity": f"Patient/{a}", "subtype": "move,break"})
    assert len([e for e in events if f"Patient/{z}" in json.dumps(e)]) == 1
    failing.never.set()


async def test_identity_changes_audit_and_log_ids_only(admin, app_client, facility, store, caplog):
    """A POS merge into a record, an admin move of it taking the merged record along and emptying its
    person (whose open review Task follows), its undo, and a POS merge of another person's last record
    (its Task follows by the registry's rule): every AuditEvent these write, and every log line, holds ids,
    codes and link states, never a name, birth date or phone number."""
    pair = await make_pair(app_client, facility)
    third = await app_client.post(
        "/fhir/Patient",
        json=patient(facility, "T", family=unique_surname(), given="Neema", birth_date="1970-03-03"),
    )
    merged_body = patient(facility, "Z", family=unique_surname(), given="Zawadi", birth_date="1960-06-06")
    demographics = {
        pair.family,
        pair.given,
        merged_body["name"][0]["family"],
        "Zawadi",
        "1960-06-06",
        "1987-05-12",
        merged_body["telecom"][0]["value"],
    }
    with caplog.at_level(logging.DEBUG):
        z = await app_client.post("/fhir/Patient", json=_merged(merged_body, pair.source_a))
        assert z.status == 201, await z.text()
        out = await admin.post(
            "/admin/api/move", {"source": pair.source_a, "target": third.headers["X-CRUID"]}
        )
        await admin.post("/admin/api/undo", {"patient": pair.source_a})
        body_b = patient(pair.system_b, "P2", family=pair.family, given=pair.given, birth_date="1987-05-12")
        last = await app_client.put(f"/fhir/Patient/{pair.source_b}", json=_merged(body_b, pair.source_a))
        assert last.status == 200, await last.text()
    move_event = await store.read("AuditEvent", out["auditEvent"].split("/")[1])
    assert any(e["what"]["reference"].startswith("Task/") for e in move_event["entity"]), "a Task followed"
    ids = (pair.source_a, pair.source_b, (await z.json())["id"], pair.golden_a, pair.golden_b)
    events = {
        e["id"]: e for rid in ids for e in await store.search("AuditEvent", {"entity": f"Patient/{rid}"})
    }
    assert len(events) >= 5
    followed = [
        e for ev in events.values() for e in ev["entity"] if "previous person" in e.get("description", "")
    ]
    assert followed, "the registry's merge of golden_b's last record made its Task follow"
    for written in events.values():
        text = json.dumps(written)
        assert not [d for d in demographics if d in text], written["id"]
    formatter = JsonFormatter()
    lines = "\n".join(formatter.format(r) for r in caplog.records)
    assert not [d for d in demographics if d in lines]


@pytest.mark.parametrize("meanwhile", ["A retracted", "A relinked with Z"])
async def test_a_request_of_the_pos_meanwhile_makes_the_admins_move_409(
    meanwhile, aiohttp_client, aiohttp_server, settings, hapi_url, store, facility, app_client
):
    """Held: the admin moves A (or Z, merged into A) to T's person while A's POS retracts A, or resubmits
    A as T's twin (matching relinks A, and Z with it, to T's person). Both write the old golden record, so
    the admin's transaction is refused: 409, and what the POS did stands, consistent."""
    hold = HoldTransaction(hapi_url, ADMIN_ACTION)
    admin = await _proxied_admin(aiohttp_client, aiohttp_server, settings, hold)
    person = await _person(admin.client, facility, with_other=False)
    a, z = person.ids["A"], person.ids["Z"]
    moved = a
    if meanwhile == "A relinked with Z":
        merge = await admin.client.put(f"/fhir/Patient/{z}", json=_merged(person.bodies["Z"], a))
        assert merge.status == 200, await merge.text()
        moved = z
    body = {"source": moved, "target": person.target}
    decided = asyncio.ensure_future(
        admin.client.post("/admin/api/move", json=body, headers={"X-CSRF-Token": admin.csrf})
    )
    await hold.arrived.wait()

    if meanwhile == "A retracted":
        answer = await app_client.delete(f"/fhir/Patient/{a}")  # replica two
    else:
        twin = {**person.bodies["T"], "identifier": person.bodies["A"]["identifier"]}
        answer = await app_client.put(f"/fhir/Patient/{a}", json=twin)
    assert answer.status == 200, await answer.text()
    hold.release()
    refused = await decided

    assert refused.status == 409, await refused.text()
    if meanwhile == "A retracted":
        assert await store.read("Patient", a) is None
        assert (await store.assert_consistent(z))["id"] == person.golden
        assert records.source_ids_of(await store.read("Patient", person.target)) == [person.ids["T"]]
    else:
        assert answer.headers["X-CRUID"] == person.target
        assert (await store.assert_consistent(a))["id"] == person.target
        assert (await store.assert_consistent(z))["id"] == person.target
        assert records.pos_survivor(await store.read("Patient", z)) == a


@pytest.mark.parametrize("survivor", ["merged record's person", "other person"])
async def test_a_pos_merge_meanwhile_an_admin_merges_the_person_keeps_it_with_its_survivor(
    survivor, aiohttp_client, aiohttp_server, settings, hapi_url, store, facility
):
    """Held: A and Z are one person; the admin merges it with another person (same-person on their pair)
    while Z's POS merges Z into A. Kept (A's person survives): nothing of it is written by the merge, 200.
    Merged away: the admin's transaction relinks Z as it read it, refused (409); a second look keeps Z's
    POS merge. Either way Z stays with A."""
    hold = HoldTransaction(hapi_url, ADMIN_ACTION)
    admin = await _proxied_admin(aiohttp_client, aiohttp_server, settings, hold)
    pair = await make_pair(admin.client, facility)
    body = patient(facility, "Z", family=pair.family, given=pair.given)
    z = await admin.client.post("/fhir/Patient", json=body)
    assert z.status == 201 and z.headers["X-CRUID"] == pair.golden_a, await z.text()
    zid = (await z.json())["id"]
    keep = pair.golden_a if survivor == "merged record's person" else pair.golden_b
    path = f"/admin/api/pairs/{pair.task}/decision"
    decision = {"decision": "same-person", "survivor": keep}
    decided = asyncio.ensure_future(
        admin.client.post(path, json=decision, headers={"X-CSRF-Token": admin.csrf})
    )
    await hold.arrived.wait()

    merge = await admin.client.put(f"/fhir/Patient/{zid}", json=_merged(body, pair.source_a))
    assert merge.status == 200, await merge.text()
    hold.release()
    answer = await decided

    if keep == pair.golden_a:
        assert answer.status == 200, await answer.text()
    else:
        assert answer.status == 409, await answer.text()
        again = await admin.client.post(path, json=decision, headers={"X-CSRF-Token": admin.csrf})
        assert again.status == 200, await again.text()
    for rid in (pair.source_a, pair.source_b, zid):
        assert (await store.assert_consistent(rid))["id"] == keep
    assert records.pos_survivor(await store.read("Patient", zid)) == pair.source_a


@pytest.mark.parametrize("action", ["move", "break"])
async def test_an_admin_move_and_a_pos_merge_into_the_moved_record_take_turns(
    action, aiohttp_client, settings, hapi_url, store, facility, app_client
):
    """One process: the admin moves (or breaks out) A while Z's POS merges Z into A, sent at once, each
    transaction held by a pairing proxy until the other is pending too. They shared no key lock, so both
    reached HAPI together, where the merge holds A (unchanged, If-Match) and writes Z while the move holds
    Z and writes A: HAPI checks a held record's version as its transaction starts, so both could commit
    and leave Z behind. Now the move takes A's ``src:`` key as the merge does: they never pair, and Z ends
    with A whichever went first."""
    person = await _person(app_client, facility, with_other=action == "break")
    a, z = person.ids["A"], person.ids["Z"]
    with PairingProxy(hapi_url, hold_s=3.0) as proxy:
        proxied = dataclasses.replace(settings, hapi_base_url=proxy.url)
        admin = await AdminClient(await aiohttp_client(create_app(proxied))).login()

        decided, merge = await asyncio.gather(
            decision_of(admin, action, person),
            admin.client.put(f"/fhir/Patient/{z}", json=_merged(person.bodies["Z"], a)),
        )

        assert proxy.stats.pairs == 0, "an admin's decision and a POS merge of one record must take turns"
    assert merge.status == 200, await merge.text()
    assert decided.status == 200, await decided.text()
    survivor = await store.assert_consistent(a)
    assert survivor["id"] != person.golden
    assert (await store.assert_consistent(z))["id"] == survivor["id"]
    assert records.pos_survivor(await store.read("Patient", z)) == a


async def test_an_undo_asked_by_the_merged_record_and_a_pos_merge_into_its_survivor_take_turns(
    aiohttp_client, settings, hapi_url, store, facility, admin
):
    """After a move of A that took Z along, the admin undoes it from Z's page while T's POS merges T (on
    the target person already) into A, sent at once through a pairing proxy. The undo used to take Z's key
    lock only, the merge T's and A's: both reached HAPI together, each holding what the other writes. Now
    the undo takes the keys of every source record the decision changed: they never pair, and T ends with
    A whichever went first (undone first: T follows A back; merged first: the undo is 409)."""
    person = await _moved_with_follower(admin, facility)
    a, z, t = person.ids["A"], person.ids["Z"], person.ids["T"]
    with PairingProxy(hapi_url, hold_s=3.0) as proxy:
        proxied = dataclasses.replace(settings, hapi_base_url=proxy.url)
        other = await AdminClient(await aiohttp_client(create_app(proxied))).login()
        undone, merge = await asyncio.gather(
            other.client.post("/admin/api/undo", json={"patient": z}, headers={"X-CSRF-Token": other.csrf}),
            other.client.put(f"/fhir/Patient/{t}", json=_merged(person.bodies["T"], a)),
        )
        assert proxy.stats.pairs == 0, "the undo and a POS merge into the moved record must take turns"
    assert merge.status == 200, await merge.text()
    assert undone.status in (200, 409), await undone.text()
    golden = (await store.assert_consistent(a))["id"]
    assert (await store.assert_consistent(z))["id"] == (await store.assert_consistent(t))["id"] == golden
