"""Concurrent single submissions share HAPI transactions, each with its own answer and AuditEvent, exactly as
when they are written one after the other (mediator/registry.py, ``Registry.submit``).

HAPI transactions are counted by wrapping the registry's ``HapiClient.transaction`` (a counter, not timing).
Submissions are started together with ``asyncio.gather``: each runs until its first HAPI call, so the first
two take the two transactions in flight (``SHARED_WRITES``) and the others wait for them, deterministically.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from mediator import records
from mediator.admin import queries
from mediator.audit import Actor, groups
from mediator.context import STORE
from mediator.errors import Conflict, NotFound
from mediator.fhir_client import CallRecorder, current_recorder
from mediator.registry import SHARED_WRITES, Registry, Submission, SubmissionResult
from tests.conftest import patient, unique_surname

POS_A = Actor(client_id="pos-a", address="10.0.0.1", transaction_id="tx-a")
POS_B = Actor(client_id="pos-b", address="10.0.0.2", transaction_id="tx-b")


def _registry(client: Any) -> Registry:
    """The registry of the app's FHIR store in force."""
    return client.server.app[STORE].registry


class Transactions:
    """Counts the registry's HAPI transactions of submissions and remembers the task and Bundle of each."""

    def __init__(self, registry: Registry, before: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.count = 0
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.bundles: list[dict[str, Any]] = []
        self.conflicts = 0
        self._forward = registry.hapi.transaction
        self._before = before
        registry.hapi.transaction = self  # type: ignore[method-assign]

    async def __call__(self, bundle: dict[str, Any]) -> dict[str, Any]:
        if not any(e["request"]["url"].startswith("AuditEvent/") for e in bundle["entry"]):
            return await self._forward(bundle)  # not a submission's (the app's review-score backfill)
        self.count += 1
        self.tasks.append(asyncio.current_task())
        self.bundles.append(bundle)
        if self._before is not None:
            await self._before(bundle)
        try:
            return await self._forward(bundle)
        except Conflict:
            self.conflicts += 1
            raise


def _scenario(facility: str, tag: str) -> list[Submission]:
    """Eight submissions, two clients: one person from three facilities (the first two decided alone, in
    flight when the others come), a second person's two records and a resubmission of the third record (the
    same record: it ends the first shared transaction and goes in the next, in its turn), two new people."""
    a, b, c, d = (unique_surname() for _ in range(4))
    sys = f"{facility}/{tag}"
    return [
        Submission(patient(f"{sys}/1", "A1", family=a), POS_A),
        Submission(patient(f"{sys}/2", "A2", family=a), POS_B),
        Submission(patient(f"{sys}/3", "A3", family=a), POS_A),
        Submission(patient(f"{sys}/1", "B1", family=b, birth_date="1990-01-02"), POS_B),
        Submission(patient(f"{sys}/3", "A3", family=a, given="Aminah"), POS_A),
        Submission(patient(f"{sys}/2", "B2", family=b, birth_date="1990-01-02"), POS_A),
        Submission(patient(f"{sys}/3", "C1", family=c, gender="male"), POS_B),
        Submission(patient(f"{sys}/2", "D1", family=d, birth_date="2001-11-30"), POS_A),
    ]


def _answers(results: list[SubmissionResult], tag: str, cruid_system: str) -> list[Any]:
    """The answers with the run's ids replaced by their order of appearance (golden ids are random)."""
    goldens: dict[str, int] = {}
    out = []
    for r in results:
        g = goldens.setdefault(r.golden_id, len(goldens))
        patient_ = r.response_patient(cruid_system)
        shown = [
            {**i, "system": i["system"].replace(f"/{tag}/", "/")} if i["system"] != cruid_system else g
            for i in patient_["identifier"]
        ]
        # a no_match's rule and score are its best candidate's: records of other tests in the shared store
        best = (r.rule, r.score) if r.outcome != "no_match" else None
        out.append((r.created, r.outcome, best, r.version, g, shown))
    return out


async def _events(store: Any, results: list[SubmissionResult]) -> list[Any]:
    """Each submission's audit record, in submission order: the agent and type of the AuditEvent holding it
    and its own group of entities in it, without ids and times, ids as in _answers."""
    goldens: dict[str, int] = {}
    sources: dict[str, int] = {}
    for r in results:
        goldens.setdefault(r.golden_id, len(goldens))
        sources.setdefault(r.source_id, len(sources))
    seen: dict[str, int] = {}
    out = []
    for r in results:
        found = await store.search(
            "AuditEvent", {"entity": records.ref(r.source_id), "_sort": "_lastUpdated"}
        )
        event = found[seen.get(r.source_id, 0)]
        seen[r.source_id] = seen.get(r.source_id, 0) + 1
        [group] = [g for g in groups(event) if g[0]["what"]["reference"] == records.ref(r.source_id)]
        for entity in group:  # as in _answers: a no_match's rule and score are not the scenario's
            details = entity.get("detail", [])
            if {"type": "decision", "valueString": "no_match"} in details:
                entity["detail"] = [d for d in details if d["type"] not in ("rule", "score")]
        text = repr({"agent": event["agent"], "type": event["type"], "group": group})
        for source, n in sources.items():
            text = text.replace(source, f"source-{n}")
        for golden, n in goldens.items():
            text = text.replace(golden, f"golden-{n}")
        out.append(text)
    return out


def _audit(bundle: dict[str, Any]) -> list[tuple[str, int]]:
    """(client, submissions) of each AuditEvent a transaction Bundle writes."""
    return [
        (e["resource"]["agent"][0]["who"]["identifier"]["value"], len(groups(e["resource"])))
        for e in bundle["entry"]
        if e["request"]["url"].startswith("AuditEvent/")
    ]


async def test_concurrent_submissions_share_transactions_and_answer_as_one_after_the_other(
    client, store, facility, settings
):
    registry = _registry(client)
    counter = Transactions(registry)
    in_turn = [await registry.submit(s) for s in _scenario(facility, "turn")]
    assert counter.count == 8, [[e["request"]["url"] for e in b["entry"]] for b in counter.bundles]

    counter.count = 0
    together = await asyncio.gather(*(registry.submit(s) for s in _scenario(facility, "together")))
    # two alone (in flight when the others came), then the six waiting ones in two: A3, B1 | A3 again, …
    assert counter.count == 4 < 8, counter.count
    # one AuditEvent per client of the members, each submission its own group in its client's event
    assert [_audit(b) for b in counter.bundles[-4:]] == [
        [("pos-a", 1)],
        [("pos-b", 1)],
        [("pos-a", 1), ("pos-b", 1)],
        [("pos-a", 3), ("pos-b", 1)],
    ]

    cruid = settings.cruid_system
    assert _answers(together, "together", cruid) == _answers(in_turn, "turn", cruid)
    assert [r.outcome for r in in_turn].count("match") >= 3  # the scenario does link people
    assert await _events(store, together) == await _events(store, in_turn)
    for r in together:
        await store.assert_consistent(r.source_id)


async def test_a_refused_member_fails_alone_and_the_others_are_written(client, store, facility, caplog):
    registry = _registry(client)
    counter = Transactions(registry)
    sys = f"{facility}/refused"
    unknown = records.source_record_id(sys, "NOPE")
    submissions = [
        Submission(patient(sys, f"N{n}", family=unique_surname()), POS_A) for n in range(SHARED_WRITES + 1)
    ]
    submissions.append(Submission(patient(sys, "NOPE", family=unique_surname()), POS_B, target_id=unknown))
    submissions.append(Submission(patient(sys, "N9", family=unique_surname()), POS_B))
    with caplog.at_level(logging.INFO, logger="mediator.registry"):
        results = await asyncio.gather(*(registry.submit(s) for s in submissions), return_exceptions=True)

    assert isinstance(results[-2], NotFound)
    assert [r.message for r in caplog.records].count("shared transaction split") == 1
    assert all(isinstance(r, SubmissionResult) and r.created for i, r in enumerate(results) if i != 3)
    # tried together first (one transaction, never sent: the refusal came before it), then each alone
    assert counter.count == SHARED_WRITES + 2
    for r in results:
        if isinstance(r, SubmissionResult):
            await store.assert_consistent(r.source_id)
    assert await store.read("Patient", unknown) is None


async def test_a_conflict_in_a_shared_transaction_splits_it_and_each_is_written_as_alone(
    client, store, facility, hapi_url
):
    """A real conflict: someone changes the golden record of a member (after it was decided, before the
    shared transaction reaches HAPI); HAPI refuses the transaction; every member is then written alone."""
    registry = _registry(client)
    family = unique_surname()
    sys = f"{facility}/conflict"
    first = await registry.submit(Submission(patient(f"{sys}/1", "P1", family=family), POS_A))
    golden_ref = records.ref(first.golden_id)
    changed: list[str] = []

    async def change_the_golden(bundle: dict[str, Any]) -> None:
        urls = [e["request"]["url"] for e in bundle["entry"]]
        if golden_ref in urls and sum(u.startswith("AuditEvent/") for u in urls) > 1 and not changed:
            golden = await store.read("Patient", first.golden_id)
            async with store.session.put(
                f"{hapi_url}/{golden_ref}",
                json={**golden, "language": "en"},
                headers={"Content-Type": "application/fhir+json"},
            ) as resp:
                assert resp.status == 200
            changed.append(golden_ref)

    counter = Transactions(registry, before=change_the_golden)
    submissions = [
        Submission(patient(f"{sys}/9", f"X{n}", family=unique_surname()), POS_B) for n in range(SHARED_WRITES)
    ]
    submissions += [
        Submission(patient(f"{sys}/2", "P2", family=family), POS_B),  # the same person: its golden record
        Submission(patient(f"{sys}/3", "Q1", family=unique_surname()), POS_A),
    ]
    results = await asyncio.gather(*(registry.submit(s) for s in submissions))

    assert changed and counter.conflicts >= 1
    assert [r.created for r in results] == [True] * len(submissions)
    assert results[-2].outcome == "match" and results[-2].golden_id == first.golden_id
    assert results[-1].golden_id != first.golden_id
    golden = await store.read("Patient", first.golden_id)
    assert golden["language"] == "en"  # the change someone made is kept, the link added on top of it
    assert set(records.source_ids_of(golden)) == {first.source_id, results[-2].source_id}
    for r in results:
        await store.assert_consistent(r.source_id)


async def test_a_lone_submission_is_written_at_once_in_its_own_task(client, facility):
    """No timer and no queue: with fewer than SHARED_WRITES transactions in flight a submission's own task
    writes it (a submission that waited would be written by another task)."""
    registry = _registry(client)
    counter = Transactions(registry)
    result = await registry.submit(Submission(patient(facility, "LONE", family=unique_surname()), POS_A))
    assert result.created
    assert counter.tasks == [asyncio.current_task()]
    assert not registry._waiting and not registry._shared_tasks

    # one in flight, a second comes: it does not wait either, both are written by their own tasks
    counter.tasks.clear()

    async def one(n: int) -> asyncio.Task[Any] | None:
        await registry.submit(Submission(patient(facility, f"TWO{n}", family=unique_surname()), POS_A))
        return asyncio.current_task()

    tasks = await asyncio.gather(*(one(n) for n in range(SHARED_WRITES)))
    assert sorted(map(id, counter.tasks)) == sorted(map(id, tasks))

    # with SHARED_WRITES in flight, the next one waits for a transaction to end and is written by another
    counter.tasks.clear()
    tasks = await asyncio.gather(*(one(n) for n in range(SHARED_WRITES, 2 * SHARED_WRITES + 1)))
    assert len(counter.tasks) == SHARED_WRITES + 1
    assert counter.tasks[-1] not in tasks


async def test_each_request_sees_only_its_own_part_of_a_shared_transaction(client, facility):
    """OpenHIM orchestrations stay per request: the transaction's entries of the other members (their
    submitted records, their AuditEvents) and the shared reads' bodies and queries are left out."""
    registry = _registry(client)
    counter = Transactions(registry)
    sys = f"{facility}/orchestrations"

    async def recorded(submission: Submission) -> tuple[SubmissionResult, CallRecorder]:
        recorder = CallRecorder()
        current_recorder.set(recorder)  # this task's own context, as the envelope middleware does
        return await registry.submit(submission), recorder

    submissions = [
        Submission(patient(sys, f"R{n}", family=unique_surname()), POS_A if n % 2 else POS_B)
        for n in range(SHARED_WRITES + 3)
    ]
    answers = await asyncio.gather(*(recorded(s) for s in submissions))
    assert counter.count == SHARED_WRITES + 1
    assert _audit(counter.bundles[-1]) == [("pos-b", 2), ("pos-a", 1)]  # two members share pos-b's event

    for n, (result, recorder) in enumerate(answers):
        names = [c.name for c in recorder.calls]
        written = [c for c in recorder.calls if c.name.startswith("transaction")]
        assert len(written) == 1, names
        body = written[0].request_body or ""
        assert result.source_id in body
        others = [r.source_id for m, (r, _) in enumerate(answers) if m != n]
        assert not any(other in body for other in others)
        assert (written[0].response_body or "").count('"status"') == body.count('"request"')
        if n >= SHARED_WRITES:  # shared: the reads without queries or bodies
            assert all("shared by 3" in name for name in names), names
            reads = [c for c in recorder.calls if not c.name.startswith("transaction")]
            assert all("?" not in c.url and c.response_body is None for c in reads)
            own = POS_A if n % 2 else POS_B
            assert f'"{own.client_id}"' in body
            other = POS_B if n % 2 else POS_A
            assert f'"{other.client_id}"' not in body


async def test_members_of_one_client_share_its_audit_event_each_with_its_own_request(client, store, facility):
    """Three requests of one client sharing a transaction: one AuditEvent, a group of entities per
    submission, each naming its own request's OpenHIM transaction; the admin history of each record shows its
    own group only."""
    registry = _registry(client)
    counter = Transactions(registry)
    sys = f"{facility}/one-client"
    actors = [Actor("pos-a", "10.0.0.1", f"tx-{n}") for n in range(SHARED_WRITES + 3)]
    submissions = [
        Submission(patient(sys, f"O{n}", family=unique_surname()), a) for n, a in enumerate(actors)
    ]
    results = await asyncio.gather(*(registry.submit(s) for s in submissions))
    assert counter.count == SHARED_WRITES + 1
    assert _audit(counter.bundles[-1]) == [("pos-a", 3)]
    for n, r in enumerate(results):
        [event] = await store.search("AuditEvent", {"entity": records.ref(r.source_id)})
        [group] = [g for g in groups(event) if g[0]["what"]["reference"] == records.ref(r.source_id)]
        assert {"type": "openhim-transaction", "valueString": f"tx-{n}"} in group[0]["detail"]
        assert [e["what"]["reference"] for e in group] == [records.ref(r.source_id), records.ref(r.golden_id)]
        history = await queries.history(registry.hapi, r.golden_id)
        [mine] = [h for h in history if h["id"] == event["id"]]
        assert [e["what"] for e in mine["entities"]] == [records.ref(r.source_id), records.ref(r.golden_id)]


async def test_a_known_golden_record_is_not_read_again_and_nothing_twice(client, facility):
    """A golden record this process wrote is taken in the version HAPI gave it (If-Match catches a stale
    one: the conflict test above); nothing is read twice within a submission."""
    registry = _registry(client)
    family = unique_surname()
    first = await registry.submit(Submission(patient(f"{facility}/1", "K1", family=family), POS_A))
    recorder = CallRecorder()
    token = current_recorder.set(recorder)
    try:
        second = await registry.submit(Submission(patient(f"{facility}/2", "K2", family=family), POS_A))
        again = await registry.submit(
            Submission(patient(f"{facility}/2", "K2", family=family, given="Aminah"), POS_A)
        )
    finally:
        current_recorder.reset(token)
    assert second.golden_id == again.golden_id == first.golden_id
    urls = [c.url for c in recorder.calls if c.method == "GET"]
    assert not any(first.golden_id in url for url in urls), urls
    per_submission: list[list[str]] = [[]]
    for call in recorder.calls:
        per_submission[-1].append(f"{call.method} {call.url} {call.request_body}")
        if call.name == "transaction":
            per_submission.append([])
    for calls in per_submission:
        assert len(calls) == len(set(calls)), calls
