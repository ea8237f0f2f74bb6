"""FHIR endpoints that OpenHIM routes to. Each handler: parse → validate → registry → FHIR answer."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from . import pdqm, pix, records, retraction
from .audit import Actor
from .context import CONFIG, METRICS, REGISTRY_RESULT, RETRACTION, SETTINGS, STARTED_AT, STORE
from .errors import InvalidInput, RegistryError
from .forwarded import client_address  # X-Forwarded-For only from CR_TRUSTED_PROXIES
from .registry import Submission, SubmissionResult
from .review import OPEN, POSSIBLE_DUPLICATE, POTENTIAL_MATCH
from .validation import (
    check_id,
    parse_identifier_param,
    parse_systems_param,
    read_json,
    validate_bundle,
    validate_patient,
)

FHIR_JSON = "application/fhir+json"
POS_MERGE_NOTE = (
    "Patient.link: only one replaced-by link to another source record of the same client (IHE PMIR merge); "
    "other link types are refused."
)


def fhir_response(
    body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        text=json.dumps(body, separators=(",", ":")),
        status=status,
        content_type=FHIR_JSON,
        headers=headers,
    )


def actor_of(request: web.Request) -> Actor:
    return Actor(
        client_id=request.headers.get("X-OpenHIM-ClientID") or None,
        address=client_address(request),
        transaction_id=request.headers.get("X-OpenHIM-TransactionID") or None,
    )


def _result_headers(result: SubmissionResult) -> dict[str, str]:
    location = f"Patient/{result.source_id}" + (f"/_history/{result.version}" if result.version else "")
    headers = {
        "Location": location,
        "X-CRUID": result.cruid,
        "LocationCRUID": f"Patient/{result.golden_id}",
        "X-Match-Outcome": result.outcome,
    }
    if result.version:
        headers["ETag"] = f'W/"{result.version}"'
    return headers


def _answer(request: web.Request, result: SubmissionResult) -> web.Response:
    cfg = request.app[CONFIG].current
    request[REGISTRY_RESULT] = result  # for the OpenHIM envelope's properties
    return fhir_response(
        result.response_patient(cfg.cruid_system),
        status=201 if result.created else 200,
        headers=_result_headers(result),
    )


async def create_patient(request: web.Request) -> web.Response:
    patient = validate_patient(await read_json(request))
    result = await request.app[STORE].registry.submit(Submission(patient=patient, actor=actor_of(request)))
    return _answer(request, result)


async def update_patient(request: web.Request) -> web.Response:
    target_id = check_id(request.match_info["id"], "Patient.id")
    patient = validate_patient(await read_json(request))
    if patient.get("id") not in (None, target_id):
        raise InvalidInput("Patient.id must equal the id in the URL.", expression=["Patient.id"])
    submission = Submission(patient=patient, actor=actor_of(request), target_id=target_id)
    return _answer(request, await request.app[STORE].registry.submit(submission))


async def conditional_update_patient(request: web.Request) -> web.Response:
    if set(request.query) != {"identifier"} or len(request.query.getall("identifier")) != 1:
        raise InvalidInput("Conditional update needs exactly one search parameter: identifier=system|value.")
    conditional = parse_identifier_param(request.query.get("identifier"), "identifier")
    patient = validate_patient(await read_json(request))
    submission = Submission(patient=patient, actor=actor_of(request), conditional=conditional)
    return _answer(request, await request.app[STORE].registry.submit(submission))


async def delete_patient(request: web.Request) -> web.Response:
    """FHIR delete of the caller's own source record (a record entered in error): 200 with an
    OperationOutcome naming it, the same for a retry once it is deleted (``mediator/retraction.py``)."""
    source_id = check_id(request.match_info["id"], "Patient.id")
    done = await retraction.retract(request.app[STORE].registry, source_id, actor_of(request))
    request[RETRACTION] = done  # for the OpenHIM envelope's properties
    return fhir_response(done.outcome())


async def ihe_pix(request: web.Request) -> web.Response:
    if len(request.query.getall("sourceIdentifier", [])) > 1:  # not answered for the first one alone
        raise InvalidInput("Parameter sourceIdentifier must be given once.")
    source = parse_identifier_param(request.query.get("sourceIdentifier"), "sourceIdentifier")
    targets = parse_systems_param(request.query.getall("targetSystem", []), "targetSystem")
    parameters = await pix.audited_cross_references(
        request.app[STORE].hapi,
        request.app[CONFIG].current,
        source,
        targets,
        actor=actor_of(request),
        query=request.rel_url.raw_query_string,  # as sent
    )
    return fhir_response(parameters)


async def patient_match(request: web.Request) -> web.Response:
    query = pdqm.parse_match_parameters(await read_json(request))
    bundle = await pdqm.audited_match(request.app[STORE].registry, query, actor=actor_of(request))
    return fhir_response(bundle)


def _entry_submission(entry: Any, index: int, actor: Actor) -> Submission:
    where = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict):
        raise InvalidInput("Each Bundle entry must be an object.", expression=[where])
    request = entry.get("request") or {}
    if not isinstance(request, dict):
        raise InvalidInput("Bundle.entry.request must be an object.", expression=[f"{where}.request"])
    method = str(request.get("method", "")).upper()
    url = str(request.get("url", ""))
    resource = entry.get("resource")
    if not isinstance(resource, dict):
        raise InvalidInput("Each entry needs a resource.", expression=[f"{where}.resource"])
    patient = validate_patient(resource, f"{where}.resource")
    if method == "POST" and url.rstrip("/") == "Patient":
        return Submission(patient=patient, actor=actor)
    if method == "PUT" and url.startswith("Patient?"):
        query = parse_qs(url.partition("?")[2])
        if set(query) != {"identifier"} or len(query["identifier"]) != 1:
            raise InvalidInput(
                "Conditional update needs identifier=system|value.", expression=[f"{where}.request.url"]
            )
        return Submission(
            patient=patient,
            actor=actor,
            conditional=parse_identifier_param(query["identifier"][0], "identifier"),
        )
    if method == "PUT" and url.startswith("Patient/") and url.count("/") == 1:
        target_id = check_id(url.split("/", 1)[1], f"{where}.request.url")
        if patient.get("id") not in (None, target_id):  # as PUT /fhir/Patient/{id} refuses it
            raise InvalidInput(
                "Patient.id must equal the id in the request URL.", expression=[f"{where}.resource.id"]
            )
        return Submission(patient=patient, actor=actor, target_id=target_id)
    raise InvalidInput(
        "Entries must be POST Patient, PUT Patient/{id}, PUT Patient?identifier=system|value "
        "(or, in a batch, DELETE Patient/{id}).",
        expression=[f"{where}.request"],
    )


def _entry_deletion(entry: Any, index: int) -> str | None:
    """The id of a ``DELETE Patient/{id}`` entry (400 for a DELETE of anything else); None for any other
    entry."""
    request = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(request, dict) or str(request.get("method", "")).upper() != "DELETE":
        return None
    where = f"Bundle.entry[{index}].request.url"
    url = str(request.get("url", ""))
    if not url.startswith("Patient/") or url.count("/") != 1:
        raise InvalidInput("DELETE entries must be DELETE Patient/{id}.", expression=[where])
    return check_id(url.split("/", 1)[1], where)


def _response_entry(result: SubmissionResult, cruid_system: str) -> dict[str, Any]:
    status = "201 Created" if result.created else "200 OK"
    response: dict[str, Any] = {"status": status, "location": _result_headers(result)["Location"]}
    if result.version:
        response["etag"] = f'W/"{result.version}"'
    return {"resource": result.response_patient(cruid_system), "response": response}


def _error_entry(error: RegistryError) -> dict[str, Any]:
    reason = web.Response(status=error.status).reason
    return {"response": {"status": f"{error.status} {reason}", "outcome": error.to_operation_outcome()}}


async def bundle(request: web.Request) -> web.Response:
    data = validate_bundle(await read_json(request))
    registry = request.app[STORE].registry
    cruid_system = request.app[CONFIG].current.cruid_system
    actor = actor_of(request)
    entries = data.get("entry", [])
    if data["type"] == "transaction":
        for index, entry in enumerate(entries):
            if _entry_deletion(entry, index) is not None:
                raise InvalidInput(
                    "DELETE entries are not supported in transaction Bundles: "
                    "send DELETE /fhir/Patient/{id}, or a batch Bundle.",
                    expression=[f"Bundle.entry[{index}].request"],
                )
        submissions = [_entry_submission(e, i, actor) for i, e in enumerate(entries)]
        results = await registry.submit_all(submissions) if submissions else []
        out = [_response_entry(r, cruid_system) for r in results]
        return fhir_response({"resourceType": "Bundle", "type": "transaction-response", "entry": out})
    out = []
    for index, entry in enumerate(entries):
        try:
            deletion = _entry_deletion(entry, index)
            if deletion is not None:
                done = await retraction.retract(registry, deletion, actor)
                out.append({"response": {"status": "200 OK", "outcome": done.outcome()}})
                continue
            result = await registry.submit(_entry_submission(entry, index, actor))
            out.append(_response_entry(result, cruid_system))
        except RegistryError as error:
            out.append(_error_entry(error))
    return fhir_response({"resourceType": "Bundle", "type": "batch-response", "entry": out})


async def capability_statement(request: web.Request) -> web.Response:
    return fhir_response(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json"],
            "date": request.app[STARTED_AT],  # what this instance serves was settled when it started
            "software": {"name": "client-registry mediator"},
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {
                            "type": "Patient",
                            "interaction": [{"code": "create"}, {"code": "update"}, {"code": "delete"}],
                            "conditionalUpdate": True,
                            "conditionalDelete": "not-supported",
                            "operation": [
                                {
                                    "name": "ihe-pix",
                                    "definition": "https://profiles.ihe.net/ITI/PIXm/OperationDefinition/IHE.PIXm.pix",
                                },
                                {
                                    "name": "match",
                                    "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match",
                                },
                            ],
                            "documentation": POS_MERGE_NOTE,
                        }
                    ],
                    "interaction": [{"code": "batch"}, {"code": "transaction"}],
                }
            ],
        }
    )


READY_TIMEOUT_S = 5.0


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers (the image's health check)."""
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics (``mediator/metrics.py``): counts and timings, no ids or demographics; with
    ``CR_METRICS_TOKEN``, only for ``Authorization: Bearer <token>`` (401 otherwise)."""
    token = request.app[SETTINGS].metrics_token
    if token is not None:
        sent = request.headers.get("Authorization", "")
        if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
            return web.Response(
                status=401, text="Metrics need the bearer token.", headers={"WWW-Authenticate": "Bearer"}
            )
    hapi = request.app[STORE].hapi

    async def open_review_tasks(kind: str) -> int:
        code = f"{records.REVIEW_TYPE_SYSTEM}|{kind}"
        return await hapi.count("Task", {"status": OPEN, "code": code})

    await request.app[METRICS].count_review_queue(open_review_tasks, (POTENTIAL_MATCH, POSSIBLE_DUPLICATE))
    return request.app[METRICS].exposition()


async def ready(request: web.Request) -> web.Response:
    """Readiness: whether submissions can be served now — the FHIR store answers its capability statement
    and the key locks can be taken (the lock database, with ``CR_LOCKS=postgres``). 200, or 503 naming
    what is unavailable, each within :data:`READY_TIMEOUT_S`; for a load balancer or an operator."""
    fhir_store, locks = await asyncio.gather(
        _check(request.app[STORE].hapi.metadata()), _check(request.app[STORE].registry.locks.ping())
    )
    checks = {"fhir_store": fhir_store, "locks": locks}
    ok = set(checks.values()) == {"ok"}
    body = {"status": "ok" if ok else "unavailable", "checks": checks}
    return web.json_response(body, status=200 if ok else 503)


async def _check(probe: Awaitable[Any]) -> str:
    try:
        await asyncio.wait_for(probe, READY_TIMEOUT_S)
    except (RegistryError, TimeoutError):
        return "unavailable"
    return "ok"


def add_routes(app: web.Application) -> None:
    app.router.add_post("/fhir/Patient", create_patient)
    app.router.add_put("/fhir/Patient", conditional_update_patient)
    app.router.add_get("/fhir/Patient/$ihe-pix", ihe_pix)
    app.router.add_post("/fhir/Patient/$match", patient_match)
    app.router.add_put("/fhir/Patient/{id}", update_patient)
    app.router.add_delete("/fhir/Patient/{id}", delete_patient)
    app.router.add_post("/fhir", bundle)
    app.router.add_post("/fhir/", bundle)
    app.router.add_get("/fhir/metadata", capability_statement)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
