"""IHE PDQm Patient Demographics Match (``POST Patient/$match``, ITI-119): which people of the registry a
Patient's demographics point to, answered with identifiers only.

The query Patient is blocked and scored as a submission of it would be (:meth:`Registry.decide_query`),
nothing is written but the query's AuditEvent, and each person found is answered as a Patient holding the
CRUID and the identifiers the caller may see, as ``$ihe-pix`` answers them: never another person's
demographics. Grades follow the registry's outcomes: ``match`` is ``certain``, ``potential`` ``possible``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from . import pix
from .audit import Actor, match_query_event
from .config import RegistryConfig
from .errors import Forbidden, InvalidInput
from .registry import Registry
from .validation import validate_patient

log = logging.getLogger(__name__)

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"
GRADES = {"match": "certain", "potential": "possible"}
COUNT_DEFAULT = 10
COUNT_MAX = 50


@dataclass(frozen=True)
class MatchQuery:
    patient: dict[str, Any]  # validated, identifiers in their normal form
    count: int = COUNT_DEFAULT
    only_certain: bool = False


def parse_match_parameters(data: dict[str, Any]) -> MatchQuery:
    """The ``$match`` request body (``Parameters``: ``resource``, optional ``count`` and
    ``onlyCertainMatches``) as a :class:`MatchQuery`; 400 naming the parameter otherwise."""
    if data.get("resourceType") != "Parameters":
        raise InvalidInput("Patient/$match takes a Parameters resource.", expression=["Parameters"])
    given: dict[str, tuple[int, dict[str, Any]]] = {}
    parameters = data.get("parameter")
    if not isinstance(parameters, list):
        raise InvalidInput("Parameters.parameter must be a list.", expression=["Parameters.parameter"])
    for index, parameter in enumerate(parameters):
        where = f"Parameters.parameter[{index}]"
        name = parameter.get("name") if isinstance(parameter, dict) else None
        if name not in ("resource", "count", "onlyCertainMatches"):
            raise InvalidInput(
                "Patient/$match knows the parameters resource, count and onlyCertainMatches.",
                expression=[where],
            )
        if name in given:
            raise InvalidInput(f"The parameter {name} is given twice.", expression=[where])
        given[name] = (index, parameter)
    if "resource" not in given:
        raise InvalidInput("Patient/$match needs the parameter resource (a Patient).")
    index, parameter = given["resource"]
    resource = parameter.get("resource")
    if not isinstance(resource, dict):
        raise InvalidInput(
            "The parameter resource must hold a Patient.", expression=[f"Parameters.parameter[{index}]"]
        )
    where = f"Parameters.parameter[{index}].resource"
    patient = validate_patient(resource, where, identifier_required=False)
    count = COUNT_DEFAULT
    if "count" in given:
        index, parameter = given["count"]
        value = parameter.get("valueInteger")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= COUNT_MAX:
            raise InvalidInput(
                f"count must be a valueInteger from 1 to {COUNT_MAX}.",
                expression=[f"Parameters.parameter[{index}]"],
            )
        count = value
    only_certain = False
    if "onlyCertainMatches" in given:
        index, parameter = given["onlyCertainMatches"]
        flag = parameter.get("valueBoolean")
        if not isinstance(flag, bool):
            raise InvalidInput(
                "onlyCertainMatches must be a valueBoolean.", expression=[f"Parameters.parameter[{index}]"]
            )
        only_certain = flag
    return MatchQuery(patient, count, only_certain)


@dataclass(frozen=True)
class Person:
    golden: dict[str, Any]  # the live golden record
    grade: str  # "certain" | "possible"
    probability: float  # the best candidate's score as a probability: 2^s / (1 + 2^s)


async def audited_match(registry: Registry, query: MatchQuery, *, actor: Actor) -> dict[str, Any]:
    """The ``$match`` answer (a ``searchset`` Bundle) for ``query`` as ``actor`` may see it, under the rules
    submissions are decided by (the applied ones, once read), recorded as an AuditEvent before it is given,
    refusals too (HAPI unavailable: 503, neither answer nor record)."""
    started = time.perf_counter()
    await registry.config.settled()
    cfg = registry.config.current
    try:
        visible = pix.visible_systems(cfg, actor.client_id)
        if visible is not None:
            foreign = sorted({i["system"] for i in query.patient.get("identifier", [])} - visible)
            if foreign:
                raise Forbidden(
                    f"Client '{actor.client_id}' may not match on identifiers of system(s): "
                    f"{', '.join(foreign)}."
                )
        people = await _people(registry, cfg, query)
    except Forbidden as refused:
        event = match_query_event(actor=actor, golden_ids=[], refused=refused.diagnostics)
        await pix.record_event(registry.hapi, event)
        raise
    await pix.record_event(
        registry.hapi, match_query_event(actor=actor, golden_ids=[p.golden["id"] for p in people])
    )
    entries = []
    for person in people:
        identifiers, _ = await pix.person_identifiers(registry.hapi, cfg, person.golden, set(visible or ()))
        entries.append(
            {
                "resource": {"resourceType": "Patient", "id": person.golden["id"], "identifier": identifiers},
                "search": {
                    "mode": "match",
                    "score": round(person.probability, 4),
                    "extension": [{"url": MATCH_GRADE, "valueCode": person.grade}],
                },
            }
        )
    log.info(
        "demographics match answered",
        extra={
            "people": len(entries),
            "certain": sum(p.grade == "certain" for p in people),
            "ms": round((time.perf_counter() - started) * 1000, 1),
        },
    )
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}


async def _people(registry: Registry, cfg: RegistryConfig, query: MatchQuery) -> list[Person]:
    """The people the query Patient would be matched or put up for review with, best first: each live golden
    record once, at its best candidate's grade and score."""
    decision = await registry.decide_query(query.patient, cfg)
    people: dict[str, Person] = {}
    # enough read: ``count`` people, or, for a certain match only, a second certain person or the first
    # that is not certain (scores come best first: every certain one before any possible one)
    enough = 2 if query.only_certain else query.count
    for scored in decision.scores:
        grade = GRADES.get(scored.classification)
        if grade is None or len(people) >= enough or (query.only_certain and grade != "certain"):
            break
        golden = await registry.hapi.read("Patient", scored.golden_id)
        if golden is None:
            continue  # removed since the candidate was listed
        live = await pix.live_golden(registry.hapi, golden)
        if live["id"] not in people:
            people[live["id"]] = Person(live, grade, _probability(scored.score))
    found = list(people.values())
    if query.only_certain:
        certain = [p for p in found if p.grade == "certain"]
        # one certain person or none: a client asking for certainty gets no choice to make
        found = certain if len(certain) == 1 else []
    return found[: query.count]


def _probability(score: float) -> float:
    """A Fellegi-Sunter score (log2 odds) as a probability."""
    return 1.0 / (1.0 + math.pow(2.0, -max(-60.0, min(60.0, score))))


__all__ = ["MatchQuery", "audited_match", "parse_match_parameters"]
