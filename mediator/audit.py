"""FHIR ``AuditEvent`` resources for every submission and decision (ids and decisions, no demographics)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .instants import instant
from .records import CLIENT_SYSTEM, ref

DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
IHE_EVENT_TYPE = "urn:ihe:event-type-code"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
PIX_QUERY = "ITI-83"
DEMOGRAPHICS_MATCH = "ITI-119"


@dataclass(frozen=True)
class Actor:
    client_id: str | None
    address: str | None
    transaction_id: str | None = None  # OpenHIM transaction, when routed through the core


@dataclass(frozen=True)
class RecordDecision:
    """What one submission decided, for the AuditEvent of the transaction that wrote it."""

    action: str  # "create" | "update"
    source_id: str
    golden_id: str
    previous_golden_id: str | None
    outcome: str
    score: float | None
    rule: str
    transaction_id: str | None = None  # the OpenHIM transaction of the request that submitted it
    replaced_by: str | None = None  # its POS merged it into this source record (decision "pos-merge")
    moved_along: tuple[str, ...] = ()  # source records its POS merged into it, moved with it
    reviews_followed: tuple[str, ...] = ()  # review Tasks of the person it left empty, now about its new one


def submission_event(*, actor: Actor, decisions: Sequence[RecordDecision]) -> dict[str, Any]:
    """One AuditEvent per client and registry transaction: for each submission, the source record's entity
    (with the decision, and the OpenHIM transaction of its request, in its details) followed by its golden
    record's (and the previous one's, when it moved).

    A bulk batch of 50 submissions thus writes one AuditEvent, not 50 — the event's writes would otherwise
    halve HAPI's throughput. Readers take the entities in these per-submission groups (:func:`groups`)."""
    entities: list[dict[str, Any]] = []
    for d in decisions:
        details = [("decision", d.outcome), ("rule", d.rule), ("cruid", d.golden_id), ("action", d.action)]
        if d.score is not None:
            details.append(("score", f"{d.score:.4f}"))
        moved = d.previous_golden_id and d.previous_golden_id != d.golden_id
        if moved:
            details.append(("previous-cruid", d.previous_golden_id or ""))
        if d.replaced_by:
            details.append(("replaced-by", ref(d.replaced_by)))
        if d.transaction_id:
            details.append(("openhim-transaction", d.transaction_id))
        entities.append(
            {
                "what": {"reference": ref(d.source_id)},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
                "description": "source record",
                "detail": [{"type": k, "valueString": v} for k, v in details],
            }
        )
        entities.append({"what": {"reference": ref(d.golden_id)}, "description": "golden record"})
        if moved:
            previous = {"reference": ref(d.previous_golden_id or "")}
            entities.append({"what": previous, "description": "previous golden record"})
        entities.extend(
            {"what": {"reference": ref(f)}, "description": "source record replaced by it, moved along"}
            for f in d.moved_along
        )
        entities.extend(
            {
                "what": {"reference": f"Task/{t}"},
                "description": "review task of the previous person, retargeted or closed",
            }
            for t in d.reviews_followed
        )
    action = "create" if {d.action for d in decisions} == {"create"} else "update"
    return event(actor=actor, subtype=action, entities=entities, action="C" if action == "create" else "U")


def retraction_event(
    *, actor: Actor, source_id: str, golden_id: str | None, golden_inactive: bool, task_ids: Sequence[str]
) -> dict[str, Any]:
    """The AuditEvent of a source record its point-of-service system retracted (FHIR delete, action D):
    who, the source record (with its golden record and the request's OpenHIM transaction in its details),
    its golden record (``active: false`` when it was the last source) and the review Tasks closed as moot."""
    details = [("action", "delete")]
    if golden_id:
        details.append(("cruid", golden_id))
    if actor.transaction_id:
        details.append(("openhim-transaction", actor.transaction_id))
    entities: list[dict[str, Any]] = [
        {
            "what": {"reference": ref(source_id)},
            "type": {"system": ENTITY_TYPE, "code": "1"},  # person
            "role": {"system": OBJECT_ROLE, "code": "1"},  # patient
            "description": "source record (retracted)",
            "detail": [{"type": k, "valueString": v} for k, v in details],
        }
    ]
    if golden_id:
        golden: dict[str, Any] = {"what": {"reference": ref(golden_id)}, "description": "golden record"}
        if golden_inactive:
            golden["detail"] = [{"type": "active", "valueString": "false"}]
        entities.append(golden)
    entities.extend(
        {"what": {"reference": f"Task/{task_id}"}, "description": "review task closed (moot)"}
        for task_id in task_ids
    )
    return event(actor=actor, subtype="delete", entities=entities, action="D")


def pix_query_event(
    *, actor: Actor, query: str, golden_id: str | None, refused: str | None
) -> dict[str, Any]:
    """The AuditEvent of one identifier cross-reference lookup (IHE PIXm ITI-83, as its Query audit
    describes it): who asked, the query string (base64, as ``entity.query``) and, when the identifier was
    known, the person's golden record — so an admin sees who looked a person up. ``refused``: why the
    lookup was answered 4xx (outcome 4), e.g. an unknown identifier."""
    entities: list[dict[str, Any]] = [
        {
            "type": {"system": ENTITY_TYPE, "code": "2"},  # system object
            "role": {"system": OBJECT_ROLE, "code": "24"},  # query
            "query": base64.b64encode(query.encode()).decode(),
            "description": "identifier cross-reference query",
        }
    ]
    if golden_id:
        entities.append(
            {
                "what": {"reference": ref(golden_id)},
                "type": {"system": ENTITY_TYPE, "code": "1"},  # person
                "role": {"system": OBJECT_ROLE, "code": "1"},  # patient
                "description": "golden record",
            }
        )
    resource = event(actor=actor, subtype="search", entities=entities, action="E")
    resource["type"] = {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
    resource["subtype"].insert(
        0,
        {
            "system": IHE_EVENT_TYPE,
            "code": PIX_QUERY,
            "display": "Mobile Patient Identifier Cross-reference Query",
        },
    )
    if refused:
        resource["outcome"], resource["outcomeDesc"] = "4", refused
    return resource


def match_query_event(
    *, actor: Actor, golden_ids: Sequence[str], refused: str | None = None
) -> dict[str, Any]:
    """The AuditEvent of one demographics match (``Patient/$match``, IHE PDQm ITI-119): who asked and the
    golden record of each person answered. The query itself is demographics and is not recorded.
    ``refused``: why it was answered 4xx (outcome 4)."""
    entities: list[dict[str, Any]] = [
        {
            "type": {"system": ENTITY_TYPE, "code": "2"},  # system object
            "role": {"system": OBJECT_ROLE, "code": "24"},  # query
            "description": "demographics match query (not recorded: demographics)",
        }
    ]
    entities.extend(
        {
            "what": {"reference": ref(golden_id)},
            "type": {"system": ENTITY_TYPE, "code": "1"},  # person
            "role": {"system": OBJECT_ROLE, "code": "1"},  # patient
            "description": "golden record",
        }
        for golden_id in golden_ids
    )
    resource = event(actor=actor, subtype="operation", entities=entities, action="E")
    resource["type"] = {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
    resource["subtype"].insert(
        0, {"system": IHE_EVENT_TYPE, "code": DEMOGRAPHICS_MATCH, "display": "Patient Demographics Match"}
    )
    if refused:
        resource["outcome"], resource["outcomeDesc"] = "4", refused
    return resource


def details_of(entity: Mapping[str, Any]) -> dict[str, str]:
    return {d.get("type"): d.get("valueString") for d in entity.get("detail", []) if d.get("type")}


def groups(event_resource: Mapping[str, Any]) -> list[list[dict[str, Any]]]:
    """The event's entities per submission: each group starts at an entity carrying a ``decision``. An event
    without decisions (an admin action) is one group."""
    out: list[list[dict[str, Any]]] = []
    for entity in event_resource.get("entity", []):
        if "decision" in details_of(entity) or not out:
            out.append([entity])
        else:
            out[-1].append(entity)
    return out


def event(*, actor: Actor, subtype: str, entities: list[dict[str, Any]], action: str = "U") -> dict[str, Any]:
    agent: dict[str, Any] = {
        "who": {"identifier": {"system": CLIENT_SYSTEM, "value": actor.client_id or "anonymous"}},
        "requestor": True,
    }
    if actor.address:
        agent["network"] = {"address": actor.address, "type": "2"}
    return {
        "resourceType": "AuditEvent",
        "id": f"au-{uuid.uuid4()}",
        "type": {"system": DCM, "code": "110110", "display": "Patient Record"},
        "subtype": [{"system": RESTFUL, "code": subtype}],
        "action": action,
        "recorded": instant(timespec="milliseconds"),
        "outcome": "0",
        "agent": [agent],
        "source": {"observer": {"display": "client-registry mediator"}},
        "entity": entities,
    }
