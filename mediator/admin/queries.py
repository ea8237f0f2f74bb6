"""Read side of curation: the review queue, one pair with its explanation, new auto-matches, person search,
golden record views and audit history. Everything here only reads HAPI."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import matching

from .. import audit, records
from ..config import RegistryConfig
from ..errors import InvalidInput, NotFound, Unprocessable
from ..fhir_client import HapiClient
from ..identifiers import IdentifierRefused, holds, normal_form, normal_text, search_escape, token
from ..records import Resource
from ..review import OPEN, POSSIBLE_DUPLICATE, POTENTIAL_MATCH
from . import score_index
from .curation import ADMIN_ACTION_SYSTEM, ADMIN_USER_SYSTEM

MAX_QUEUE = 20_000
HISTORY_MAX = 500  # AuditEvents about 50 records, newest first
KINDS = (POTENTIAL_MATCH, POSSIBLE_DUPLICATE)
RESTFUL = "http://hl7.org/fhir/restful-interaction"


def task_kind(task: Mapping[str, Any]) -> str | None:
    for coding in task.get("code", {}).get("coding", []):
        if coding.get("system") == records.REVIEW_TYPE_SYSTEM and isinstance(coding.get("code"), str):
            return str(coding["code"])
    return None


def task_input(task: Mapping[str, Any], name: str) -> Any:
    for item in task.get("input", []):
        if item.get("type", {}).get("text") == name:
            for key, value in item.items():
                if key.startswith("value"):
                    return value
    return None


def task_score(task: Mapping[str, Any]) -> float | None:
    value = task_input(task, "score")
    return float(value) if value is not None else None


def person_summary(patient: Mapping[str, Any] | None) -> dict[str, Any]:
    """The demographics an admin needs to recognise a source record."""
    if patient is None:
        return {}
    name: dict[str, Any] = next(iter(patient.get("name", [])), {})
    return {
        "id": patient.get("id"),
        "name": " ".join([*name.get("given", []), name.get("family", "")]).strip(),
        "birthDate": patient.get("birthDate"),
        "gender": patient.get("gender"),
        "identifiers": [f"{i.get('system')}|{i.get('value')}" for i in patient.get("identifier", [])],
        "client": records.client_of(patient),
        "golden": records.golden_id_of(patient),
        "manual": records.link_decision(patient) == records.MANUAL,
        "mergedInto": records.pos_survivor(patient),  # its POS merged it into that record (IHE PMIR)
    }


async def read_many(hapi: HapiClient, resource_type: str, ids: list[str]) -> dict[str, Resource]:
    """Several resources by id with one search per 100 ids."""
    ids = list(dict.fromkeys(i for i in ids if i))
    chunks = [ids[i : i + 100] for i in range(0, len(ids), 100)]
    found = await asyncio.gather(
        *(
            hapi.search(resource_type, {"_id": ",".join(c), "_count": str(len(c))}, max_results=len(c))
            for c in chunks
        )
    )
    return {r["id"]: r for chunk in found for r in chunk}


@dataclass(frozen=True)
class QueueFilter:
    kind: str = POTENTIAL_MATCH
    system: str | None = None  # identifier system (facility) of the submitted record
    since: str | None = None  # authored on or after (FHIR date/dateTime)
    until: str | None = None
    page: int = 1
    per_page: int = 50

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> QueueFilter:
        kind = query.get("kind", POTENTIAL_MATCH)
        if kind not in KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(KINDS)}.")
        try:
            page = max(1, int(query.get("page", "1")))
            per_page = min(200, max(1, int(query.get("per_page", "50"))))
        except ValueError as exc:
            raise InvalidInput("page and per_page must be integers.") from exc
        return cls(
            kind=kind,
            system=query.get("system") or None,
            since=query.get("since") or None,
            until=query.get("until") or None,
            page=page,
            per_page=per_page,
        )


def _queue_params(f: QueueFilter) -> list[tuple[str, str]]:
    params = [("status", OPEN), ("code", f"{records.REVIEW_TYPE_SYSTEM}|{f.kind}")]
    if f.system:
        params.append(("focus:Patient.identifier", f"{f.system}|"))
    if f.since:
        params.append(("authored-on", f"ge{f.since}"))
    if f.until:
        params.append(("authored-on", f"le{f.until}"))
    return params


QUEUE_ELEMENTS = ("_elements", "id,focus,for,input,authoredOn,code,status")


async def queue(hapi: HapiClient, f: QueueFilter, index: score_index.ScoreIndex) -> dict[str, Any]:
    """One page of open review Tasks, highest score first (ties: oldest first, then id).

    HAPI sorts and pages through the ``review-score`` search parameter (:mod:`.score_index`); until that is
    installed and every open Task indexed, the Tasks are read and sorted here (slow with thousands)."""
    params = _queue_params(f)
    index.start(hapi)
    if index.is_ready():
        try:
            total, page = await asyncio.gather(
                hapi.count("Task", params),
                hapi.search(
                    "Task",
                    [
                        *params,
                        ("_sort", f"-{score_index.CODE},authored-on,_id"),
                        ("_count", str(f.per_page)),
                        ("_offset", str((f.page - 1) * f.per_page)),
                        QUEUE_ELEMENTS,
                    ],
                    max_results=f.per_page,
                ),
            )
        except Unprocessable:  # the store no longer knows review-score
            index.forget()
            total, page = await _queue_in_memory(hapi, f, params)
    else:
        total, page = await _queue_in_memory(hapi, f, params)
    sources = await read_many(
        hapi, "Patient", [records.ref_id(t.get("focus", {}).get("reference")) or "" for t in page]
    )
    items = []
    for t in page:
        focus = records.ref_id(t.get("focus", {}).get("reference"))
        items.append(
            {
                "task": t["id"],
                "kind": task_kind(t),
                "score": task_score(t),
                "rule": task_input(t, "rule"),
                "authoredOn": t.get("authoredOn"),
                "source": person_summary(sources.get(focus or "")),
                "golden": records.ref_id(t.get("for", {}).get("reference")),
                "candidate": records.ref_id((task_input(t, "candidate") or {}).get("reference")),
            }
        )
    return {"total": total, "page": f.page, "per_page": f.per_page, "kind": f.kind, "items": items}


async def _queue_in_memory(
    hapi: HapiClient, f: QueueFilter, params: list[tuple[str, str]]
) -> tuple[int, list[Resource]]:
    tasks = await hapi.search("Task", [*params, ("_count", "1000"), QUEUE_ELEMENTS], max_results=MAX_QUEUE)
    tasks.sort(key=lambda t: (-(task_score(t) or float("-inf")), t.get("authoredOn", ""), t["id"]))
    start = (f.page - 1) * f.per_page
    return len(tasks), tasks[start : start + f.per_page]


async def _live_golden(hapi: HapiClient, golden_id: str) -> Resource:
    """The live golden record, following ``replaced-by`` links; 404 for any other end of the walk."""
    walk = await records.follow_replaced_by_async(lambda rid: hapi.read("Patient", rid), golden_id)
    if walk.live is not None:
        return walk.live
    if walk.end in (records.ABSENT, records.NOT_GOLDEN):
        gone = walk.missing if walk.end == records.ABSENT else walk.last["id"] if walk.last else golden_id
        raise NotFound(f"Golden record Patient/{gone} does not exist.")
    raise NotFound("Too many replaced-by links.")  # a cycle, or over MAX_RECORDS


def field_agreement(level: str, field: matching.FieldExplanation, rules: matching.Rules) -> str:
    """agree / close / differ / missing for one compared field."""
    names = next((f.level_names for f in rules.fields if f.name == field.field), ())
    if not field.left or not field.right or (names and level == names[0]):
        return "missing"
    if names and len(names) > 1 and level == names[1]:
        return "agree"
    if level == "else" or field.weight <= 0:
        return "differ"
    return "close"


async def pair(hapi: HapiClient, cfg: RegistryConfig, task_id: str) -> dict[str, Any]:
    task = await hapi.read("Task", task_id)
    if task is None or task_kind(task) not in KINDS:
        raise NotFound(f"Review Task/{task_id} does not exist.")
    focus = records.ref_id(task.get("focus", {}).get("reference"))
    source = await hapi.read("Patient", focus) if focus else None
    if source is None:
        raise NotFound(f"The submitted record of Task/{task_id} no longer exists.")
    subject_golden = await _live_golden(
        hapi, records.golden_id_of(source) or records.ref_id(task["for"]["reference"]) or ""
    )
    other_id = records.ref_id((task_input(task, "candidate") or {}).get("reference")) or ""
    other_golden = await _live_golden(hapi, other_id)
    other_sources = await read_many(hapi, "Patient", records.source_ids_of(other_golden))
    candidates = [
        matching.Candidate(id=sid, golden_id=other_golden["id"], resource=s)
        for sid, s in other_sources.items()
        if sid != source["id"]
    ]
    result: dict[str, Any] = {
        "task": {
            "id": task["id"],
            "kind": task_kind(task),
            "status": task.get("status"),
            "decision": task.get("businessStatus", {}).get("text"),
            "score": task_score(task),
            "rule": task_input(task, "rule"),
            "authoredOn": task.get("authoredOn"),
        },
        "same_golden": subject_golden["id"] == other_golden["id"],
        "left": {
            "record": person_summary(source),
            "golden": subject_golden["id"],
            "golden_sources": len(records.source_ids_of(subject_golden)),
        },
        "right": {"golden": other_golden["id"], "golden_sources": len(records.source_ids_of(other_golden))},
        "thresholds": {
            "auto_match": cfg.rules.auto_threshold,
            "potential_match": cfg.rules.potential_threshold,
        },
    }
    if candidates:
        decision = matching.decide(source, candidates, cfg.rules)
        best = decision.scores[0]
        explanation = best.explanation
        result["right"]["record"] = person_summary(other_sources[best.candidate_id])
        result["score"] = best.score
        result["classification"] = best.classification
        result["explanation"] = explanation.to_dict()
        result["fields"] = [
            {
                "field": fe.field,
                "left": list(fe.left),
                "right": list(fe.right),
                "level": fe.level,
                "weight": fe.weight,
                "agreement": field_agreement(fe.level, fe, cfg.rules),
            }
            for fe in explanation.fields
        ]
        result["others"] = [
            {"candidate": s.candidate_id, "score": s.score, "classification": s.classification}
            for s in decision.scores
        ]
    return result


AUTO_MATCH_PAGE = 200  # AuditEvents a page, at most (one HAPI query, kept by no search cache)
AUTO_MATCH_FIRST_PAGE = 50  # the first page: the newest events usually hold enough links
AUTO_MATCH_SCAN = 4000  # AuditEvents looked at, at most, for one answer


def _submission_event(ev: Resource) -> bool:
    return any(
        c.get("system") == RESTFUL and c.get("code") in ("create", "update") for c in ev.get("subtype", [])
    )


def auto_match_page_params(before: str | None, since: str | None) -> list[tuple[str, str]]:
    """One page of AuditEvents, newest first, through ``_lastUpdated`` — a column of HAPI's resource table,
    indexed with the resource type, so the store reads the newest rows of the index and stops at the page
    size. Sorting by ``date`` (an AuditEvent search parameter: a join on the date index table) or filtering by
    ``subtype`` (a join on the token index table) made HAPI sort every AuditEvent first: 40-52 s at 23,000.
    ``before``: the page's end (``le``: the oldest instant seen; the events already seen are skipped)."""
    params = [("_sort", "-_lastUpdated")]
    if before:
        params.append(("_lastUpdated", f"le{before}"))
    if since:
        params.append(("_lastUpdated", f"ge{since}"))
    return params


def _matches_in(ev: Resource, seen: set[str]) -> list[tuple[Resource, str, dict[str, str]]]:
    """(event, source id, details) of each automatic link the submission event records, sources not in
    ``seen`` (added to it)."""
    out: list[tuple[Resource, str, dict[str, str]]] = []
    if not _submission_event(ev):
        return out
    for group in audit.groups(ev):  # one group per submission of the event's transaction
        details = audit.details_of(group[0])
        source_id = records.ref_id(group[0].get("what", {}).get("reference"))
        if details.get("decision") == "match" and source_id and source_id not in seen:
            seen.add(source_id)
            out.append((ev, source_id, details))
    return out


async def auto_matches(hapi: HapiClient, since: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Recent submissions linked automatically to an existing person, not yet confirmed by a person; newest
    first. AuditEvents are read a page at a time, newest first (:func:`auto_match_page_params`), until
    ``limit`` are found, ``since`` is reached or :data:`AUTO_MATCH_SCAN` events were looked at; the source
    records are read as far as needed (a bulk batch's one event can name 50 links). AuditEvents are never
    updated, so their ``_lastUpdated`` is when they were written."""
    out: list[dict[str, Any]] = []
    seen_events: set[str] = set()
    seen_sources: set[str] = set()
    before: str | None = None
    scanned = 0
    size = min(AUTO_MATCH_FIRST_PAGE, AUTO_MATCH_PAGE)
    while scanned < AUTO_MATCH_SCAN and len(out) < limit:
        page = await hapi.search_once("AuditEvent", auto_match_page_params(before, since), max_results=size)
        fresh = [ev for ev in page if ev.get("id") not in seen_events]
        if not fresh:
            break
        seen_events.update(ev["id"] for ev in fresh)
        scanned += len(fresh)
        picked = [m for ev in fresh for m in _matches_in(ev, seen_sources)]
        while picked and len(out) < limit:
            chunk, picked = picked[: max(limit - len(out), 20)], picked[max(limit - len(out), 20) :]
            sources = await read_many(hapi, "Patient", [source_id for _, source_id, _ in chunk])
            for ev, source_id, details in chunk:
                source = sources.get(source_id)
                if source is None or records.is_manually_linked(source) or len(out) >= limit:
                    continue
                out.append(
                    {
                        "auditEvent": ev["id"],
                        "recorded": ev.get("recorded"),
                        "score": float(details["score"]) if details.get("score") else None,
                        "rule": details.get("rule"),
                        "source": person_summary(source),
                        "golden": records.golden_id_of(source),
                    }
                )
        if len(page) < size:
            break
        before = page[-1].get("meta", {}).get("lastUpdated")
        if not before:
            break
        size = AUTO_MATCH_PAGE
    return out


def _identifier_query(text: str) -> tuple[str | None, str]:
    """An admin's identifier search (``system|value``, or a value of any system) in normal form."""
    system, bar, value = text.partition("|")
    try:
        if bar:
            return normal_form(system, value)
        return None, normal_text(text, "value")
    except IdentifierRefused as exc:
        raise InvalidInput(str(exc)) from exc


async def search_people(
    hapi: HapiClient, cfg: RegistryConfig, identifier: str | None, name: str | None
) -> list[dict[str, Any]]:
    if not identifier and not name:
        raise InvalidInput("Search by identifier (system|value or value) or by name.")
    goldens: dict[str, Resource] = {}
    if identifier and identifier.startswith("cr-"):
        golden = await hapi.read("Patient", identifier)
        if golden is not None and records.is_golden(golden):
            goldens[golden["id"]] = golden
    params = {"_tag": f"{records.RECORD_TYPE_SYSTEM}|{records.SOURCE}", "_count": "100"}
    wanted = _identifier_query(identifier) if identifier else None
    if wanted:
        system, value = wanted
        params["identifier"] = token(system, value) if system is not None else search_escape(value)
    if name:
        params["name"] = name
    sources = await hapi.search("Patient", params, max_results=100)
    if wanted:  # HAPI trims and truncates what it indexes: only records holding exactly this identifier
        sources = [s for s in sources if holds(s.get("identifier", []), *wanted)]
    golden_ids = [g for s in sources if (g := records.golden_id_of(s)) and g not in goldens]
    goldens.update(await read_many(hapi, "Patient", golden_ids))
    out = []
    for gid, golden in goldens.items():
        matched = [person_summary(s) for s in sources if records.golden_id_of(s) == gid]
        out.append(
            {
                "golden": gid,
                "cruid": records.cruid_of(golden, cfg.cruid_system),
                "active": golden.get("active", True),
                "replaced_by": records.replaced_by(golden),
                "sources": len(records.source_ids_of(golden)),
                "matched": matched,
            }
        )
    return out


async def golden_view(hapi: HapiClient, cfg: RegistryConfig, golden_id: str) -> dict[str, Any]:
    golden = await hapi.read("Patient", golden_id)
    if golden is None or not records.is_golden(golden):
        raise NotFound(f"Golden record Patient/{golden_id} does not exist.")
    sources = await read_many(hapi, "Patient", records.source_ids_of(golden))
    return {
        "golden": golden_id,
        "cruid": records.cruid_of(golden, cfg.cruid_system),
        "active": golden.get("active", True),
        "replaced_by": records.replaced_by(golden),
        "distinct_from": sorted(records.distinct_from(golden)),
        "sources": [person_summary(sources[s]) for s in records.source_ids_of(golden) if s in sources],
        "history": await history(hapi, golden_id),
    }


def _event_summary(ev: Resource, about: set[str] | None = None) -> dict[str, Any]:
    """The event for the history page; of a transaction's event (several submissions), only the submissions
    touching the records ``about``."""
    agent: dict[str, Any] = next(iter(ev.get("agent", [])), {})
    who = agent.get("who", {}).get("identifier", {})
    action = next((c.get("code") for c in ev.get("subtype", [])), None)
    if action == audit.PIX_QUERY:
        action = "identifier lookup (PIXm)"
    elif action == audit.DEMOGRAPHICS_MATCH:
        action = "demographics match (PDQm)"
    admin = any(c.get("system") == ADMIN_ACTION_SYSTEM for c in ev.get("subtype", []))
    entities = []
    decision = None
    groups = audit.groups(ev)
    if about is not None and len(groups) > 1:
        groups = [
            g for g in groups if any(records.ref_id(e.get("what", {}).get("reference")) in about for e in g)
        ] or groups
    for e in (entity for g in groups for entity in g):
        if not e.get("what", {}).get("reference"):
            continue  # a lookup's query: the event's action says what it was
        details = audit.details_of(e)
        item: dict[str, Any] = {
            "what": e.get("what", {}).get("reference"),
            "description": e.get("description"),
        }
        if "before" in details:
            item["before"] = json.loads(details["before"] or "{}")
            item["after"] = json.loads(details["after"] or "{}")
        if "decision" in details:
            decision = details["decision"]
            item["details"] = details
        entities.append(item)
    return {
        "id": ev["id"],
        "recorded": ev.get("recorded"),
        "action": action,
        "by": who.get("value"),
        "admin": admin and who.get("system") == ADMIN_USER_SYSTEM,
        "decision": decision,
        "note": ev.get("outcomeDesc"),
        "entities": entities,
    }


async def history(hapi: HapiClient, patient_id: str) -> list[dict[str, Any]]:
    """AuditEvents about the record and, for a golden record, about its source records; newest first."""
    patient = await hapi.read("Patient", patient_id)
    if patient is None:
        raise NotFound(f"Patient/{patient_id} does not exist.")
    ids = [patient_id]
    if records.is_golden(patient):
        ids.extend(records.source_ids_of(patient))
    chunks = [ids[i : i + 50] for i in range(0, len(ids), 50)]
    # newest first by _lastUpdated (a column of HAPI's resource table; AuditEvents are never updated), in one
    # answer HAPI does not keep: sorting by ``date`` joined the date index table (1.1 s vs 0.2 s for one
    # person on H2 with 20,000 AuditEvents, 6 s for the person page)
    found = await asyncio.gather(
        *(
            hapi.search_once(
                "AuditEvent",
                {"entity": ",".join(records.ref(i) for i in c), "_sort": "-_lastUpdated"},
                max_results=HISTORY_MAX,
            )
            for c in chunks
        )
    )
    events = {ev["id"]: ev for chunk in found for ev in chunk}
    ordered = sorted(events.values(), key=lambda ev: ev.get("recorded", ""), reverse=True)
    return [_event_summary(ev, set(ids)) for ev in ordered]
