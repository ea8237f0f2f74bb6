"""The OpenHIM mediator response envelope, for requests the core routed to us (``X-OpenHIM-TransactionID``).

The client gets ``response.status/headers/body``; the core stores the ``orchestrations`` (one per HAPI
call), ``properties`` and ``status``. Orchestrations show ids, versions, request lines and statuses only
unless ``CR_OPENHIM_ORCHESTRATION_BODIES=full``: a submission's HAPI calls carry other people's
demographics. Outside ``errors_middleware``, so error answers are enveloped too. Evidence from the core's
sources and the privacy reasoning: ``docs/internals.md``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from aiohttp import web

from .context import REGISTRY_RESULT, RETRACTION
from .errors import operation_outcome
from .fhir_client import CallRecord, CallRecorder, current_recorder
from .handlers import fhir_response
from .instants import instant

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

ENVELOPE_TYPE = "application/json+openhim"
TX_HEADER = "X-OpenHIM-TransactionID"
CLIENT_HEADER = "X-OpenHIM-ClientID"
# the core sets these itself from the envelope (src/middleware/router.js setKoaResponse skips them)
_SKIP_HEADERS = {"content-length", "content-encoding", "transfer-encoding", "date", "server"}


def transaction_status(http_status: int) -> str:
    """The core's own rule for a primary route (src/middleware/messageStore.js ``setFinalStatus``)."""
    if http_status >= 500:
        return "Failed"
    if 200 <= http_status < 300:
        return "Successful"
    return "Completed"


# query parameters shown as sent in "ids" mode: ids, paging and search controls, no demographics
KEPT_QUERY = frozenset(
    {"_id", "identifier", "_count", "_elements", "_sort", "_summary", "_total", "_getpages"}
    | {"_getpagesoffset", "_bundletype", "_pretty", "subject", "focus", "status", "code", "entity"}
)


def ids_only(body: str) -> str:
    """``body`` (FHIR JSON) reduced to resource types, ids, versions, request/response lines and error
    outcomes. Not JSON: its length only."""
    if not body:
        return ""
    try:
        doc = json.loads(body)
    except ValueError:
        return f"({len(body)} characters, not JSON)"
    return json.dumps(_ids_only(doc), separators=(",", ":"))


def _ids_only(doc: Any) -> Any:
    if not isinstance(doc, dict):
        return None
    kind = doc.get("resourceType")
    if kind == "OperationOutcome":
        return doc
    if kind == "Bundle":
        kept = {k: doc[k] for k in ("resourceType", "id", "type", "total") if k in doc}
        return kept | {"entry": [_entry(e) for e in doc.get("entry", []) if isinstance(e, dict)]}
    if kind == "Parameters":  # e.g. the block tags asked for: names only
        return {
            "resourceType": kind,
            "parameter": [{"name": p.get("name")} for p in doc.get("parameter", [])],
        }
    if kind is not None:
        version = (doc.get("meta") or {}).get("versionId")
        return {"resourceType": kind, "id": doc.get("id")} | (
            {"meta": {"versionId": version}} if version else {}
        )
    if isinstance(doc.get("ids"), list):  # Patient/$tagged-versions: [id, version] pairs
        return {"ids": doc["ids"]}
    return {}


def _entry(entry: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "fullUrl" in entry:
        out["fullUrl"] = entry["fullUrl"]
    if "resource" in entry:
        out["resource"] = _ids_only(entry["resource"])
    if isinstance(entry.get("request"), dict):
        out["request"] = {k: v for k, v in entry["request"].items() if k in ("method", "url", "ifMatch")}
    if isinstance(entry.get("response"), dict):
        answer = entry["response"]
        out["response"] = {
            k: answer[k] for k in ("status", "location", "etag", "lastModified") if k in answer
        }
        if "outcome" in answer:
            out["response"]["outcome"] = _ids_only(answer["outcome"])
    return out


def _kept_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, v if k in KEPT_QUERY else "redacted") for k, v in pairs], safe="|,:/")


def orchestration(call: CallRecord, bodies: str = "ids") -> dict[str, Any]:
    """The OpenHIM orchestration of one HAPI call; ``bodies``: "ids" (:func:`ids_only`) or "full"."""
    shown: Callable[[str], str] = ids_only if bodies == "ids" else (lambda body: body)
    parts = urlsplit(call.url)
    default_port = 443 if parts.scheme == "https" else 80
    entry: dict[str, Any] = {
        "name": f"HAPI FHIR: {call.name}",
        "request": {
            "host": parts.hostname or "",
            "port": str(parts.port or default_port),
            "path": parts.path,
            "querystring": _kept_query(parts.query) if bodies == "ids" else parts.query,
            "method": call.method,
            "headers": {"Accept": "application/fhir+json"}
            | ({"Content-Type": "application/fhir+json"} if call.request_body is not None else {}),
            "body": shown(call.request_body or ""),
            "timestamp": instant(call.started, timespec="milliseconds"),
        },
    }
    if call.status is not None:
        entry["response"] = {
            "status": call.status,
            "headers": {"Content-Type": "application/fhir+json"},
            "body": shown(call.response_body or ""),
            "timestamp": instant(call.finished, timespec="milliseconds"),
        }
    if call.error is not None:
        entry["error"] = {"message": f"HAPI FHIR call failed: {call.error}"}
    return entry


def properties_of(request: web.Request) -> dict[str, Any]:
    retraction = request.get(RETRACTION)
    if retraction is not None:
        deleted = {
            "action": "delete",
            "sourceRecord": f"Patient/{retraction.source_id}",
            "goldenRecord": f"Patient/{retraction.golden_id}" if retraction.golden_id else None,
            "deletedNow": retraction.deleted_now,
        }
        return {k: v for k, v in deleted.items() if v is not None}
    result = request.get(REGISTRY_RESULT)
    if result is None:
        return {}
    props = {
        "decision": result.outcome,
        "score": None if result.score is None else round(float(result.score), 3),
        "rule": result.rule,
        "CRUID": result.cruid,
        "goldenRecord": f"Patient/{result.golden_id}",
        "sourceRecord": f"Patient/{result.source_id}",
        "created": result.created,
    }
    return {k: v for k, v in props.items() if v is not None}


def envelope(
    urn: str, response: web.Response, recorder: CallRecorder, request: web.Request, bodies: str = "ids"
) -> dict[str, Any]:
    body = response.text if response.body is not None else ""
    headers = {k: v for k, v in response.headers.items() if k.lower() not in _SKIP_HEADERS}
    doc: dict[str, Any] = {
        "x-mediator-urn": urn,
        "status": transaction_status(response.status),
        "response": {
            "status": response.status,
            "headers": headers,
            "body": body or "",
            "timestamp": instant(timespec="milliseconds"),
        },
        "orchestrations": [orchestration(c, bodies) for c in recorder.calls],
        "properties": properties_of(request),
    }
    if response.status >= 500:
        doc["error"] = {"message": f"HTTP {response.status} {response.reason}"}  # lets the core auto-retry
    return doc


def envelope_middleware(
    urn: str, *, require_client: bool, bodies: str = "ids"
) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if TX_HEADER not in request.headers:
            return await handler(request)
        recorder = CallRecorder()
        token = current_recorder.set(recorder)
        try:
            if require_client and not request.headers.get(CLIENT_HEADER):
                log.warning("refused: OpenHIM request without client id", extra={"path": request.path})
                response: web.StreamResponse = fhir_response(
                    operation_outcome(
                        "error",
                        "forbidden",
                        "The request carries no OpenHIM client id: the channel must authenticate its "
                        "clients (or the mediator must be started with CR_OPENHIM_ALLOW_ANONYMOUS=true).",
                    ),
                    status=403,
                )
            else:
                response = await handler(request)
        finally:
            current_recorder.reset(token)
        if not isinstance(response, web.Response):  # a streamed answer cannot be wrapped
            return response
        doc = envelope(urn, response, recorder, request, bodies)
        return web.json_response(doc, status=response.status, content_type=ENVELOPE_TYPE)

    return middleware
