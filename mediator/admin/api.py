"""JSON API under ``/admin/api/…`` and ``GET /admin/audit?patient=…``; state changes need ``X-CSRF-Token``."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..context import CONFIG, STORE
from ..errors import InvalidInput
from . import labels, queries
from .auth import ADMIN_CSRF, ADMIN_USER, log_in, log_out
from .requests import admin_of, body, curation
from .score_index import SCORE_INDEX


def _str(data: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"'{key}' must be a non-empty string.")
    return value


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.json_response(payload, status=status, dumps=lambda o: json.dumps(o, separators=(",", ":")))


async def login(request: web.Request) -> web.Response:
    data = await body(request)
    token = await log_in(request, _str(data, "username") or "", _str(data, "password") or "")
    return _json({"user": data["username"], "csrf": token})


async def logout(request: web.Request) -> web.Response:
    await log_out(request)
    return _json({"user": None})


async def me(request: web.Request) -> web.Response:
    return _json({"user": request[ADMIN_USER], "csrf": request[ADMIN_CSRF]})


async def queue(request: web.Request) -> web.Response:
    f = queries.QueueFilter.from_query(request.query)
    return _json(await queries.queue(request.config_dict[STORE].hapi, f, request.config_dict[SCORE_INDEX]))


async def pair(request: web.Request) -> web.Response:
    cfg = request.config_dict[CONFIG].current
    return _json(await queries.pair(request.config_dict[STORE].hapi, cfg, request.match_info["task"]))


async def decide(request: web.Request) -> web.Response:
    data = await body(request)
    outcome = await curation(request).decide(
        request.match_info["task"],
        _str(data, "decision") or "",
        admin_of(request),
        survivor=_str(data, "survivor", required=False),
        note=_str(data, "note", required=False),
    )
    return _json(outcome.to_dict())


async def break_out(request: web.Request) -> web.Response:
    data = await body(request)
    outcome = await curation(request).break_out(
        request.match_info["golden"],
        _str(data, "source") or "",
        admin_of(request),
        note=_str(data, "note", required=False),
    )
    return _json(outcome.to_dict())


async def move(request: web.Request) -> web.Response:
    data = await body(request)
    outcome = await curation(request).move(
        _str(data, "source") or "",
        _str(data, "target") or "",
        admin_of(request),
        note=_str(data, "note", required=False),
    )
    return _json(outcome.to_dict())


async def confirm(request: web.Request) -> web.Response:
    data = await body(request)
    outcome = await curation(request).confirm(
        _str(data, "source") or "", admin_of(request), note=_str(data, "note", required=False)
    )
    return _json(outcome.to_dict())


async def undo(request: web.Request) -> web.Response:
    data = await body(request)
    decision = _str(
        data, "decision", required=False
    )  # the last decision as shown: a retry is answered the same
    outcome = await curation(request).undo_last(
        _str(data, "patient") or "",
        admin_of(request),
        decision.removeprefix("AuditEvent/") if decision else None,
    )
    return _json(outcome.to_dict())


async def auto_matches(request: web.Request) -> web.Response:
    try:
        limit = min(200, max(1, int(request.query.get("limit", "50"))))
    except ValueError as exc:
        raise InvalidInput("limit must be an integer.") from exc
    items = await queries.auto_matches(request.config_dict[STORE].hapi, request.query.get("since"), limit)
    return _json({"items": items})


async def search(request: web.Request) -> web.Response:
    cfg = request.config_dict[CONFIG].current
    found = await queries.search_people(
        request.config_dict[STORE].hapi, cfg, request.query.get("identifier"), request.query.get("name")
    )
    return _json({"items": found})


async def golden(request: web.Request) -> web.Response:
    cfg = request.config_dict[CONFIG].current
    return _json(
        await queries.golden_view(request.config_dict[STORE].hapi, cfg, request.match_info["golden"])
    )


async def audit(request: web.Request) -> web.Response:
    patient = request.query.get("patient", "").removeprefix("Patient/")
    if not patient:
        raise InvalidInput("Give the record: /admin/audit?patient=<id>.")
    return _json(
        {"patient": patient, "events": await queries.history(request.config_dict[STORE].hapi, patient)}
    )


async def decisions(request: web.Request) -> web.Response:
    return _json(await labels.counts(request.config_dict[STORE].hapi, request.config_dict[CONFIG]))


async def decided_pairs_csv(request: web.Request) -> web.Response:
    cfg = request.config_dict[CONFIG].current
    pairs = await labels.decided_pairs(request.config_dict[STORE].hapi, cfg.rules)
    export = labels.to_csv(pairs)
    return web.Response(
        text=export.text,
        content_type="text/csv",
        charset="utf-8",
        headers={
            "Content-Disposition": 'attachment; filename="decided-pairs.csv"',
            "Cache-Control": "no-store",
            labels.CONFLICT_GROUPS: str(export.groups),
            labels.CONFLICT_ROWS: str(export.flagged),
        },
    )


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/login", login)
    r.add_post("/api/logout", logout)
    r.add_get("/api/me", me)
    r.add_get("/api/queue", queue)
    r.add_get("/api/pairs/{task}", pair)
    r.add_post("/api/pairs/{task}/decision", decide)
    r.add_post("/api/golden/{golden}/break", break_out)
    r.add_post("/api/move", move)
    r.add_post("/api/confirm", confirm)
    r.add_post("/api/undo", undo)
    r.add_get("/api/auto-matches", auto_matches)
    r.add_get("/api/search", search)
    r.add_get("/api/golden/{golden}", golden)
    r.add_get("/api/decisions", decisions)
    r.add_get("/api/decisions/labels.csv", decided_pairs_csv)
    r.add_get("/audit", audit)
