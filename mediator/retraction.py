"""Retraction: a point-of-service system withdraws a source record it entered in error (FHIR delete).

    refuse what is not the caller's to delete → key lock on the source → read it (a deletion already in
    HAPI: the same answer again, nothing written) → stage, as ONE HAPI transaction: the source record's
    deletion, its golden record without the ``seealso`` link, the open review Tasks about it (and about its
    person, when that golden record is left without sources) closed as moot,
    an AuditEvent (action D) → commit (a concurrent change: decided again from fresh reads)

Who may delete a source record is who may write it (:meth:`RegistryConfig.may_key` on the identifier the
record is keyed by), as for an update. Details: ``docs/internals.md``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from . import linking, records
from .audit import Actor, retraction_event
from .config import RegistryConfig
from .errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    StillReferenced,
    Unprocessable,
    UpstreamUnavailable,
)
from .fhir_client import HapiClient
from .records import Resource
from .registry import Registry
from .review import CANDIDATE_SEARCH, MOOT, OPEN, close_task
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

RETRACTED = "resolved-by-retraction"  # the decision on a review Task closed because its record was retracted
MAX_TASKS = 2000  # open review Tasks about one source record read at most
MAX_LINKING = 2000  # records linking to one source record read at most (its golden record, merged records)


@dataclass(frozen=True)
class Retraction:
    """A retracted source record: its golden record (None: it had none) and whether this request deleted it
    (False: a retry, it was deleted before and nothing was written now)."""

    source_id: str
    golden_id: str | None
    deleted_now: bool
    golden_inactive: bool = False  # this deletion left the golden record without sources
    tasks_closed: int = 0  # open review Tasks about the record closed as moot

    def outcome(self) -> dict[str, Any]:
        """The answer: an OperationOutcome (information) naming the deleted record; the same for a retry."""
        return {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": f"Patient/{self.source_id} is deleted.",
                }
            ],
        }


async def retract(registry: Registry, source_id: str, actor: Actor) -> Retraction:
    """Delete the source record ``source_id`` for ``actor`` (see the module's docstring)."""
    if source_id.startswith("cr-"):
        raise Forbidden("Golden records are maintained by the registry and cannot be deleted.")
    cfg = registry.config.current
    started = time.perf_counter()
    async with registry.locks.hold([f"src:{source_id}"]):
        for attempt in range(1, registry.conflict_retries + 1):
            # after a conflict, everything read again: a golden record held may be the stale one
            uow = UnitOfWork(registry.hapi, registry.sources, registry.goldens, fresh=attempt > 1)
            try:
                done = await _attempt(registry, uow, cfg, source_id, actor)
            except Conflict:
                if attempt == registry.conflict_retries:
                    raise
                log.info("version conflict, retrying", extra={"attempt": attempt, "source_id": source_id})
                if registry.metrics is not None:
                    registry.metrics.conflict_retries.inc()
                continue
            if done.deleted_now:
                log.info(
                    "source record retracted",
                    extra={
                        "source_id": source_id,
                        "golden_id": done.golden_id,
                        "golden_inactive": done.golden_inactive,
                        "tasks_closed": done.tasks_closed,
                        "client": actor.client_id,
                        "ms": round((time.perf_counter() - started) * 1000, 1),
                    },
                )
            return done
    raise Conflict("Too many concurrent changes; retry the request.")  # pragma: no cover


async def _attempt(
    registry: Registry, uow: UnitOfWork, cfg: RegistryConfig, source_id: str, actor: Actor
) -> Retraction:
    """One try: read, stage and commit the retraction; :class:`Conflict` when anything changed meanwhile."""
    source = await uow.read("Patient", source_id)
    if source is None:
        return await _deleted_before(registry.hapi, cfg, source_id, actor)
    _check_may_delete(cfg, actor, source)
    golden_id = records.golden_id_of(source)
    golden = await uow.read("Patient", golden_id) if golden_id else None
    # HAPI ignores If-Match on a DELETE: the guard is the golden record's, so the source record must be
    # the one read before it (a deletion or relink that landed in between is seen here, or by If-Match)
    again = await registry.hapi.read("Patient", source_id)
    if again is None or records.version_of(again) != records.version_of(source):
        raise Conflict(f"Patient/{source_id} changed while it was being deleted.")
    # every record naming it, wherever it is: an admin may have moved the survivor away from them
    linking_it = await registry.hapi.search(
        "Patient", {"link": records.ref(source_id), "_count": "200"}, max_results=MAX_LINKING
    )
    merged = sorted(linking.followers(source_id, linking_it))
    if merged:  # their replaced-by links name it: HAPI refuses the delete, and they would lose their survivor
        raise StillReferenced(
            f"Patient/{source_id} has records its point-of-service system merged into it "
            f"({', '.join(f'Patient/{m}' for m in merged)}); delete those first.",
            expression=["Patient.link"],
        )
    inactive = False
    if golden is not None:
        emptied = records.without_source(golden, source_id)  # inactive without sources: one rule
        inactive = not records.source_ids_of(emptied)
        uow.put(emptied)  # If-Match: every change of the source's link writes its golden record
    task_ids = await _close_reviews(registry.hapi, uow, source_id, golden_id if inactive else None, actor)
    uow.delete("Patient", source_id)
    uow.put(
        retraction_event(
            actor=actor, source_id=source_id, golden_id=golden_id, golden_inactive=inactive, task_ids=task_ids
        )
    )
    await registry.locks.confirm()  # still alone with this record (503, nothing written, if not)
    await uow.commit()
    return Retraction(
        source_id, golden_id, deleted_now=True, golden_inactive=inactive, tasks_closed=len(task_ids)
    )


def _check_may_delete(cfg: RegistryConfig, actor: Actor, record: Resource) -> None:
    """Refuse a record that is not a source record, or one the caller may not write (404, as if absent)."""
    if records.is_golden(record):
        raise Forbidden("Golden records are maintained by the registry and cannot be deleted.")
    if not records.is_source(record):
        raise InvalidInput(
            f"Patient/{record['id']} is not a source record; only source records can be deleted."
        )
    key = records.key_identifier(record)
    if key is None or not cfg.may_key(actor.client_id, key[0]):
        # answered as a record never stored: a record id is a hash anyone can compute from an identifier,
        # so a 403 would tell a client which of another client's identifiers the registry holds
        log.info("retraction refused: not the client's record", extra={"source_id": record["id"]})
        raise NotFound(f"Patient/{record['id']} does not exist.")


async def _deleted_before(hapi: HapiClient, cfg: RegistryConfig, source_id: str, actor: Actor) -> Retraction:
    """A record not found: deleted before (a retry gets the same answer, with the same refusals, and nothing
    is written) or never stored (404)."""
    before = await hapi.before_deletion("Patient", source_id)
    if before is None:
        raise NotFound(f"Patient/{source_id} does not exist.")
    _check_may_delete(cfg, actor, before)
    log.info("source record already retracted", extra={"source_id": source_id, "client": actor.client_id})
    return Retraction(source_id, records.golden_id_of(before), deleted_now=False)


async def _close_reviews(
    hapi: HapiClient, uow: UnitOfWork, source_id: str, emptied: str | None, actor: Actor
) -> list[str]:
    """Stage the open review Tasks left with nothing to decide closed as moot, as a merge closes the ones it
    resolves; their ids: the Tasks about ``source_id`` (their ``focus``) and, when the retraction left its
    golden record ``emptied`` without sources, the Tasks naming that person (``for`` or ``candidate``).
    Each is written with ``If-Match`` on the version found: a person deciding it meanwhile makes the
    transaction fail and be decided again."""
    queries = [{"focus": records.ref(source_id)}]
    if emptied is not None:
        queries += [{"subject": records.ref(emptied)}, {CANDIDATE_SEARCH: records.ref(emptied)}]
    try:
        found = await asyncio.gather(
            *(
                hapi.search("Task", {"status": OPEN, **query, "_count": "200"}, max_results=MAX_TASKS)
                for query in queries
            )
        )
    except Unprocessable as exc:  # review-candidate not installed yet: the app installs it at start-up
        raise UpstreamUnavailable(
            "The review search parameters are being installed; retry the deletion shortly."
        ) from exc
    tasks = {str(task["id"]): task for chunk in found for task in chunk}
    closed = []
    for task_id in sorted(tasks):
        uow.assume("Task", task_id, tasks[task_id])
        stored = await uow.read("Task", task_id)
        if stored is not None and stored.get("status") == OPEN:
            uow.put(close_task(stored, RETRACTED, actor.client_id or "anonymous", status=MOOT))
            closed.append(task_id)
    return closed


__all__ = ["Retraction", "retract"]
