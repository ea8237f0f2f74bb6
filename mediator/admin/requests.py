"""What the admin handlers (JSON API, pages, jobs) read from a request: its JSON body, the admin acting
and their address, and the curation service over the app's FHIR store and key locks."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..context import CONFIG, STORE
from ..errors import InvalidInput
from ..forwarded import client_address
from .auth import ADMIN_USER
from .curation import Admin, Curation
from .score_index import SCORE_INDEX


def admin_of(request: web.Request) -> Admin:
    return Admin(name=request[ADMIN_USER], address=client_address(request))


def curation(request: web.Request) -> Curation:
    store = request.config_dict[STORE]  # the FHIR store in force for this request
    cfg = request.config_dict[CONFIG].current
    return Curation(
        store.hapi,
        cfg.cruid_system,
        store.registry.locks,  # the app key locks (shared by replicas: CR_LOCKS=postgres)
        request.config_dict[SCORE_INDEX],
        cfg.rules,
    )


async def body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise InvalidInput("Send a JSON body (Content-Type: application/json).")
    try:
        data = await request.json()
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise InvalidInput("The body is not valid JSON.") from exc
    if not isinstance(data, dict):
        raise InvalidInput("The body must be a JSON object.")
    return data
