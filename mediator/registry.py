"""The registry workflow for one submitted Patient.

    source key → lock → read own record → candidates (one grouped ``_tag`` search on its blocking keys)
    → ``matching.decide`` → choose the golden record → stage source, golden(s), review Tasks, AuditEvent
    → one HAPI transaction (``If-Match`` on every updated record) → answer

A Patient its point-of-service system merged into another of its records (one ``replaced-by`` link, IHE
PMIR) skips matching: it is linked to its survivor's golden record (:meth:`Registry._process_merge`).

A version conflict (someone changed a golden record meanwhile) restarts from fresh reads.

Single submissions that arrive while :data:`SHARED_WRITES` transactions of single submissions are being
written wait and are decided together, in arrival order, as one transaction (the bulk path,
:meth:`Registry.submit_all`), each with its own answer and AuditEvent; a lone submission goes straight
through.
Golden records are taken from :class:`~mediator.unit_of_work.KnownRecords` in the version last seen.
Details: ``docs/internals.md``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

import matching

from . import linking, records, retarget
from .audit import Actor, RecordDecision, groups, submission_event
from .config import ConfigHolder, RegistryConfig
from .errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    RegistryError,
    Unprocessable,
    UpstreamError,
    UpstreamUnavailable,
)
from .fhir_client import CallRecord, CallRecorder, HapiClient, current_recorder
from .locks import LockManager
from .metrics import Metrics
from .records import Resource
from .review import OPEN, POSSIBLE_DUPLICATE, POTENTIAL_MATCH, WITHDRAWN, review_task
from .settings import SHARED_WRITES
from .tagged_sources import TaggedSources
from .unit_of_work import KnownRecords, UnitOfWork

log = logging.getLogger(__name__)

OFF_LOOP_CANDIDATES = 64  # score this many pairs or more in a worker thread
SHARED_MAX = 50  # submissions in one shared transaction at most (a bulk batch's size)
GOLDEN_RECORDS_KEPT = 100_000  # golden records held in their last known version (≈ 1 KB each)


@dataclass(frozen=True)
class Submission:
    patient: Mapping[str, Any]
    actor: Actor
    target_id: str | None = None  # PUT Patient/{id}
    conditional: tuple[str, str] | None = None  # PUT Patient?identifier=system|value


@dataclass(frozen=True)
class Prepared:
    submission: Submission
    source_system: str
    source_value: str
    source_id: str
    block_keys: list[str]  # matching.keys_of(...).index of the submitted Patient: its block tags
    search_keys: list[str]  # ….search: its candidates are searched by these, and locked over them
    config: RegistryConfig  # what it was prepared (checked, keyed) under
    values: matching.Prepared  # the Patient's normalised field values under config.rules (for deciding)
    merge: linking.MergeLink | None = None  # its POS merged it into another of its records (replaced-by)


@dataclass(frozen=True)
class SubmissionResult:
    created: bool
    source_id: str
    golden_id: str
    cruid: str
    outcome: str
    score: float | None
    rule: str
    identifiers: tuple[Mapping[str, Any], ...]
    version: str | None = None

    def response_patient(self, cruid_system: str) -> dict[str, Any]:
        """What the POS gets back: its own identifiers and the CRUID — nothing else."""
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "id": self.source_id,
            "identifier": [
                *self.identifiers,
                {"use": "official", "system": cruid_system, "value": self.cruid},
            ],
            "link": [{"other": {"reference": records.ref(self.golden_id)}, "type": "refer"}],
        }
        if self.version:
            patient["meta"] = {"versionId": self.version}
        return patient


class Registry:
    def __init__(
        self,
        hapi: HapiClient,
        config: ConfigHolder,
        locks: LockManager,
        conflict_retries: int = 5,
        sources: TaggedSources | None = None,
    ):
        self.hapi = hapi
        # candidates by blocking tag, through this process's cache of source records (checked by version)
        self.sources = sources if sources is not None else TaggedSources(hapi)
        self.config = config
        self.locks = locks
        self.conflict_retries = conflict_retries
        self.metrics: Metrics | None = None  # set by the app: decisions and conflict retries
        # live golden records in the version last written or read (a stale one: HAPI refuses the write)
        self.goldens = KnownRecords(_live_golden, GOLDEN_RECORDS_KEPT)
        self.shared_writes = SHARED_WRITES  # 0: every single submission is its own transaction
        self._writing = 0  # transactions of single submissions being decided and written now
        self._waiting: deque[_Waiting] = deque()
        self._shared_tasks: set[asyncio.Task[None]] = set()

    # -- entry points -------------------------------------------------------------------------------

    async def submit(self, submission: Submission) -> SubmissionResult:
        """One submission, with its own answer. With fewer than :attr:`shared_writes` transactions of single
        submissions in flight it goes straight through, in this task; otherwise it waits, with the others
        arriving meanwhile, for the next transaction to finish, and they are decided together in arrival order
        and written as one transaction (:meth:`_write_shared`). Nothing waits for company: the wait is for a
        transaction in flight, which every submission would otherwise hold up anyway."""
        if self.shared_writes <= 0:
            return (await self.submit_all([submission]))[0]
        await self.config.settled()
        prepared = self.prepare(submission, self.config.current)  # its own refusal, before anything is shared
        if self._writing < self.shared_writes and not self._waiting:
            self._writing += 1
            try:
                return (await self.submit_all([prepared]))[0]
            finally:
                self._writing -= 1
                self._start_shared()
        waiting = _Waiting(prepared, asyncio.get_running_loop().create_future(), current_recorder.get())
        self._waiting.append(waiting)
        self._start_shared()
        return await waiting.future  # cancelled with its request: left out of the transaction if not in yet

    async def submit_all(self, submissions: Sequence[Submission | Prepared]) -> list[SubmissionResult]:
        """Decide and write several submissions as one all-or-nothing HAPI transaction. A submission may come
        already :meth:`prepare`-d (a bulk load prepares rows to group them); it is prepared again if the
        configuration (rules, client systems) changed meanwhile."""
        results, _ = await self._write(submissions, shared=False)
        return results

    # -- shared transactions --------------------------------------------------------------------------

    def _start_shared(self) -> None:
        """Start the next shared transaction(s) while there are waiting submissions and room in flight."""
        while self._waiting and self._writing < max(1, self.shared_writes):
            members = self._take_waiting()
            if not members:
                continue
            self._writing += 1
            # a context of its own: not the recorder (OpenHIM orchestrations) of the request that started it
            task = asyncio.create_task(self._write_shared(members), context=contextvars.Context())
            self._shared_tasks.add(task)
            task.add_done_callback(self._shared_tasks.discard)

    def _take_waiting(self) -> list[_Waiting]:
        """The waiting submissions, oldest first, up to the first one of a record already taken (it goes in
        the next transaction, in its turn) or :data:`SHARED_MAX`; cancelled ones are dropped."""
        members: list[_Waiting] = []
        ids: set[str] = set()
        while self._waiting and len(members) < SHARED_MAX:
            first = self._waiting[0]
            if first.future.done():
                self._waiting.popleft()
                continue
            if first.prepared.source_id in ids:
                break
            ids.add(first.prepared.source_id)
            members.append(self._waiting.popleft())
        return members

    async def _write_shared(self, members: list[_Waiting]) -> None:
        try:
            if len(members) == 1:
                await self._write_alone(members[0])
            else:
                await self._write_together(members)
        finally:
            self._writing -= 1
            self._start_shared()

    async def _write_alone(self, member: _Waiting) -> None:
        """``member`` as its own transaction, its HAPI calls recorded for its own request."""
        token = current_recorder.set(member.recorder)
        try:
            results, _ = await self._write([member.prepared], shared=False)
        except asyncio.CancelledError:
            member.cancel()
            raise
        except Exception as error:  # handed to the request that waits for it
            member.fail(error)
        else:
            member.answer(results[0])
        finally:
            current_recorder.reset(token)

    async def _write_together(self, members: list[_Waiting]) -> None:
        """One transaction for ``members``, decided in order as a bulk batch is, each with its own entities in
        its client's AuditEvent; its HAPI calls are shown to each member's request limited to what is its
        own. A refusal of any member or a version conflict splits it: each member is then decided again
        alone, in order, so one member's failure fails no other and each gets what it would have alone. A
        failure of the FHIR store itself fails them all, as it would each alone (a timed-out transaction may
        have been written)."""
        recorder = CallRecorder() if any(m.recorder is not None for m in members) else None
        token = current_recorder.set(recorder)
        try:
            results, owners = await self._write([m.prepared for m in members], shared=True)
        except asyncio.CancelledError:
            for m in members:
                m.cancel()
            raise
        except Exception as error:
            failure: BaseException | None = error
            split = isinstance(error, RegistryError) and not isinstance(error, UpstreamError)
            results, owners = [], {}
        else:
            failure, split = None, False
        finally:
            current_recorder.reset(token)
        if recorder is not None:
            for m in members:
                if m.recorder is not None:
                    own = m.prepared.source_id
                    mine = {key for key, who in owners.items() if own in who}
                    m.recorder.calls.extend(_shared_calls(recorder.calls, mine, own, len(members)))
        if failure is None:
            for m, result in zip(members, results, strict=True):
                m.answer(result)
            return
        if not split:
            for m in members:
                m.fail(failure)
            return
        log.info(
            "shared transaction split",
            extra={"members": len(members), "reason": type(failure).__name__},
        )
        if self.metrics is not None and isinstance(failure, Conflict):
            self.metrics.conflict_retries.inc()
        for m in members:
            await self._write_alone(m)

    async def _write(
        self, submissions: Sequence[Submission | Prepared], *, shared: bool
    ) -> tuple[list[SubmissionResult], dict[str, set[str]]]:
        """The transaction of ``submissions``; and, ``shared``: what each staged ("Type/id" -> source ids).
        One AuditEvent per client (:func:`_audit_events`); shared: no retry here (the caller splits)."""
        await self.config.settled()  # the applied rules are read (HAPI was unreachable at start-up)
        cfg = self.config.current
        if not submissions:
            return [], {}
        prepared = [  # raises before anything is written
            s if isinstance(s, Prepared) and s.config is cfg else self.prepare(_submission(s), cfg)
            for s in submissions
        ]
        ids = [p.source_id for p in prepared]
        if len(set(ids)) != len(ids):
            raise InvalidInput("The same source identifier appears twice in one transaction.")
        keys = set()
        for p in prepared:
            keys.add(f"src:{p.source_id}")
            # a record filed under a key another one searches by is found by it: both hold that key
            # (search keys include index keys), so they never decide at the same time
            keys.update(f"blk:{k}" for k in p.search_keys)
            if p.merge is not None:  # its survivor's golden record is the one it joins
                keys.add(f"src:{p.merge.survivor_id}")
        started = time.perf_counter()
        retries = 1 if shared else self.conflict_retries
        async with self.locks.hold(keys):
            for attempt in range(1, retries + 1):
                # after a conflict, everything read again: a golden record held may be the stale one
                uow = UnitOfWork(self.hapi, self.sources, self.goldens, fresh=attempt > 1)
                if len(prepared) > 1:
                    # shared: own records taken from the listing, as alone (a wrong belief splits it)
                    foreseen = await self._prefetch(uow, prepared, cfg, optimistic=shared)
                else:  # one grouped search for all its keys: each candidate comes back once, not per key
                    foreseen = None
                    await uow.prefetch_blocks([prepared[0].search_keys], cfg.max_candidates)
                # alone, first try: its own record is taken from the candidate listing (absent if not listed)
                optimistic = attempt == 1 and len(prepared) == 1
                processed = []
                for p in prepared:
                    uow.owner = p.source_id
                    result, decision = await self._process(p, uow, cfg, foreseen, optimistic)
                    processed.append((result, decision))
                uow.owner = None
                results = [result for result, _ in processed]
                for event, sources in _audit_events(prepared, [d for _, d in processed]):
                    uow.put(event, owners=sources)
                await self.locks.confirm()  # still alone with these keys (503, nothing written, if not)
                try:
                    versions = await uow.commit()
                except Conflict:
                    if attempt == retries:
                        raise
                    log.info("version conflict, retrying", extra={"attempt": attempt})
                    if self.metrics is not None:
                        self.metrics.conflict_retries.inc()
                    continue
                elapsed_ms = (time.perf_counter() - started) * 1000
                out = []
                for r in results:
                    version = versions.get(f"Patient/{r.source_id}")
                    out.append(replace(r, version=version))
                    if self.metrics is not None:
                        self.metrics.decisions.labels(r.outcome).inc()
                    log.info(
                        "submission decided",
                        extra={
                            "source_id": r.source_id,
                            "golden_id": r.golden_id,
                            "outcome": r.outcome,
                            "score": r.score,
                            "new_record": r.created,
                            "ms": round(elapsed_ms, 1),
                            "shared": len(prepared) if shared else 0,
                        },
                    )
                return out, uow.owners
        raise Conflict("Too many concurrent changes; retry the request.")  # pragma: no cover

    async def decide_query(self, patient: Mapping[str, Any], cfg: RegistryConfig) -> matching.Decision:
        """How ``patient`` would be decided if it were submitted now, nothing written: the source records
        sharing a blocking key with it, scored under ``cfg``'s rules (``Patient/$match``)."""
        keys = matching.keys_of(patient, cfg.rules)
        uow = UnitOfWork(self.hapi, self.sources, self.goldens)
        found = await uow.find_sources(keys.search, cfg.max_candidates)
        stored = (linking.Found(r["id"], records.golden_id_of(r), r) for r in found)
        candidates = linking.candidates("", stored, set())
        return await _decide(matching.prepare(patient, cfg.rules), candidates, {}, cfg.rules)

    # -- steps --------------------------------------------------------------------------------------

    def prepare(self, submission: Submission, cfg: RegistryConfig) -> Prepared:
        patient = submission.patient
        identifiers = [i for i in patient.get("identifier", []) if isinstance(i, Mapping)]
        for index, ident in enumerate(identifiers):
            if not ident.get("system") or not ident.get("value"):
                raise InvalidInput(
                    "Every identifier needs a system and a value.",
                    expression=[f"Patient.identifier[{index}]"],
                )
        client = submission.actor.client_id
        own = [i for i in identifiers if cfg.may_key(client, i["system"])]
        if not cfg.open_mode:
            foreign = sorted(
                {
                    i["system"]
                    for i in identifiers
                    if not cfg.may_key(client, i["system"])
                    and i["system"] not in cfg.shared_identifier_systems
                }
            )
            if foreign:
                raise Forbidden(
                    f"Client '{client}' may not submit identifiers of system(s): {', '.join(foreign)}."
                )
        if cfg.cruid_system in {i["system"] for i in identifiers}:
            raise Forbidden("CRUIDs are assigned by the registry and cannot be submitted.")
        if submission.conditional:
            system, value = submission.conditional
            if not any(i["system"] == system and i["value"] == value for i in own):
                raise InvalidInput(
                    "The conditional identifier must be one of the Patient's own identifiers of the client."
                )
        elif not own:
            raise Unprocessable(
                "The Patient has no identifier of the submitting system; shared identifiers "
                "(national ids) are matching evidence, not record keys.",
                expression=["Patient.identifier"],
            )
        # an update by id names its record: the own identifier it is keyed by, wherever the Patient lists it
        named = [i for i in own if records.source_record_id(i["system"], i["value"]) == submission.target_id]
        key = (named or own)[0]
        system, value = submission.conditional or (key["system"], key["value"])
        source_id = records.source_record_id(system, value)
        if submission.target_id is not None and submission.target_id != source_id:
            if submission.target_id.startswith("cr-"):
                raise Forbidden(
                    "Golden records are maintained by the registry and cannot be updated directly."
                )
            raise InvalidInput(
                f"Patient/{submission.target_id} is not the record of the identifier {system}|{value}."
            )
        merge = linking.merge_link(patient.get("link"), cfg.cruid_system)
        keys = matching.keys_of(patient, cfg.rules)
        values = matching.prepare(patient, cfg.rules)
        return Prepared(submission, system, value, source_id, keys.index, keys.search, cfg, values, merge)

    async def _process(
        self,
        prepared: Prepared,
        uow: UnitOfWork,
        cfg: RegistryConfig,
        foreseen: dict[str, _Foreseen] | None = None,
        optimistic: bool = False,
    ) -> tuple[SubmissionResult, RecordDecision]:
        submission = prepared.submission
        patient = submission.patient
        keys = prepared.block_keys
        existing, current, candidates = await self._candidates(prepared, uow, cfg, optimistic)
        if submission.target_id is not None and existing is None:
            raise NotFound(f"Patient/{submission.target_id} does not exist.")
        if prepared.merge is not None or (existing is not None and records.pos_survivor(existing)):
            return await self._process_merge(prepared, uow, cfg, existing, current)
        seen = (foreseen or {}).get(prepared.source_id)
        # decided ahead, also against the records earlier entries of the batch stage: nothing is scored again
        known = seen.known_scores(candidates, cfg.rules) if seen is not None else {}
        decision = await _decide(prepared.values, candidates, known, cfg.rules)
        target = await self._target(prepared, uow, existing, current, decision)

        golden = await self._golden(uow, target) if target else None
        if golden is None:
            golden = records.new_golden(records.new_golden_id(), cfg.cruid_system)
        golden_id = golden["id"]
        followers, left = await self._link(uow, prepared.source_id, golden, current)

        source = records.build_source_record(
            patient,
            prepared.source_id,
            client_id=submission.actor.client_id,
            golden_id=golden_id,
            block_keys=keys,
            manual=bool(existing and records.is_manually_linked(existing) and current == golden_id),
        )
        uow.put(source)

        await self._stage_reviews(uow, decision, prepared.source_id, golden_id)
        reviews = await self._follow_successor(uow, left, golden_id, submission.actor)
        audit = RecordDecision(
            action="update" if existing else "create",
            source_id=prepared.source_id,
            golden_id=golden_id,
            previous_golden_id=current,
            outcome=decision.outcome,
            score=decision.score,
            rule=decision.rule,
            transaction_id=submission.actor.transaction_id,
            moved_along=tuple(followers),
            reviews_followed=reviews,
        )
        result = SubmissionResult(
            created=existing is None,
            source_id=prepared.source_id,
            golden_id=golden_id,
            cruid=records.cruid_of(golden, cfg.cruid_system) or golden_id,
            outcome=decision.outcome,
            score=decision.score,
            rule=decision.rule,
            identifiers=_own_identifiers(patient, cfg),
        )
        return result, audit

    async def _process_merge(
        self,
        prepared: Prepared,
        uow: UnitOfWork,
        cfg: RegistryConfig,
        existing: Resource | None,
        current: str | None,
    ) -> tuple[SubmissionResult, RecordDecision]:
        """A record its POS merged into another of its records (IHE PMIR), now or before: no matching.
        It joins its survivor's golden record and keeps the ``replaced-by`` link with the ``pos-merge``
        decision (as an admin's link, matching never moves it); its old golden record loses it, and when
        other sources are left there an admin is asked whether the rest are the survivor's person too (a
        ``possible-duplicate`` Task). A resubmission without the link keeps the merge (undoing it is an
        admin's decision) and follows the survivor to its person now, if it still has one."""
        submission = prepared.submission
        source_id = prepared.source_id
        link = prepared.merge
        stored = records.pos_survivor(existing) if existing is not None else None
        survivor_id = link.survivor_id if link is not None else stored
        assert survivor_id is not None  # _process comes here with a link or a merged record
        survivor = await uow.peek("Patient", survivor_id)
        if link is not None:
            target: str | None = linking.merge_target(
                link, source_id, survivor, _may_write(cfg, submission.actor.client_id)
            )
        else:  # merged before: follow the survivor while it is a live source record of a person
            target = records.golden_id_of(survivor) if survivor and not records.is_golden(survivor) else None
        golden = await self._golden(uow, target) if target else None
        if golden is None and link is not None:
            raise Unprocessable(f"{link.where}: the survivor belongs to no person.", expression=[link.where])
        if golden is None:
            golden = await self._golden(uow, current) if current else None
        if golden is None:
            golden = records.new_golden(records.new_golden_id(), cfg.cruid_system)
        golden_id = golden["id"]
        await uow.hold("Patient", survivor_id)  # its golden record is no guard: unchanged within one person
        followers, left = await self._link(uow, source_id, golden, current)
        if current and left is not None and records.source_ids_of(left) and records.replaced_by(left) is None:
            task = review_task(
                kind=POSSIBLE_DUPLICATE,
                source_id=source_id,
                golden_id=golden_id,
                other_golden_id=current,
                score=None,
                rule=linking.POS_MERGE_RULE,
            )
            await self._stage_task(uow, task, golden_id)
        reviews = await self._follow_successor(uow, left, golden_id, submission.actor)
        uow.put(
            records.build_source_record(
                submission.patient,
                source_id,
                client_id=submission.actor.client_id,
                golden_id=golden_id,
                block_keys=prepared.block_keys,
                survivor=survivor_id,
            )
        )
        audit = RecordDecision(
            action="update" if existing else "create",
            source_id=source_id,
            golden_id=golden_id,
            previous_golden_id=current,
            outcome=linking.POS_MERGE_RULE,
            score=None,
            rule=linking.POS_MERGE_RULE,
            transaction_id=submission.actor.transaction_id,
            replaced_by=survivor_id,
            moved_along=tuple(followers),
            reviews_followed=reviews,
        )
        result = SubmissionResult(
            created=existing is None,
            source_id=source_id,
            golden_id=golden_id,
            cruid=records.cruid_of(golden, cfg.cruid_system) or golden_id,
            outcome=linking.POS_MERGE_RULE,
            score=None,
            rule=linking.POS_MERGE_RULE,
            identifiers=_own_identifiers(submission.patient, cfg),
        )
        return result, audit

    async def _link(
        self, uow: UnitOfWork, source_id: str, golden: Resource, current: str | None
    ) -> tuple[list[str], Resource | None]:
        """Stage ``golden`` with the source record, and when it leaves ``current`` for it, the records its POS
        merged into it with it (they go where it goes) and ``current`` without them. Returns those records and
        ``current`` as staged (None: not left, or gone)."""
        golden_id = golden["id"]
        if not current or current == golden_id:
            uow.put(records.with_source(golden, source_id))
            return [], None
        followers = await self._followers(uow, current, source_id)
        joined = records.with_source(golden, source_id)
        for follower in followers:
            joined = records.with_source(joined, follower)
        uow.put(joined)
        previous = await uow.read("Patient", current)
        if previous is not None:
            for moved in (source_id, *followers):
                previous = records.without_source(previous, moved, moved_to=golden_id)
            uow.put(previous)
            # the records staying: none may become a follower meanwhile (another replica's POS merge of one
            # into a record leaving changes neither that record nor ``current``: no other If-Match refuses)
            for staying in records.source_ids_of(previous):
                await uow.hold("Patient", staying)
        for follower in followers:
            record = await uow.read("Patient", follower)
            if record is not None:
                uow.put(records.relinked(record, golden_id))
        return followers, previous

    async def _follow_successor(
        self, uow: UnitOfWork, left: Resource | None, golden_id: str, actor: Actor
    ) -> tuple[str, ...]:
        """When the relink left its person ``left`` without records (now ``replaced-by`` ``golden_id``),
        the open review Tasks naming it, the ones staged here included, follow it to ``golden_id`` as after
        an admin merge (:func:`retarget.follow_successor`); the ids of the Tasks staged. Only then is HAPI
        searched: a relink that leaves records behind costs nothing more."""
        if left is None or records.source_ids_of(left) or records.replaced_by(left) != golden_id:
            return ()
        keep = await uow.peek("Patient", golden_id)
        assert keep is not None  # _link staged it
        try:
            found = await retarget.open_reviews_naming(self.hapi, left["id"])
        except Unprocessable as exc:  # review-candidate not installed yet: the app installs it at start-up
            raise UpstreamUnavailable(
                "The review search parameters are being installed; retry the submission shortly."
            ) from exc
        for task_id, task in found.items():
            uow.assume("Task", task_id, task)
        staged = {key.split("/", 1)[1] for key in uow.staged if key.startswith("Task/")}
        moved = await retarget.follow_successor(
            sorted({*found, *staged}),
            keep,
            left,
            read=lambda task_id: uow.read("Task", task_id),
            put=uow.put,
            resolved=retarget.RESOLVED_BY_MOVE,
            decided_by=actor.client_id or "anonymous",
        )
        return tuple(moved)

    async def _candidates(
        self, prepared: Prepared, uow: UnitOfWork, cfg: RegistryConfig, optimistic: bool = False
    ) -> tuple[Resource | None, str | None, list[matching.Candidate]]:
        """The entry's own stored record, its current golden id and the candidates to score: source records
        sharing a blocking key, except itself and the people its person was decided to be different from.

        ``optimistic``: the own record is not read. A stored record carries the keys it is searched by
        unless its demographics changed entirely, so it comes with the candidates, in its current version;
        not among them, it is taken as never stored (a new identifier: the read would be a 404). Written
        with ``If-Match`` on that belief, a wrong one is refused by HAPI and decided again with a read.
        Not for an update by id (a record not listed must be a 404 only once it was read)."""
        if optimistic and prepared.submission.target_id is None:
            found = await uow.find_sources(prepared.search_keys, cfg.max_candidates)
            listed = next((r for r in found if r["id"] == prepared.source_id), None)
            uow.assume("Patient", prepared.source_id, listed)
            existing = await uow.peek("Patient", prepared.source_id)
        else:
            existing, found = await asyncio.gather(
                uow.peek("Patient", prepared.source_id),
                uow.find_sources(prepared.search_keys, cfg.max_candidates),
            )
        current = records.golden_id_of(existing) if existing else None
        current_golden = await uow.peek("Patient", current) if current else None
        never = records.distinct_from(current_golden) if current_golden else set()
        stored = (linking.Found(r["id"], records.golden_id_of(r), r) for r in found)
        return existing, current, linking.candidates(prepared.source_id, stored, never)

    async def _target(
        self,
        prepared: Prepared,
        uow: UnitOfWork,
        existing: Resource | None,
        current: str | None,
        decision: matching.Decision,
    ) -> str | None:
        manual = existing is not None and records.is_manually_linked(existing)
        auto = decision.auto_match_goldens()
        others = await self._other_sources(uow, current, prepared.source_id) if current else set()
        target = linking.choose_golden(
            current=current, manual=manual, auto=auto, current_has_others=bool(others)
        )
        if others and target != current:  # leaving its person: are the others only records merged into it?
            rest = others - set(await self._followers(uow, current, prepared.source_id))
            target = linking.choose_golden(
                current=current, manual=manual, auto=auto, current_has_others=bool(rest)
            )
        return target

    async def _prefetch(
        self, uow: UnitOfWork, prepared: Sequence[Prepared], cfg: RegistryConfig, optimistic: bool = False
    ) -> dict[str, _Foreseen]:
        """Batch the reads that ``_process`` would make one entry at a time: the entries' own records and
        current golden records, their candidate searches (a few grouped ``_tag`` searches), then the golden
        records and review Tasks the entries' decisions will touch. Same reads, same locks held, so the same
        decisions; ``_process`` then finds them in the unit of work's cache.

        To know which golden records and Tasks will be needed, each entry is decided here on what HAPI holds
        (not on what earlier entries of the batch stage); ``_process`` reuses its pair scores for the
        candidates that are still the very same records. The records earlier entries of the batch will
        stage under keys an entry searches by are scored against it here too, in the same comparison, from
        the values they are submitted with, so ``_process`` scores nothing again when they turn up.
        Reading only the golden records the decisions touch, not the golden record of every candidate, is
        most of what a bulk batch reads at 100k stored (≈ 10 golden records per entry).

        ``optimistic``: the entries' own records are taken from the candidate listing as a lone submission
        takes its own (:meth:`_candidates`), except updates by id and records without blocking keys."""
        listed = [p for p in prepared if optimistic and p.submission.target_id is None and p.search_keys]
        await asyncio.gather(
            uow.prefetch("Patient", [p.source_id for p in prepared if p not in listed]),
            uow.prefetch_blocks([p.search_keys for p in prepared if p.search_keys], cfg.max_candidates),
        )
        for p in listed:
            met = await uow.find_sources(p.search_keys, cfg.max_candidates)  # cached now
            uow.assume("Patient", p.source_id, next((r for r in met if r["id"] == p.source_id), None))
        owns = [await uow.peek("Patient", p.source_id) for p in prepared]  # cached now
        await uow.prefetch("Patient", sorted({g for own in owns if own and (g := records.golden_id_of(own))}))
        found = [await self._candidates(p, uow, cfg) for p in prepared]
        peers = _batch_peers(prepared)
        decided = await _decide_many(
            [(p.values, candidates) for p, (_, _, candidates) in zip(prepared, found, strict=True)]
            + [(p.values, others) for p, others in zip(prepared, peers, strict=True)],
            cfg.rules,
        )
        decisions, peer_decisions = decided[: len(prepared)], decided[len(prepared) :]
        foreseen: dict[str, _Foreseen] = {}
        targets: set[str] = set()
        tasks: set[str] = set()
        for p, (existing, current, candidates), decision, others, peer_decision in zip(
            prepared, found, decisions, peers, peer_decisions, strict=True
        ):
            values = {c.id: c.resource for c in others}
            peer_scores = {s.candidate_id: (values[s.candidate_id], s) for s in peer_decision.scores}
            foreseen[p.source_id] = _Foreseen(candidates, decision, peer_scores)
            target = await self._target(p, uow, existing, current, decision)
            if target is not None:
                targets.add(target)
                tasks.update(t["id"] for t in _review_tasks(decision, p.source_id, target))
            else:  # a new golden record: only potential-match Tasks (about the source) can exist already
                tasks.update(
                    t["id"]
                    for t in _review_tasks(decision, p.source_id, "")
                    if t["code"]["coding"][0]["code"] == POTENTIAL_MATCH
                )
        await asyncio.gather(uow.prefetch("Patient", sorted(targets)), uow.prefetch("Task", sorted(tasks)))
        return foreseen

    async def _golden(self, uow: UnitOfWork, golden_id: str) -> dict[str, Any] | None:
        """The golden record, following ``replaced-by`` links left by merges; None unless the walk ends on a
        live golden record (absent, not golden, a cycle or too many links: the caller makes a new one)."""
        walk = await records.follow_replaced_by_async(lambda rid: uow.read("Patient", rid), golden_id)
        return walk.live

    async def _other_sources(self, uow: UnitOfWork, golden_id: str, source_id: str) -> set[str]:
        golden = await uow.peek("Patient", golden_id)
        return set(records.source_ids_of(golden)) - {source_id} if golden is not None else set()

    async def _followers(self, uow: UnitOfWork, golden_id: str | None, source_id: str) -> list[str]:
        """The source records of ``golden_id`` that their POS merged into ``source_id`` (read only when it is
        about to leave that golden record)."""
        others = sorted(await self._other_sources(uow, golden_id, source_id)) if golden_id else []
        await uow.prefetch("Patient", others)
        return linking.followers(source_id, [await uow.peek("Patient", s) for s in others])

    async def _stage_reviews(
        self, uow: UnitOfWork, decision: matching.Decision, source_id: str, golden_id: str
    ) -> None:
        for task in _review_tasks(decision, source_id, golden_id):
            await self._stage_task(uow, task, golden_id)

    async def _stage_task(self, uow: UnitOfWork, task: Resource, golden_id: str) -> None:
        """Raise the review ``task`` about ``golden_id`` unless a person already closed it."""
        candidate = task["input"][0]["valueReference"]["reference"]
        if uow.created_here(records.ref(golden_id)) or uow.created_here(candidate):
            stored = None  # about a golden record this transaction creates: cannot exist yet
        else:
            stored = await uow.peek("Task", task["id"])
        if stored is None or stored.get("status") in (OPEN, WITHDRAWN):
            uow.put(task)
            other = records.ref_id(candidate)
            if other is not None and not uow.created_here(candidate):
                # the person the Task names: one a retraction leaves without records (it closes only the
                # Tasks it finds) refuses this transaction
                await uow.hold("Patient", other)


@dataclass
class _Waiting:
    """A single submission waiting for a shared transaction: its answer, and its request's recorder of HAPI
    calls (OpenHIM orchestrations), if any."""

    prepared: Prepared
    future: asyncio.Future[SubmissionResult]
    recorder: CallRecorder | None = field(default=None)

    def answer(self, result: SubmissionResult) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def cancel(self) -> None:
        self.future.cancel()


def _live_golden(resource: Resource) -> bool:
    """Kept in :attr:`Registry.goldens`: golden records not merged into another (the workflow writes every
    golden record it decides on, so a stale copy is caught by ``If-Match``; one it only walks through along
    ``replaced-by`` links would not be)."""
    return records.is_golden(resource) and records.replaced_by(resource) is None


def _audit_events(
    prepared: Sequence[Prepared], decisions: Sequence[RecordDecision]
) -> list[tuple[dict[str, Any], list[str]]]:
    """A transaction's AuditEvents, each with the source ids of its submissions: one per client. A bulk batch
    or a Bundle (one request) writes one, not one per record; a shared transaction one per client among
    its members' requests (never one for two clients), each submission its own group of entities in it,
    with its request's OpenHIM transaction id."""
    by_client: dict[tuple[str | None, str | None], list[tuple[Prepared, RecordDecision]]] = {}
    for p, decision in zip(prepared, decisions, strict=True):
        actor = p.submission.actor
        by_client.setdefault((actor.client_id, actor.address), []).append((p, decision))
    return [
        (
            submission_event(actor=members[0][0].submission.actor, decisions=[d for _, d in members]),
            [p.source_id for p, _ in members],
        )
        for members in by_client.values()
    ]


def _shared_calls(calls: list[CallRecord], mine: set[str], own: str, members: int) -> list[CallRecord]:
    """The HAPI calls of a shared transaction as the request of the member submitting source record ``own``
    may see them: the transaction's entries limited to the records it staged, of its client's AuditEvent its
    own submission's entities only; the other calls without their query strings and bodies (they carry the
    other members' keys and records)."""
    shared = f" (shared by {members} submissions)"
    out = []
    for call in calls:
        if call.name == "transaction":
            request = _bundle(call.request_body)
            entries = request.get("entry", []) if request else []
            kept = [i for i, e in enumerate(entries) if (e.get("request") or {}).get("url") in mine]
            if request is not None:
                request = {**request, "entry": [_own_part(e, records.ref(own)) for e in entries]}
            response = _bundle(call.response_body) if call.error is None else None
            out.append(
                replace(
                    call,
                    name=call.name + shared,
                    request_body=_with_entries(request, kept),
                    response_body=_with_entries(response, kept),
                )
            )
        else:
            url = call.url.split("?", 1)[0]
            out.append(replace(call, name=call.name + shared, url=url, request_body=None, response_body=None))
    return out


def _own_part(entry: dict[str, Any], own_ref: str) -> dict[str, Any]:
    """A transaction entry as one member sees it: an AuditEvent with its submission's entities only (the
    event of a client holds every member of that client); anything else as it is."""
    resource = entry.get("resource")
    if not isinstance(resource, dict) or resource.get("resourceType") != "AuditEvent":
        return entry
    own = [g for g in groups(resource) if (g[0].get("what") or {}).get("reference") == own_ref]
    return {**entry, "resource": {**resource, "entity": [e for g in own for e in g]}}


def _bundle(text: str | None) -> dict[str, Any] | None:
    """A recorded body as a Bundle; None when it is not one (an error answer may name another member's
    record)."""
    if not text:
        return None
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) and doc.get("resourceType") == "Bundle" else None


def _with_entries(bundle: dict[str, Any] | None, indexes: list[int]) -> str | None:
    """``bundle`` (a transaction or its response: entries in the same order) with the entries at ``indexes``
    only."""
    if bundle is None:
        return None
    entries = bundle.get("entry", [])
    return orjson.dumps({**bundle, "entry": [entries[i] for i in indexes if i < len(entries)]}).decode()


@dataclass(frozen=True)
class _Foreseen:
    """An entry decided ahead on what HAPI holds, and the candidates it was decided on; and its scores
    against the source records that earlier entries of the batch are to stage (by their ids: the values
    scored, and the score)."""

    candidates: list[matching.Candidate]
    decision: matching.Decision
    peer_scores: dict[str, tuple[Mapping[str, Any], matching.CandidateScore]]

    def known_scores(
        self, candidates: list[matching.Candidate], rules: matching.Rules
    ) -> dict[str, matching.CandidateScore]:
        """The scores of the candidates that are still the very same records (not copies: anything staged
        since is a new object) with the same golden records, and of the records staged since whose values
        are the ones scored ahead (with the golden record they have now), by candidate id: scoring them
        again would give the same scores, since a pair's score depends on its two records' values and the
        rules only. Usually all of them: deciding again then only ranks known scores."""
        before = {c.id: c for c in self.candidates}
        scores = {s.candidate_id: s for s in self.decision.scores}
        known = {}
        for c in candidates:
            b = before.get(c.id)
            if b is not None and b.resource is c.resource and b.golden_id == c.golden_id:
                known[c.id] = scores[c.id]
                continue
            peer = self.peer_scores.get(c.id)
            if peer is not None and matching.prepare(c.resource, rules) == peer[0]:
                known[c.id] = replace(peer[1], golden_id=c.golden_id)
        return known


def _batch_peers(prepared: Sequence[Prepared]) -> list[list[matching.Candidate]]:
    """For each entry, the entries before it in the batch filed under a key it searches by: their source
    records, once staged, are its candidates. As candidates of their values (their golden records are
    not known yet)."""
    filed: dict[str, list[Prepared]] = {}
    out = []
    for p in prepared:
        earlier = {q.source_id: q for key in p.search_keys for q in filed.get(key, ())}
        out.append(
            [matching.Candidate(id=q.source_id, golden_id="", resource=q.values) for q in earlier.values()]
        )
        for key in p.block_keys:
            filed.setdefault(key, []).append(p)
    return out


def _review_tasks(decision: matching.Decision, source_id: str, golden_id: str) -> list[Resource]:
    """The review Tasks a decision asks for: one per other person scored 'match' (possible duplicate of
    the golden record) or 'potential' (potential match of the source record), best score first."""
    best: dict[str, matching.CandidateScore] = {}
    for s in decision.scores:
        if s.classification != "no_match" and s.golden_id != golden_id and s.golden_id not in best:
            best[s.golden_id] = s
    return [
        review_task(
            kind=POSSIBLE_DUPLICATE if s.classification == "match" else POTENTIAL_MATCH,
            source_id=source_id,
            golden_id=golden_id,
            other_golden_id=other,
            score=s.score,
            rule=s.rule,
        )
        for other, s in best.items()
    ]


def _own_identifiers(patient: Mapping[str, Any], cfg: RegistryConfig) -> tuple[Mapping[str, Any], ...]:
    """What the answer gives back: the Patient's identifiers but the shared ones."""
    return tuple(
        i for i in patient.get("identifier", []) if i.get("system") not in cfg.shared_identifier_systems
    )


def _may_write(cfg: RegistryConfig, client_id: str | None) -> Callable[[str], bool]:
    """Whether ``client_id`` may write records keyed in a system (:meth:`RegistryConfig.may_key`, the rule
    :meth:`Registry.prepare` applies); never the CRUID's."""
    return lambda system: system != cfg.cruid_system and cfg.may_key(client_id, system)


def _submission(s: Submission | Prepared) -> Submission:
    return s.submission if isinstance(s, Prepared) else s


async def _decide(
    values: matching.Prepared,
    candidates: list[matching.Candidate],
    known: dict[str, matching.CandidateScore],
    rules: matching.Rules,
) -> matching.Decision:
    """``matching.decide_reusing``, in a worker thread when many pairs are left to score."""
    if len(candidates) - len(known) >= OFF_LOOP_CANDIDATES:
        return await asyncio.to_thread(matching.decide_reusing, values, candidates, known, rules)
    return matching.decide_reusing(values, candidates, known, rules)


async def _decide_many(
    items: Sequence[tuple[Mapping[str, Any], Sequence[matching.Candidate]]], rules: matching.Rules
) -> list[matching.Decision]:
    """``matching.decide_many`` (one comparison for all pairs), in a worker thread when it is large."""
    if sum(len(candidates) for _, candidates in items) >= OFF_LOOP_CANDIDATES:
        return await asyncio.to_thread(matching.decide_many, items, rules)
    return matching.decide_many(items, rules)


__all__ = ["Registry", "Submission", "SubmissionResult"]
