"""``create_app(settings)``: the aiohttp application, its resources and its error middleware;
``registry_in_process(settings)``: the same app's registry without a server (bulk CLI, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError

from . import admin, applied_rules, handlers, openhim, pg_locks
from .admin import jobs, pg_throttle
from .config import ConfigHolder, RegistryConfig, RulesOrigin
from .context import CONFIG, HTTP_SESSION, METRICS, SETTINGS, STARTED_AT, STORE
from .errors import RegistryError, operation_outcome
from .fhir_client import HapiClient
from .headers import security_headers
from .locks import LocalKeyedLocks, LockManager
from .metrics import Metrics
from .registry import Registry
from .request_body import BODY_FRAMING, CLIENT_CLOSED, BodyFraming, body_deadline, client_gone
from .settings import Settings
from .store import FhirStore

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_CODES = {404: "not-found", 405: "not-supported", 413: "too-costly", 415: "not-supported"}


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    message = "request"
    try:
        response = await handler(request)
    except RegistryError as error:
        response = handlers.fhir_response(error.to_operation_outcome(), status=error.status)
    except (PayloadEncodingError, web.RequestPayloadError):
        # aiohttp's pure-Python parser fails the body itself on a bad chunk (the C parser's refusal reaches
        # the handler as BodyFraming, through parse_errors): the same 400; body_deadline closes the connection
        framing = BodyFraming(f"{BODY_FRAMING}.")
        response = handlers.fhir_response(framing.to_operation_outcome(), status=framing.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "invalid" if exc.status < 500 else "exception")
        response = handlers.fhir_response(operation_outcome("error", code, exc.reason), status=exc.status)
    except Exception as exc:
        if client_gone(request, exc):  # the client closed the connection mid-body: nobody to answer
            message = "client disconnected"
            response = handlers.fhir_response(
                operation_outcome("error", "incomplete", "The client closed the connection."),
                status=CLIENT_CLOSED,
            )
        else:
            log.exception("unhandled error", extra={"path": request.path, "method": request.method})
            response = handlers.fhir_response(
                operation_outcome(
                    "error", "exception", "Internal error; nothing was written. See the mediator log."
                ),
                status=500,
            )
    metrics = request.app.get(METRICS)
    if metrics is not None:
        metrics.request_answered(request, response.status, time.perf_counter() - started)
    log.info(
        message,
        extra={
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "ms": round((time.perf_counter() - started) * 1000, 1),
            "openhim_tx": request.headers.get("X-OpenHIM-TransactionID"),
        },
    )
    return response


def _console_over_stored_rules(app: web.Application) -> None:
    """The stored rules changed: a console config in force is built again over them (its rules text wins)."""
    if app[SETTINGS].openhim_api_url:
        link = app.get(openhim.OPENHIM)
        if link is not None:
            link.reapply(app[CONFIG], app[STORE])


def create_app(
    settings: Settings,
    *,
    config: RegistryConfig | None = None,
    locks: LockManager | None = None,
    job_retry_wait: jobs.Wait = asyncio.sleep,
) -> web.Application:
    """``config``, ``locks``: instead of those ``settings`` describe; ``job_retry_wait``: how an admin job
    waits before trying a FHIR store that was down again."""
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[errors_middleware])
    app[SETTINGS] = settings
    app[STARTED_AT] = datetime.now(UTC).isoformat(timespec="seconds")
    app.on_response_prepare.append(security_headers)  # nosniff, no referrer, CSP (mediator/headers.py)
    app[METRICS] = metrics = Metrics()
    if settings.gc_threshold:  # a process-wide setting: the process serves this app
        gc.set_threshold(*settings.gc_threshold)
    holder = ConfigHolder(
        config or RegistryConfig.from_settings(settings), RulesOrigin(path=str(settings.rules_path))
    )
    holder.base_shared_systems = frozenset(settings.shared_identifier_systems)
    app[CONFIG] = holder
    holder.rules_swapped = lambda: _console_over_stored_rules(app)
    shared_locks: pg_locks.PgAdvisoryLocks | None = None
    if locks is None and settings.locks == "postgres":  # shared by replicas
        locks = shared_locks = pg_locks.setup(app, settings)
    # the FHIR store in force and what is tied to it; the OpenHIM console may change it (mediator/store.py)
    app[STORE] = store = FhirStore(settings, holder, locks or LocalKeyedLocks(), metrics)

    def current_hapi() -> HapiClient:
        return store.hapi

    async def hapi_session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=settings.hapi_max_connections)
        async with aiohttp.ClientSession(connector=connector) as session:
            app[HTTP_SESSION] = session
            store.open(session)
            # the rules a re-match applied (stored in HAPI) win over CR_RULES; broken ones fail start-up
            loading = await applied_rules.install(app[CONFIG], current_hapi)
            # and every replica notices when a re-match on another one (or a reset) changes them
            watching = (
                asyncio.create_task(
                    applied_rules.watch(app[CONFIG], current_hapi, settings.rules_poll_s),
                    name="applied-rules-watch",
                )
                if settings.rules_poll_s > 0
                else None
            )
            try:
                yield
            finally:
                for task in (loading, watching):
                    if task is not None:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task

    app.cleanup_ctx.append(hapi_session)
    if settings.openhim_api_url:  # behind OpenHIM: envelope, registration, heartbeat, live config
        openhim.setup(app, settings)
    app.middlewares.insert(0, body_deadline)  # outermost: the answer it sends early is the final one
    handlers.add_routes(app)
    throttle = None
    if shared_locks is not None:  # replicas count failed logins together too
        throttle = pg_throttle.setup(app, shared_locks)
    admin.setup(app, settings.admin, throttle=throttle)  # curation API and pages at /admin (mediator/admin/)
    # background jobs (bulk, re-matching) kept in CR_JOBS_DIR, resumed at start
    jobs.setup(app, settings.jobs_dir, job_retry_wait)
    return app


@asynccontextmanager
async def registry_in_process(settings: Settings) -> AsyncIterator[Registry]:
    """The registry of ``create_app(settings)`` with its resources (HAPI session, locks) open, no server."""
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()  # runs the cleanup_ctx start-up half
    try:
        yield app[STORE].registry
    finally:
        await runner.cleanup()
