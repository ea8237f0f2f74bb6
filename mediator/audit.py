"""FHIR ``AuditEvent`` resources for every submission and decision (ids and decisions, no demographics)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .records import CLIENT_SYSTEM, ref

DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL = "http://hl7.org/fhir/restful-interaction"


@dataclass(frozen=True)
class Actor:
    client_id: str | None
    address: str | None
    transaction_id: str | None = None  # OpenHIM transaction, when routed through the core


def submission_event(
    *,
    actor: Actor,
    action: str,  # "create" | "update"
    source_id: str,
    golden_id: str,
    previous_golden_id: str | None,
    outcome: str,
    score: float | None,
    rule: str,
) -> dict[str, Any]:
    details = [
        ("decision", outcome),
        ("rule", rule),
        ("cruid", golden_id),
    ]
    if score is not None:
        details.append(("score", f"{score:.4f}"))
    if previous_golden_id and previous_golden_id != golden_id:
        details.append(("previous-cruid", previous_golden_id))
    if actor.transaction_id:
        details.append(("openhim-transaction", actor.transaction_id))
    entities: list[dict[str, Any]] = [
        {
            "what": {"reference": ref(source_id)},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
            "description": "source record",
            "detail": [{"type": k, "valueString": v} for k, v in details],
        },
        {"what": {"reference": ref(golden_id)}, "description": "golden record"},
    ]
    if previous_golden_id and previous_golden_id != golden_id:
        entities.append(
            {"what": {"reference": ref(previous_golden_id)}, "description": "previous golden record"}
        )
    return event(actor=actor, subtype=action, entities=entities, action="C" if action == "create" else "U")


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
        "recorded": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "outcome": "0",
        "agent": [agent],
        "source": {"observer": {"display": "client-registry mediator"}},
        "entity": entities,
    }
