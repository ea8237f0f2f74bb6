"""Reviewers' decisions as labelled pairs: the decided review Tasks in HAPI, exported in the CSV that
``python -m matching train --labels FILE`` reads (:mod:`matching.labels`: ``id_a,id_b,decision`` with
``same`` or ``different``), and how many decisions were made since the rules in force were trained.

A decided Task is one a person closed with ``same-person`` or ``different-people`` (status ``completed``;
an undone decision reopened or withdrew it, a Task closed by a merge is ``cancelled``). Its pair of records:
``id_a`` the submitted record (``focus``), ``id_b`` the other person's record it was shown with — the
``compared-record`` the decision recorded, or, for a Task decided before decisions recorded it, the best
scoring source record (under the live rules) of the other person as that person is now (followed through
merges). A pair decided more than once keeps its latest decision.

Its fourth column, ``conflict``, flags the decisions ``train`` would refuse together: every pair of a
contradicting chain (A same B, B same C, A different C; :func:`matching.contradicting_chains`) says
``group-N``, one N per set of records the ``same`` decisions join; other rows leave it empty.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import matching

from .. import records
from ..config import ConfigHolder
from ..fhir_client import HapiClient
from ..records import Resource
from ..review import COMPARED_RECORD
from .curation import DIFFERENT_PEOPLE, SAME_PERSON, closest_record

KINDS = ("potential-match", "possible-duplicate")
DECIDED = "completed"
LABEL_OF = {SAME_PERSON: "same", DIFFERENT_PEOPLE: "different"}
HEADER = ("id_a", "id_b", "decision", "conflict")
CONFLICT_GROUPS = "X-Conflict-Groups"  # response headers of the export: groups of contradicting decisions
CONFLICT_ROWS = "X-Conflict-Rows"  # and the rows they flag
PAGE = 500


def decided_params() -> list[tuple[str, str]]:
    codes = ",".join(f"{records.REVIEW_TYPE_SYSTEM}|{k}" for k in KINDS)
    return [("status", DECIDED), ("code", codes)]


def _output(task: Mapping[str, Any], name: str) -> Any:
    for item in task.get("output", []):
        if item.get("type", {}).get("text") == name:
            return next((v for k, v in item.items() if k.startswith("value")), None)
    return None


def decision_of(task: Mapping[str, Any]) -> str | None:
    """``same`` / ``different`` for a Task a person decided, else None."""
    decided = _output(task, "decision") or task.get("businessStatus", {}).get("text")
    return LABEL_OF.get(decided) if task.get("status") == DECIDED else None


def _candidate_golden(task: Mapping[str, Any]) -> str | None:
    for item in task.get("input", []):
        if item.get("type", {}).get("text") == "candidate":
            return records.ref_id(item.get("valueReference", {}).get("reference"))
    return None


@dataclass(frozen=True)
class Trained:
    """When the rules in force were trained (the rules' ``trained``), else applied by a re-match."""

    at: str | None
    what: str  # "trained" | "applied" | "unknown"


def rules_trained(holder: ConfigHolder) -> Trained:
    trained = holder.current.rules.source.get("trained")
    if trained:
        return Trained(str(trained), "trained")
    if holder.origin.applied and holder.origin.applied_at and holder.origin.applied_at != "?":
        return Trained(holder.origin.applied_at, "applied")
    return Trained(None, "unknown")


async def counts(hapi: HapiClient, holder: ConfigHolder) -> dict[str, Any]:
    """Decisions in all and since the rules in force were trained (both ``_summary=count`` searches)."""
    trained = rules_trained(holder)
    total = await hapi.count("Task", decided_params())
    since = total
    if trained.at:
        since = await hapi.count("Task", [*decided_params(), ("modified", f"ge{trained.at}")])
    return {
        "decided": total,
        "since_rules": since,
        "rules": holder.current.rules.name,
        "rules_trained_at": trained.at,
        "rules_date_is": trained.what,
    }


async def _fallback_compared(
    hapi: HapiClient, tasks: list[Resource], rules: matching.Rules | None
) -> dict[str, str]:
    """Task id -> the other person's best-scoring record now (Tasks decided without ``compared-record``)."""
    out: dict[str, str] = {}
    for task in tasks:
        focus = records.ref_id(task.get("focus", {}).get("reference"))
        other = _candidate_golden(task)
        if not focus or not other:
            continue
        walk = await records.follow_replaced_by_async(lambda rid: hapi.read("Patient", rid), other)
        golden = walk.live
        if golden is None:
            continue
        ids = [s for s in records.source_ids_of(golden) if s != focus][:100]
        if not ids:
            continue
        found = await hapi.search(
            "Patient", {"_id": ",".join([*ids, focus]), "_count": str(len(ids) + 1)}, max_results=len(ids) + 1
        )
        by_id = {r["id"]: r for r in found}
        best = closest_record(by_id.get(focus), [by_id[s] for s in ids if s in by_id], golden["id"], rules)
        if best:
            out[task["id"]] = best
    return out


async def decided_pairs(hapi: HapiClient, rules: matching.Rules | None = None) -> list[tuple[str, str, str]]:
    """(id_a, id_b, same|different) of every decided review Task, oldest decision first, one row a pair."""
    tasks: list[Resource] = []
    params = dict(decided_params())
    async for page in hapi.pages(
        "Task",
        {
            **params,
            "_count": str(PAGE),
            "_elements": "id,status,code,focus,for,input,output,businessStatus,lastModified",
        },
    ):
        tasks.extend(page)
    decided = [t for t in tasks if decision_of(t)]
    missing = [t for t in decided if not compared_of(t)]
    fallback = await _fallback_compared(hapi, missing, rules) if missing else {}
    return pairs_of(decided, fallback)


def compared_of(task: Mapping[str, Any]) -> str | None:
    return records.ref_id((_output(task, COMPARED_RECORD) or {}).get("reference"))


def pairs_of(tasks: list[Resource], fallback: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(id_a, id_b, same|different) of the decided ``tasks``, oldest decision first; a pair decided more than
    once (either way round) keeps only its latest decision, in that decision's place."""
    latest: dict[tuple[str, str], tuple[str, str, str]] = {}
    for task in sorted(tasks, key=lambda t: (t.get("lastModified", ""), t["id"])):
        id_a = records.ref_id(task.get("focus", {}).get("reference"))
        id_b = compared_of(task) or fallback.get(task["id"])
        label = decision_of(task)
        if not id_a or not id_b or id_a == id_b or label is None:
            continue
        key = (min(id_a, id_b), max(id_a, id_b))
        latest.pop(key, None)
        latest[key] = (id_a, id_b, label)
    return list(latest.values())


@dataclass(frozen=True)
class Export:
    """The labels CSV and how many contradicting chains it flags: groups, and rows in them."""

    text: str
    groups: int
    flagged: int


def conflicts_of(pairs: list[tuple[str, str, str]]) -> list[str]:
    """Per pair, ``group-N`` when it belongs to a contradicting chain (:func:`matching.contradicting_chains`:
    a ``different`` pair that ``same`` pairs join, and those ``same`` pairs), else empty."""
    chains = matching.contradicting_chains([(a, b, label == "same") for a, b, label in pairs])
    out = [""] * len(pairs)
    for chain in chains:
        for i in (chain.different, *chain.same):
            out[i] = f"group-{chain.group}"
    return out


def to_csv(pairs: list[tuple[str, str, str]]) -> Export:
    """``id_a,id_b,decision,conflict``: ``train --labels`` reads the first three and refuses a file with a
    ``conflict`` filled in; the column names the group of decisions to look at again."""
    conflicts = conflicts_of(pairs)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows((*pair, conflict) for pair, conflict in zip(pairs, conflicts, strict=True))
    groups = {c for c in conflicts if c}
    return Export(out.getvalue(), len(groups), sum(1 for c in conflicts if c))
