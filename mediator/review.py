"""Reviewable facts the workflow leaves for HIE admins: FHIR ``Task`` resources.

* ``potential-match``: a source record scored between the two thresholds against another golden record.
  ``focus`` = the source record, ``for`` = its golden record, input ``candidate`` = the other golden record.
* ``possible-duplicate``: a submission auto-matched two or more golden records; it was linked to the best
  one (``for``) and the others are inputs ``candidate``.

Ids are derived from the pair, so the same doubt raised twice stays one Task; a Task a person already
closed (status other than ``requested``) is left alone — except a withdrawn one (``entered-in-error``: an
admin undid the merge that raised it), which is raised again when due. A Task is closed by a person's
decision, or as moot (``cancelled``) when a merge, a move or relink that empties a person
(:mod:`mediator.retarget`) or a retraction leaves nothing to decide (:func:`close_task`).
"""

from __future__ import annotations

import hashlib
from typing import Any

from .instants import instant
from .records import REVIEW_SYSTEM, REVIEW_TYPE_SYSTEM, clone, ref

POTENTIAL_MATCH = "potential-match"
POSSIBLE_DUPLICATE = "possible-duplicate"
OPEN = "requested"
WITHDRAWN = "entered-in-error"  # raised by a merge that was undone; not a person's decision on the pair
MOOT = "cancelled"  # nothing left to decide (a merge resolved it, its source record was retracted)
# the search parameter on a review Task's ``candidate`` input (installed by ``admin.score_index``)
CANDIDATE_SEARCH = "review-candidate"
COMPARED_RECORD = "compared-record"  # Task output: the other side's record the decision was shown against


def review_task_id(kind: str, subject_id: str, other_golden_id: str) -> str:
    digest = hashlib.sha256(f"{kind}|{subject_id}|{other_golden_id}".encode()).hexdigest()[:40]
    return f"rv-{digest}"


def review_task(
    *, kind: str, source_id: str, golden_id: str, other_golden_id: str, score: float | None, rule: str
) -> dict[str, Any]:
    subject = source_id if kind == POTENTIAL_MATCH else golden_id
    inputs: list[dict[str, Any]] = [
        {"type": {"text": "candidate"}, "valueReference": {"reference": ref(other_golden_id)}},
        {"type": {"text": "rule"}, "valueString": rule},
    ]
    if score is not None:
        inputs.append({"type": {"text": "score"}, "valueDecimal": round(score, 4)})
    return {
        "resourceType": "Task",
        "id": review_task_id(kind, subject, other_golden_id),
        "identifier": [{"system": REVIEW_SYSTEM, "value": f"{kind}:{subject}:{other_golden_id}"}],
        "status": OPEN,
        "intent": "proposal",
        "priority": "routine",
        "code": {"coding": [{"system": REVIEW_TYPE_SYSTEM, "code": kind}]},
        "focus": {"reference": ref(source_id)},
        "for": {"reference": ref(golden_id)},
        "authoredOn": instant(),
        "input": inputs,
    }


def close_task(
    task: dict[str, Any],
    decision: str,
    decided_by: str,
    status: str = "completed",
    compared: str | None = None,
) -> dict[str, Any]:
    """``task`` closed with ``status`` (``completed``: a person decided; :data:`MOOT`; :data:`WITHDRAWN`), the
    ``decision`` and who made it. ``compared``: the other person's record the pair was shown with (the
    best-scoring one), so that the decision is a labelled pair of two records (``mediator.admin.labels``)."""
    closed = clone(task)
    closed["status"] = status
    closed["lastModified"] = instant()
    closed["businessStatus"] = {"text": decision}
    closed["output"] = [
        {"type": {"text": "decision"}, "valueString": decision},
        {"type": {"text": "decided-by"}, "valueString": decided_by},
    ]
    if compared:
        closed["output"].append(
            {"type": {"text": COMPARED_RECORD}, "valueReference": {"reference": ref(compared)}}
        )
    return closed
