"""Curation decisions and repairs by HIE admins: same person (merge), different people, break, move,
confirm and undo. Each is ONE HAPI transaction (``UnitOfWork``, ``If-Match`` on every update) holding the
changed records, the closed review Task and an ``AuditEvent`` with the link state of every touched record
before and after (ids and links only). A stale version gives 409 and nothing is retried; actions on the
same records take turns under the key locks. What each decision does: ``docs/internals.md``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import matching

from .. import linking, records, retarget
from ..audit import Actor, event
from ..errors import Conflict, InvalidInput, NotFound, Unprocessable, UpstreamUnavailable
from ..fhir_client import HapiClient
from ..identifiers import is_fhir_id
from ..instants import instant
from ..locks import LocalKeyedLocks, LockManager
from ..records import NS, Resource
from ..retarget import RESOLVED_BY_MERGE, RESOLVED_BY_MOVE
from ..review import OPEN, WITHDRAWN, close_task
from ..unit_of_work import UnitOfWork
from . import score_index

ADMIN_USER_SYSTEM = f"{NS}:admin-user"
ADMIN_ACTION_SYSTEM = f"{NS}:admin-action"
SAME_PERSON = "same-person"
DIFFERENT_PEOPLE = "different-people"
BREAK = "break"
MOVE = "move"
CONFIRM = "confirm"
UNDO = "undo"
UNDONE = "undone"
DECISIONS = (SAME_PERSON, DIFFERENT_PEOPLE)
ACTIONS = (SAME_PERSON, DIFFERENT_PEOPLE, BREAK, MOVE, CONFIRM, UNDO)


@dataclass(frozen=True)
class Admin:
    name: str
    address: str | None = None


@dataclass(frozen=True)
class Outcome:
    action: str
    audit_event_id: str
    golden_ids: tuple[str, ...]
    task_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "auditEvent": f"AuditEvent/{self.audit_event_id}",
            "golden": [records.ref(g) for g in self.golden_ids],
            **({"task": f"Task/{self.task_id}"} if self.task_id else {}),
        }


def manually_linked(source: Resource, golden_id: str) -> Resource:
    state = {"kind": "source", "golden": golden_id, "manual": True}
    return records.with_link_state(source, state)


def golden_with(golden: Resource, **changes: Any) -> Resource:
    state = records.link_state(golden)
    state.update(changes)
    return records.with_link_state(golden, state)


# -- the decisions ---------------------------------------------------------------------------------------


class _Change:
    """One unit of work plus the before-state of every Patient it read, for the AuditEvent."""

    def __init__(self, hapi: HapiClient, locks: LockManager) -> None:
        self.uow = UnitOfWork(hapi)
        self.locks = locks
        self.before: dict[str, dict[str, Any]] = {}
        self.tasks_before: dict[str, Resource | None] = {}  # "Task/id" -> as first read (None: absent)

    async def patient(self, resource_id: str) -> Resource | None:
        resource = await self.uow.read("Patient", resource_id)
        self.before.setdefault(resource_id, records.link_state(resource))
        return resource

    async def task(self, task_id: str) -> Resource | None:
        resource = await self.uow.read("Task", task_id)
        self.tasks_before.setdefault(f"Task/{task_id}", _task_snapshot(resource))
        return resource

    async def require(self, resource_id: str, what: str) -> Resource:
        resource = await self.patient(resource_id)
        if resource is None:
            raise NotFound(f"{what} Patient/{resource_id} does not exist.")
        return resource

    async def golden(self, resource_id: str) -> Resource:
        """The live golden record, following ``replaced-by`` links left by merges."""
        walk = await records.follow_replaced_by_async(self.patient, resource_id)
        if walk.live is not None:
            return walk.live
        if walk.end == records.ABSENT:
            raise NotFound(f"Golden record Patient/{walk.missing} does not exist.")
        if walk.end == records.NOT_GOLDEN and walk.last is not None:
            raise InvalidInput(f"Patient/{walk.last['id']} is not a golden record.")
        raise Conflict("Too many replaced-by links.")  # a cycle, or over MAX_RECORDS

    def put(self, resource: Resource) -> None:
        self.uow.put(resource)

    def patient_changes(self) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        out = []
        for key, staged in self.uow.staged.items():
            if key.startswith("Patient/") and key not in self.uow.held:  # held: nothing of it changes
                rid = key.split("/", 1)[1]
                out.append((rid, self.before.get(rid, {"kind": "absent"}), records.link_state(staged)))
        return out

    def _task_details(self, key: str, after: Resource) -> list[dict[str, str]]:
        before = self.tasks_before.get(key)
        return [
            {"type": "review-before", "valueString": json.dumps(_review_state(before))},
            {"type": "review-after", "valueString": json.dumps(_review_state(after))},
            {"type": "task-before", "valueString": json.dumps(before, sort_keys=True)},
        ]

    async def commit(
        self,
        admin: Admin,
        action: str,
        *,
        task: Resource | None = None,
        task_before: str | None = None,
        undoes: str | None = None,
        note: str | None = None,
    ) -> str:
        entities: list[dict[str, Any]] = []
        for rid, before, after in self.patient_changes():
            entities.append(
                {
                    "what": {"reference": records.ref(rid)},
                    "description": f"{after['kind'] if after['kind'] != 'absent' else before['kind']} record",
                    "detail": [
                        {"type": "before", "valueString": json.dumps(before, sort_keys=True)},
                        {"type": "after", "valueString": json.dumps(after, sort_keys=True)},
                    ],
                }
            )
        # Each Task: its review state before and after (what undo checks) and the whole Task as it was
        # before (what undo puts back; ids, codes and scores, no demographics; null: created here).
        if task is not None:
            key = f"Task/{task['id']}"
            entities.append(
                {
                    "what": {"reference": key},
                    "description": "review task",
                    "detail": [
                        {"type": "status-before", "valueString": task_before or OPEN},
                        {"type": "status-after", "valueString": task.get("status", "")},
                        *self._task_details(key, task),
                    ],
                }
            )
        for key, staged in self.uow.staged.items():
            if key.startswith("Task/") and (task is None or key != f"Task/{task['id']}"):
                entities.append(
                    {
                        "what": {"reference": key},
                        "description": "other review task (closed, retargeted or created by this decision)",
                        "detail": self._task_details(key, staged),
                    }
                )
        if undoes:
            entities.append({"what": {"reference": f"AuditEvent/{undoes}"}, "description": "undone decision"})
        audit = event(
            actor=Actor(client_id=admin.name, address=admin.address), subtype=action, entities=entities
        )
        audit["subtype"] = [{"system": ADMIN_ACTION_SYSTEM, "code": action}]
        audit["agent"][0]["who"] = {
            "identifier": {"system": ADMIN_USER_SYSTEM, "value": admin.name},
            "display": admin.name,
        }
        audit["agent"][0]["name"] = admin.name
        if note:
            audit["outcomeDesc"] = note[:500]
        if task is not None and task.get("status") != task_before:
            task.setdefault("output", []).append(
                {
                    "type": {"text": "audit-event"},
                    "valueReference": {"reference": f"AuditEvent/{audit['id']}"},
                }
            )
            self.put(task)
        self.put(audit)
        await self.locks.confirm()  # still alone with these records (503, nothing written, if not)
        await self.uow.commit()
        return str(audit["id"])


def closest_record(
    source: Resource | None, others: list[Resource], golden_id: str, rules: matching.Rules | None
) -> str | None:
    """Of ``others`` (the other person's source records), the one that scores best against ``source`` under
    ``rules`` — the record the pair page shows beside it; without rules or source, the first one."""
    others = [o for o in others if source is None or o.get("id") != source.get("id")]
    if not others:
        return None
    if source is None or rules is None:
        return str(others[0]["id"])
    candidates = [matching.Candidate(id=o["id"], golden_id=golden_id, resource=o) for o in others]
    return matching.decide(source, candidates, rules).scores[0].candidate_id


_Action = TypeVar("_Action", bound=Callable[..., Awaitable[Any]])


def _one_at_a_time(*arguments: str) -> Callable[[_Action], _Action]:
    """Hold the key locks on the records these arguments name while the action runs. Two admins acting on
    the same record (on any replica, with ``CR_LOCKS=postgres``) then take turns, and the second one is
    answered from what the first one wrote (409: already decided). Otherwise both transactions reached the
    FHIR store at once, and on H2 both could fail, each waiting for the other's lock (503 for both).

    A source record named also takes the key lock a submission, a POS merge into it or its retraction
    takes (``src:<id>``): those then take turns with the decision too. Without it, a move of A and a POS
    merge of Z into A (which writes Z and only holds A: ``If-Match`` on an unchanged record) could run in
    HAPI at once, each holding what the other writes: HAPI checks a held record's version when the
    transaction starts, so both passed and Z was left on the old person."""

    def wrap(action: _Action) -> _Action:
        signature = inspect.signature(action)

        @functools.wraps(action)
        async def serialised(self: Curation, *args: Any, **kwargs: Any) -> Any:
            named = signature.bind(self, *args, **kwargs).arguments
            keys = [f"curation:{named[a]}" for a in arguments]
            keys += [f"src:{named[a]}" for a in arguments if str(named[a]).startswith("src-")]
            async with self.locks.hold(keys):
                return await action(self, *args, **kwargs)

        return serialised  # type: ignore[return-value]

    return wrap


class Curation:
    def __init__(
        self,
        hapi: HapiClient,
        cruid_system: str,
        locks: LockManager | None = None,
        index: score_index.ScoreIndex | None = None,
        rules: matching.Rules | None = None,
    ) -> None:
        self.hapi = hapi
        self.cruid_system = cruid_system
        self.locks: LockManager = locks if locks is not None else LocalKeyedLocks()
        self.index = index  # installs the review search parameters a merge needs, when missing
        self.rules = rules  # the live rules: which of the other person's records a decision was about

    async def pair_goldens(self, change: _Change, task: Resource) -> tuple[Resource, Resource, str | None]:
        """(golden of the task's subject now, the other golden now, the focus source id)."""
        focus = records.ref_id(task.get("focus", {}).get("reference"))
        subject_golden = records.ref_id(task.get("for", {}).get("reference"))
        if focus and focus.startswith("src-"):
            source = await change.patient(focus)
            if source is not None:
                subject_golden = records.golden_id_of(source) or subject_golden
        other = retarget.task_candidate(task)
        if not subject_golden or not other:
            raise InvalidInput(f"Task/{task['id']} is not a review of two records.")
        return await change.golden(subject_golden), await change.golden(other), focus

    async def _open_task(self, change: _Change, task_id: str) -> Resource:
        task = await change.task(task_id)
        if task is None:
            raise NotFound(f"Task/{task_id} does not exist.")
        if task.get("status") != OPEN:
            decided = task.get("businessStatus", {}).get("text", task.get("status"))
            raise Conflict(f"This pair was already decided ({decided}).")
        return task

    @_one_at_a_time("task_id")
    async def decide(
        self,
        task_id: str,
        decision: str,
        admin: Admin,
        *,
        survivor: str | None = None,
        note: str | None = None,
    ) -> Outcome:
        if decision not in DECISIONS:
            raise InvalidInput(f"decision must be one of {', '.join(DECISIONS)}.")
        change = _Change(self.hapi, self.locks)
        task = await self._open_task(change, task_id)
        a, b, focus = await self.pair_goldens(change, task)
        compared = await self._compared_record(focus, b)
        if decision == SAME_PERSON:
            if a["id"] != b["id"]:
                keep, lose = _survivor(a, b, survivor)
                await self._merge(change, keep, lose)
                await self._retarget_reviews(change, keep, lose, admin, decided=task_id)
                goldens: tuple[str, ...] = (keep["id"], lose["id"])
            else:
                goldens = (a["id"],)
        else:
            if a["id"] == b["id"]:
                raise Conflict(
                    "These records already belong to the same person; use break or move to split them."
                )
            change.put(_distinct(a, b["id"]))
            change.put(_distinct(b, a["id"]))
            goldens = (a["id"], b["id"])
        closed = close_task(task, decision, admin.name, compared=compared)
        audit_id = await change.commit(
            admin, decision, task=closed, task_before=task.get("status"), note=note
        )
        return Outcome(decision, audit_id, goldens, task_id)

    async def _compared_record(self, focus: str | None, other: Resource) -> str | None:
        """The other person's record the pair page shows beside the focus record (read outside the unit of
        work: only ids are kept, nothing of them is written)."""
        ids = [s for s in records.source_ids_of(other) if s != focus][:100]
        if not ids:
            return None
        found = await self.hapi.search(
            "Patient", {"_id": ",".join([*ids, *([focus] if focus else [])]), "_count": str(len(ids) + 1)}
        )
        by_id = {r["id"]: r for r in found}
        others = [by_id[s] for s in ids if s in by_id]
        return closest_record(by_id.get(focus or ""), others, other["id"], self.rules)

    async def _merge(self, change: _Change, keep: Resource, lose: Resource) -> None:
        moved = records.source_ids_of(lose)
        sources = await asyncio.gather(*(change.patient(s) for s in moved))
        survivor = records.clone(keep)
        # one person now: a record its POS merged into another of them keeps that merge (the admin decided
        # about people, not about the POS's records), so it still follows its survivor; the rest are manual
        together = {*moved, *records.source_ids_of(keep)}
        for sid, source in zip(moved, sources, strict=True):
            if source is not None:
                kept_merge = records.pos_survivor(source) in together
                change.put(
                    records.relinked(source, keep["id"])
                    if kept_merge
                    else manually_linked(source, keep["id"])
                )
                survivor = records.with_source(survivor, sid)
        merged_distinct = (records.distinct_from(keep) | records.distinct_from(lose)) - {
            keep["id"],
            lose["id"],
        }
        change.put(golden_with(survivor, distinct_from=sorted(merged_distinct), active=True))
        change.put(golden_with(lose, sources=[], active=False, replaced_by=keep["id"], distinct_from=[]))

    async def _retarget_reviews(
        self,
        change: _Change,
        keep: Resource,
        lose: Resource,
        admin: Admin,
        resolved: str = RESOLVED_BY_MERGE,
        decided: str | None = None,
    ) -> None:
        """The other open review Tasks naming ``lose`` (merged into ``keep``, or emptied by a move to it)
        follow it to ``keep`` in this decision's transaction (:func:`retarget.follow_successor`), each in its
        AuditEvent; ``decided``: the Task this decision closes itself."""
        try:
            found = await retarget.open_reviews_naming(self.hapi, lose["id"])
        except Unprocessable as exc:  # review-candidate not installed (yet): deciding now would miss Tasks
            if self.index is not None:
                self.index.start(self.hapi)
            raise UpstreamUnavailable(
                "The review search parameters are being installed; try the decision again shortly."
            ) from exc
        await retarget.follow_successor(
            sorted(set(found) - {decided}),
            keep,
            lose,
            read=change.task,
            put=change.put,
            resolved=resolved,
            decided_by=admin.name,
        )

    @_one_at_a_time("golden_id", "source_id")
    async def break_out(
        self, golden_id: str, source_id: str, admin: Admin, note: str | None = None
    ) -> Outcome:
        change = _Change(self.hapi, self.locks)
        golden = await change.require(golden_id, "Golden record")
        if source_id not in records.source_ids_of(golden):
            if (done := await self._retried(BREAK, source_id, admin, left=golden_id)) is not None:
                return done
            raise InvalidInput(f"Patient/{source_id} is not a source record of Patient/{golden_id}.")
        if records.source_ids_of(golden) == [source_id]:
            raise InvalidInput("This is the golden record's only source record; there is nothing to split.")
        source = await change.require(source_id, "Source record")
        new_id = records.new_golden_id()
        taken, left = await self._take_along(change, source_id, golden, new_id)
        if not records.source_ids_of(left):
            raise InvalidInput(
                "The golden record's other source records are ones its point-of-service system merged into "
                "it; they go with it, so there is nothing to split. Move or break out a merged record to "
                "overrule its POS's merge."
            )
        await change.patient(new_id)
        fresh = records.new_golden(new_id, self.cruid_system)
        for moved in taken:
            fresh = records.with_source(fresh, moved)
        change.put(_distinct(fresh, golden_id))
        change.put(_distinct(left, new_id))
        change.put(manually_linked(source, new_id))
        audit_id = await change.commit(admin, BREAK, note=note)
        return Outcome(BREAK, audit_id, (golden_id, new_id))

    @_one_at_a_time("source_id", "target_id")
    async def move(self, source_id: str, target_id: str, admin: Admin, note: str | None = None) -> Outcome:
        change = _Change(self.hapi, self.locks)
        source = await change.require(source_id, "Source record")
        if records.is_golden(source):
            raise InvalidInput(f"Patient/{source_id} is a golden record, not a source record.")
        target = await change.require(target_id, "Golden record")
        if not records.is_golden(target) or records.replaced_by(target):
            raise InvalidInput(f"Patient/{target_id} is not a live golden record.")
        current = records.golden_id_of(source)
        if current == target_id:
            if (done := await self._retried(MOVE, source_id, admin, joined=target_id)) is not None:
                return done
            raise InvalidInput("The source record already belongs to that golden record.")
        old = await change.patient(current) if current else None
        taken, left = [source_id], None
        if old is not None:
            taken, left = await self._take_along(change, source_id, old, target_id)
            change.put(left)
        for moved in taken:
            target = records.with_source(target, moved)
        change.put(target)
        if left is not None and records.replaced_by(left) == target_id:  # emptied: its Tasks follow
            await self._retarget_reviews(change, target, left, admin, RESOLVED_BY_MOVE)
        change.put(manually_linked(source, target_id))
        audit_id = await change.commit(admin, MOVE, note=note)
        return Outcome(MOVE, audit_id, tuple(g for g in (current, target_id) if g))

    async def _retried(
        self, action: str, source_id: str, admin: Admin, *, left: str = "", joined: str = ""
    ) -> Outcome | None:
        """The outcome of ``admin``'s own last decision ``action`` on ``source_id`` when it took the record
        off ``left`` (or to ``joined``) and nothing changed its link since: the admin's retry of a decision
        HAPI committed but whose answer was lost (504). Answered the same, nothing written; else None."""
        last = await self.last_decision(source_id)
        if last is None or _action_of(last) != action or _admin_of(last) != admin.name:
            return None
        states = _patient_states(last).get(source_id)
        current = await self.hapi.read("Patient", source_id)
        if states is None or current is None or records.link_state(current) != states[1]:
            return None
        before, after = states[0].get("golden"), states[1].get("golden")
        if (left and before != left) or (joined and after != joined):
            return None
        return Outcome(action, str(last["id"]), tuple(g for g in (before, after) if g))

    async def _take_along(
        self, change: _Change, source_id: str, golden: Resource, to_id: str
    ) -> tuple[list[str], Resource]:
        """An admin moves ``source_id`` off ``golden`` to ``to_id``: the records of ``golden`` its POS merged
        into it go along, staged on ``to_id`` with their POS merge kept (the POS's statement still holds;
        undo restores them from the same AuditEvent). Returns the ids leaving (``source_id`` first) and
        ``golden`` without them (``replaced-by`` ``to_id`` when none is left), not yet staged."""
        others = [s for s in records.source_ids_of(golden) if s != source_id]
        await change.uow.prefetch("Patient", others)  # one search per 50 records, not a read each
        found = await asyncio.gather(*(change.patient(s) for s in others))
        on_golden = [s for s in found if s is not None and records.golden_id_of(s) == golden["id"]]
        followers = linking.followers(source_id, on_golden)
        by_id = {s["id"]: s for s in on_golden}
        for follower in followers:
            change.put(records.relinked(by_id[follower], to_id))
        # the records staying: none may become a follower meanwhile (its POS merging it into one leaving
        # changes neither that one nor this golden record, so no other If-Match would refuse the decision)
        for record in found:
            if record is not None:
                await change.uow.hold("Patient", record["id"])
        left = golden
        for moved in (source_id, *followers):
            left = records.without_source(left, moved, moved_to=to_id)
        return [source_id, *followers], left

    @_one_at_a_time("source_id")
    async def confirm(self, source_id: str, admin: Admin, note: str | None = None) -> Outcome:
        change = _Change(self.hapi, self.locks)
        source = await change.require(source_id, "Source record")
        golden_id = records.golden_id_of(source)
        if records.is_golden(source) or not golden_id:
            raise InvalidInput(f"Patient/{source_id} is not a linked source record.")
        if records.is_manually_linked(source):
            raise Conflict("This link was already decided by a person.")
        change.put(manually_linked(source, golden_id))
        audit_id = await change.commit(admin, CONFIRM, note=note)
        return Outcome(CONFIRM, audit_id, (golden_id,))

    async def undo_last(self, patient_id: str, admin: Admin, decision_id: str | None = None) -> Outcome:
        """Undo the last decision touching ``patient_id``, under the key locks of that record and of every
        source record the decision changed (``src:``, as a POS merge into one of them takes: asked by a
        merged record, the undo of a move of its survivor takes turns with a merge into the survivor). The
        decision is looked up again once they are held: another undo or decision meanwhile is a 409.
        ``decision_id``: the decision the admin was shown as the last one. It is undone only while it still
        is; once this admin has undone it (a retry after a lost answer), the answer is that undo's, nothing
        written (without it, a retry would undo the decision before it too); otherwise 409."""
        if decision_id is not None and not is_fhir_id(decision_id):
            raise InvalidInput("decision must be the id of an AuditEvent.")
        last = await self.last_decision(patient_id)
        if decision_id is not None and (last is None or last["id"] != decision_id):
            return await self._undone_before(patient_id, decision_id, admin)
        if last is None:
            raise NotFound(f"No decision on Patient/{patient_id} to undo.")
        sources = {r for r in (patient_id, *_patient_states(last)) if r.startswith("src-")}
        keys = [f"curation:{patient_id}", *(f"src:{r}" for r in sources)]
        async with self.locks.hold(keys):
            again = await self.last_decision(patient_id)
            if again is None or again["id"] != last["id"]:
                if decision_id is not None:  # the same undo, retried while the first was being written
                    return await self._undone_before(patient_id, decision_id, admin)
                raise Conflict("Another decision on this record was made or undone meanwhile; look again.")
            return await self._undo(last, admin)

    async def _undone_before(self, patient_id: str, decision_id: str, admin: Admin) -> Outcome:
        """The outcome of ``admin``'s undo of ``decision_id``, as that undo answered it; 409 when there is
        none (the decision is not the last one on ``patient_id``, or another admin undid it)."""
        events = await self.hapi.search(
            "AuditEvent",
            {
                "entity": f"AuditEvent/{decision_id}",
                "subtype": f"{ADMIN_ACTION_SYSTEM}|{UNDO}",
                "_count": "20",
            },
            max_results=20,
        )
        undos = [ev for ev in events if _action_of(ev) == UNDO]
        mine = next((ev for ev in undos if _admin_of(ev) == admin.name), None)
        if mine is None:
            by = f" (undone by {_admin_of(undos[0])})" if undos else ""
            raise Conflict(
                f"AuditEvent/{decision_id} is not the last decision on Patient/{patient_id} any more{by}; "
                "look again."
            )
        states = _patient_states(mine)
        goldens = tuple(
            r for r, (before, after) in states.items() if "golden" in (before["kind"], after["kind"])
        )
        task = next(
            (
                entity["what"]["reference"].split("/", 1)[1]
                for entity in mine.get("entity", [])
                if any(d.get("type") == "status-before" for d in entity.get("detail", []))
            ),
            None,
        )
        return Outcome(UNDO, str(mine["id"]), goldens, task)

    async def _undo(self, last: Resource, admin: Admin) -> Outcome:
        change = _Change(self.hapi, self.locks)
        task: Resource | None = None
        task_before: str | None = None
        goldens: list[str] = []
        leaving: list[str] = []  # source records the undo takes off the golden record they are on now
        for entity in last.get("entity", []):
            reference = entity.get("what", {}).get("reference", "")
            details = {d.get("type"): d.get("valueString") for d in entity.get("detail", [])}
            if reference.startswith("Patient/") and "before" in details:
                rid = reference.split("/", 1)[1]
                before, after = json.loads(details["before"]), json.loads(details["after"])
                current = await change.patient(rid)
                if current is None or records.link_state(current) != after:
                    raise Conflict(
                        f"Patient/{rid} changed after that decision; undo the later decisions first."
                    )
                change.put(records.with_link_state(current, before))
                if after["kind"] == "golden" or before["kind"] == "golden":
                    goldens.append(rid)
                elif after.get("golden") != before.get("golden"):
                    leaving.append(rid)
            elif reference.startswith("Task/"):
                tid = reference.split("/", 1)[1]
                stored, restored = await self._undo_task(change, tid, details, admin)
                if "status-before" in details:  # the decided Task: reopened by commit, with the audit link
                    task, task_before = restored, stored.get("status")
                else:
                    change.put(restored)
        await self._no_follower_left_behind(change, goldens, leaving)
        audit_id = await change.commit(admin, UNDO, task=task, task_before=task_before, undoes=last["id"])
        return Outcome(UNDO, audit_id, tuple(goldens), task["id"] if task else None)

    async def _no_follower_left_behind(self, change: _Change, goldens: list[str], leaving: list[str]) -> None:
        """409 when a POS merged a record the undone decision did not touch into one the undo takes away
        (its person's golden record unchanged: it was on it already), which would leave it behind on
        another person than its survivor. The other records of those golden records are held
        (``If-Match``): one merged meanwhile refuses the undo too."""
        named = set(change.before)
        others: list[Resource] = []
        for golden_id in goldens:
            golden = await change.patient(golden_id)
            ids = [s for s in records.source_ids_of(golden or {}) if s not in named]
            await change.uow.prefetch("Patient", ids)
            others.extend(r for r in await asyncio.gather(*(change.patient(s) for s in ids)) if r is not None)
        for record in others:
            await change.uow.hold("Patient", record["id"])
        for rid in leaving:
            behind = linking.followers(rid, others)
            if behind:
                raise Conflict(
                    f"Patient/{behind[0]} was merged into Patient/{rid} by its point-of-service system after "
                    "that decision; undoing it would leave that record on another person than its survivor. "
                    "Move it first."
                )

    async def _undo_task(
        self, change: _Change, task_id: str, details: dict[str, Any], admin: Admin
    ) -> tuple[Resource, Resource]:
        """(the Task now, the Task as it was before the decision); 409 if the Task changed since. A Task the
        decision created is withdrawn (``entered-in-error``: out of the queue, raised again when due)."""
        stored = await change.task(task_id)
        if "review-after" in details:
            expected = json.loads(details["review-after"])
        else:  # a decided Task in an AuditEvent written before review states were kept
            expected = {"status": details.get("status-after")}
        now = _review_state(stored) or {}
        if stored is None or any(now.get(k) != v for k, v in expected.items()):
            raise Conflict(
                f"Task/{task_id} changed after that decision; it was decided or raised again since."
            )
        if "task-before" in details:
            before = json.loads(details["task-before"])
        else:  # older AuditEvents: the review state before, on the Task as it is now
            review = json.loads(details["review-before"]) if "review-before" in details else {}
            before = (
                _with_review(stored, review, details.get("status-before")) if review is not None else None
            )
        if before is None:
            return stored, close_task(stored, UNDONE, admin.name, status=WITHDRAWN)
        return stored, {**before, "id": task_id}

    async def last_decision(self, patient_id: str) -> Resource | None:
        """The latest admin decision touching the record that is not itself an undo nor undone."""
        events = await self.hapi.search(
            "AuditEvent",
            {
                "entity": records.ref(patient_id),
                "subtype": f"{ADMIN_ACTION_SYSTEM}|",
                "_sort": "-_lastUpdated",  # never updated: when written; no join on the date index table
                "_count": "200",
            },
            max_results=200,
        )
        undone = {
            ref.split("/", 1)[1]
            for ev in events
            if _action_of(ev) == UNDO
            for e in ev.get("entity", [])
            if (ref := e.get("what", {}).get("reference", "")).startswith("AuditEvent/")
        }
        for ev in events:
            if _action_of(ev) != UNDO and ev["id"] not in undone:
                return ev
        return None


def _action_of(ev: Resource) -> str | None:
    for coding in ev.get("subtype", []):
        if coding.get("system") == ADMIN_ACTION_SYSTEM and isinstance(coding.get("code"), str):
            return str(coding["code"])
    return None


def _admin_of(ev: Resource) -> str | None:
    agents = ev.get("agent", [])
    value = agents[0].get("who", {}).get("identifier", {}).get("value") if agents else None
    return value if isinstance(value, str) else None


def _patient_states(ev: Resource) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """The link state before and after of each Patient a decision's AuditEvent names."""
    out = {}
    for entity in ev.get("entity", []):
        reference = entity.get("what", {}).get("reference", "")
        details = {d.get("type"): d.get("valueString") for d in entity.get("detail", [])}
        if reference.startswith("Patient/") and "before" in details and "after" in details:
            out[reference.split("/", 1)[1]] = (json.loads(details["before"]), json.loads(details["after"]))
    return out


def _task_snapshot(task: Resource | None) -> Resource | None:
    """The Task as a decision found it, without HAPI's version bookkeeping (undo puts it back as is)."""
    if task is None:
        return None
    out = records.clone(task)
    meta = out.get("meta", {})
    for key in ("versionId", "lastUpdated", "source"):
        meta.pop(key, None)
    if not meta:
        out.pop("meta", None)
    return out


def _review_state(task: Resource | None) -> dict[str, Any] | None:
    if task is None:
        return None
    return {
        "status": task.get("status"),
        "for": records.ref_id(task.get("for", {}).get("reference")),
        "candidate": retarget.task_candidate(task),
    }


def _with_review(task: Resource, review: dict[str, Any], status: str | None) -> Resource:
    """``task`` open again (or in ``status``) with the subject and candidate of ``review`` (if known)."""
    out = records.clone(task)
    if review.get("for") and review.get("candidate"):
        out = retarget.retargeted(out, review["for"], review["candidate"])
    out["status"] = review.get("status") or status or OPEN
    out.pop("output", None)
    out.pop("businessStatus", None)
    out["lastModified"] = instant()
    return out


def _distinct(golden: Resource, other_id: str) -> Resource:
    return golden_with(golden, distinct_from=sorted(records.distinct_from(golden) | {other_id}))


def _survivor(a: Resource, b: Resource, wanted: str | None) -> tuple[Resource, Resource]:
    if wanted is not None:
        if wanted == a["id"]:
            return a, b
        if wanted == b["id"]:
            return b, a
        raise InvalidInput("survivor must be one of the two golden records of the pair.")
    # default: the golden record with more sources keeps its CRUID (ties: the established candidate)
    return (a, b) if len(records.source_ids_of(a)) > len(records.source_ids_of(b)) else (b, a)
