"""Open review Tasks of a person that became another: merged away by an admin, or left without records by
an admin move or a relink (its golden record ``replaced-by`` where they went). One rule for all of them
(:func:`follow_successor`): a Task now between the successor and itself, or between people already
decided different, is closed as moot; any other is retargeted to the successor. The caller reads and
stages through its own unit of work, in its own transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from . import records
from .fhir_client import HapiClient
from .instants import instant
from .records import Resource
from .review import CANDIDATE_SEARCH, MOOT, OPEN, POTENTIAL_MATCH, WITHDRAWN, close_task, review_task_id

RESOLVED_BY_MERGE = "resolved-by-merge"  # closed: an admin merged the two people (or made it a self-pair)
RESOLVED_BY_MOVE = "resolved-by-move"  # closed: the person's last records moved to the other one
MAX_TASKS = 2000  # open review Tasks naming one person read at most (by subject, and by candidate)


def task_candidate(task: Resource) -> str | None:
    """The other golden record a review Task is about (its ``candidate`` input)."""
    for item in task.get("input", []):
        if item.get("type", {}).get("text") == "candidate":
            return records.ref_id(item.get("valueReference", {}).get("reference"))
    return None


def retargeted(task: Resource, subject: str, other: str) -> Resource:
    """``task`` about ``subject`` (``for``) and ``other`` (``candidate``) instead."""
    out = records.clone(task)
    out["for"] = {"reference": records.ref(subject)}
    for item in out.get("input", []):
        if item.get("type", {}).get("text") == "candidate":
            item["valueReference"] = {"reference": records.ref(other)}
    out["lastModified"] = instant()
    return out


async def open_reviews_naming(hapi: HapiClient, golden_id: str) -> dict[str, Resource]:
    """The open review Tasks naming ``golden_id`` as ``for`` or ``candidate``, by id. Raises
    :class:`~mediator.errors.Unprocessable` while HAPI does not know the ``review-candidate`` parameter."""
    reference = records.ref(golden_id)
    found = await asyncio.gather(
        *(
            hapi.search("Task", {"status": OPEN, name: reference, "_count": "200"}, max_results=MAX_TASKS)
            for name in ("subject", CANDIDATE_SEARCH)
        )
    )
    return {str(task["id"]): task for chunk in found for task in chunk}


async def follow_successor(
    task_ids: list[str],
    keep: Resource,
    lose: Resource,
    *,
    read: Callable[[str], Awaitable[Resource | None]],
    put: Callable[[Resource], None],
    resolved: str,
    decided_by: str,
) -> list[str]:
    """Stage the open Tasks ``task_ids`` that name ``lose`` as about ``keep``, its successor: closed
    (``cancelled``, decision ``resolved``) when that makes them a self-pair or a pair already decided
    different (``distinct-from`` of either); else retargeted in place when their id stays the same (only
    ``for`` changed), or closed as ``superseded`` and raised again under the new pair's id (unless that
    Task exists and was not withdrawn). ``read`` a Task by id (None: absent), ``put`` one to stage.
    Returns the ids of the Tasks staged."""
    keep_id, lose_id = keep["id"], lose["id"]
    distinct = records.distinct_from(keep) | records.distinct_from(lose)
    staged: list[str] = []
    for task_id in task_ids:
        task = await read(task_id)
        if task is None or task.get("status") != OPEN:
            continue
        kind = next(
            (
                c.get("code")
                for c in task.get("code", {}).get("coding", [])
                if c.get("system") == records.REVIEW_TYPE_SYSTEM
            ),
            None,
        )
        subject = records.ref_id(task.get("for", {}).get("reference"))
        other = task_candidate(task)
        if kind is None or subject is None or other is None or lose_id not in (subject, other):
            continue
        s2 = keep_id if subject == lose_id else subject
        o2 = keep_id if other == lose_id else other
        staged.append(task_id)
        if s2 == o2 or (keep_id in (s2, o2) and ({s2, o2} - {keep_id}) <= distinct):
            put(close_task(task, resolved, decided_by, status=MOOT))
            continue
        focus = records.ref_id(task.get("focus", {}).get("reference")) or s2
        about = focus if kind == POTENTIAL_MATCH else s2
        new_id = review_task_id(kind, about, o2)
        moved = retargeted(task, s2, o2)
        if new_id == task_id:
            put(moved)
            continue
        put(close_task(task, f"superseded by Task/{new_id}", decided_by, status=MOOT))
        existing = await read(new_id)
        if existing is None or existing.get("status") == WITHDRAWN:
            moved["id"] = new_id
            moved["identifier"] = [{"system": records.REVIEW_SYSTEM, "value": f"{kind}:{about}:{o2}"}]
            moved.pop("meta", None)
            put(moved)
            staged.append(new_id)
    return staged


__all__ = [
    "RESOLVED_BY_MERGE",
    "RESOLVED_BY_MOVE",
    "follow_successor",
    "open_reviews_naming",
    "retargeted",
    "task_candidate",
]
