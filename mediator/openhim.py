"""OpenHIM integration: registration, heartbeat, live config from the console, transaction envelope.

One background task registers the mediator (with the console config last applied, kept in HAPI by
:mod:`.openhim_state`), sends heartbeats that bring console edits, installs the default channel between
heartbeats, and registers again when the core forgot it. Routed requests are refused (503) while no client
map is in force unless open mode is asked for (:func:`client_map_guard`). The lifecycle and the core's
evidence: ``docs/internals.md``; operating: ``docs/openhim.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Gauge

from . import openhim_state
from .config import ConfigHolder
from .context import CONFIG, METRICS, STORE
from .envelope import TX_HEADER, envelope_middleware
from .errors import RegistryError, operation_outcome
from .fhir_client import HapiClient
from .handlers import fhir_response
from .openhim_auth import AuthError, CoreAuth
from .openhim_config import ConsoleConfigError, live_config, load_registration
from .settings import Settings
from .store import FhirStore

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class CoreUnavailable(Exception):
    """The core could not be reached, timed out or answered 5xx: try again later."""


class NotRegistered(Exception):
    """The core does not know our URN (404 on heartbeat): register again."""


class ChannelsRefused(Exception):
    """The core refused to install the default channel for a reason retrying cannot fix (400, 403)."""


def ssl_context(settings: Settings) -> ssl.SSLContext | bool:
    """Verified TLS by default (optionally with a private CA); ``False`` only when explicitly turned off."""
    if not settings.openhim_verify_tls:
        log.warning(
            "TLS certificate verification of the OpenHIM core is OFF (CR_OPENHIM_VERIFY_TLS=false): "
            "anyone on the network path can impersonate the core; use CR_OPENHIM_CA_FILE instead"
        )
        return False
    return ssl.create_default_context(cafile=settings.openhim_ca_file)


class CoreAPI:
    """The few calls of the core's API that a mediator makes; a timeout on every one."""

    def __init__(self, session: aiohttp.ClientSession, settings: Settings, urn: str) -> None:
        assert settings.openhim_api_url
        self.session = session
        self.api_url = settings.openhim_api_url.rstrip("/")
        self.urn_path = quote(urn, safe="")  # the core unescape()s the :urn path segment
        self.auth = CoreAuth(settings.openhim_auth, settings.openhim_username, settings.openhim_password)
        self.timeout = aiohttp.ClientTimeout(total=settings.openhim_timeout_s)

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        try:
            headers = await self.auth.headers(self.session, self.api_url, self.timeout)
            async with self.session.request(
                method, f"{self.api_url}{path}", json=body, headers=headers, timeout=self.timeout
            ) as resp:
                text = await resp.text()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise CoreUnavailable(f"{type(exc).__name__}: {exc}") from exc
        if status >= 500:
            raise CoreUnavailable(f"HTTP {status}: {text[:200]}")
        if status == 401:
            self.auth.forget()
            raise AuthError(
                "the core refused the API credentials (401): check CR_OPENHIM_USERNAME/PASSWORD", 401
            )
        if status == 403:
            raise AuthError(
                f"the API user lacks the rights for {method} {path.split('/')[1]} (403): {text[:200]}", 403
            )
        return status, text

    async def register(self, doc: dict[str, Any]) -> None:
        status, text = await self.call("POST", "/mediators", doc)
        if status != 201:
            raise RegistrationRefused(f"HTTP {status}: {text[:300]}")

    async def install_channels(self, names: list[str]) -> list[str]:
        """Create the default channels not there yet; the names created (``[]``: all were there).

        Raises :class:`CoreUnavailable` or ``AuthError`` (401) — try again —, :class:`NotRegistered` (404) and
        :class:`ChannelsRefused` (400, 403: retrying cannot fix it). Channel names are unique: a channel that
        exists but that the user cannot see (no channel view rights) makes the core answer 500 with Mongo's
        E11000 duplicate key error; that counts as installed.
        """
        try:
            status, text = await self.call("GET", "/channels")
            existing = {c.get("name") for c in json.loads(text)} if status == 200 and text else set()
        except AuthError as exc:  # a user with mediator rights only (no channel-view-all): just try
            if exc.status == 401:
                raise
            existing = set()
        missing = [n for n in names if n not in existing]
        if not missing:
            return []
        path = f"/mediators/{self.urn_path}/channels"
        try:
            status, text = await self.call("POST", path, missing)
        except CoreUnavailable as exc:
            if "E11000" in str(exc) or "duplicate key" in str(exc):
                return []
            raise
        except AuthError as exc:
            if exc.status == 403:
                raise ChannelsRefused(str(exc)) from exc
            raise
        if status == 404:
            raise NotRegistered("the core does not know this mediator (404 on the channel install)")
        if status != 201:
            raise ChannelsRefused(f"HTTP {status}: {text[:300]}")
        return missing

    async def set_config(self, config: Any) -> None:
        """``PUT /mediators/:urn/config``, as the console's *Save* does (delivered on the next heartbeat)."""
        status, text = await self.call("PUT", f"/mediators/{self.urn_path}/config", config)
        if status == 404:
            raise NotRegistered("the core does not know this mediator (404 on the config)")
        if status != 200:
            raise RegistrationRefused(f"config: HTTP {status}: {text[:300]}")

    async def heartbeat(self, uptime: float) -> Any:
        """Always with ``config: true``: the core hands an edit only to the first heartbeat after it
        (``_configModifiedTS > _lastHeartbeat``), and replicas share one urn — asking each time is how every
        replica gets it (the answer is the small config JSON; applied only when it changed)."""
        body: dict[str, Any] = {"uptime": uptime, "config": True}
        status, text = await self.call("POST", f"/mediators/{self.urn_path}/heartbeat", body)
        if status == 404:
            raise NotRegistered("the core does not know this mediator (404)")
        if status != 200:
            raise CoreUnavailable(f"heartbeat answered HTTP {status}")
        if not text.strip() or text.strip() == "OK":
            return None
        try:
            return json.loads(text)
        except ValueError:
            return text  # not JSON: refused (and logged) like any other invalid config


class RegistrationRefused(Exception):
    """The core answered 4xx to our registration document (a bug or a core we do not support)."""


_UNREAD: Any = object()  # the stored config has not been read yet


def as_stored(config: Any) -> Any:
    """``config`` as the core hands it back: MongoDB (mongoose's ``minimize``) drops empty objects, so a
    registration's ``"clientSystems": {}`` returns as no ``clientSystems`` (seen on a real core v8.5.0)."""
    if isinstance(config, Mapping):
        kept = {k: as_stored(v) for k, v in config.items()}
        return {k: v for k, v in kept.items() if v != {}}
    return config


class OpenHIMLink:
    """The mediator's side of the relation with the core; observable state for logs and tests."""

    def __init__(self, settings: Settings, registration: dict[str, Any]) -> None:
        self.settings = settings
        self.registration = registration  # built from the start-up settings (mediator-config.json + CR_*)
        self.urn: str = registration["urn"]
        self.params = {d["param"] for d in registration.get("configDefs", [])}
        self.registrations = 0  # successful POST /mediators
        self.registered_config: Any = None  # the ``config`` of the last successful registration
        self.heartbeats = 0  # successful heartbeats
        self.failures = 0  # failed calls to the core (registration or heartbeat)
        self.configs_applied = 0
        self.config_errors: list[list[str]] = []  # problems of each refused console config
        self.last_error: str | None = None
        self.channels_installed: list[str] = []
        self.channels_done = not settings.openhim_install_channels
        self.channel_error: str | None = None  # why the core refused the default channel for good
        self.channel_attempts = 0
        self.configs_restored = 0  # configs given back to a core that took the start-up settings
        self._applied_source: Any = None
        self._refused: Any = None  # the last console config refused (not checked again while it stays)
        self._stored: Any = _UNREAD  # the config kept in HAPI (None: none), as last read or written
        self._seeded = False  # the last registration sent the start-up settings (the stored ones unknown)
        self._changed = asyncio.Condition()
        self._started = time.monotonic()

    async def wait_for(self, predicate: Callable[[], bool], within_s: float) -> None:
        """Wait until ``predicate()`` holds (checked at each change); TimeoutError after ``within_s``."""
        async with asyncio.timeout(within_s), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- the background task ------------------------------------------------------------------------

    async def run(self, api: CoreAPI, holder: ConfigHolder, store: FhirStore) -> None:
        """Register, then heartbeat; every call to the FHIR store goes to ``store.hapi`` at that moment."""
        store.on_change.append(self._store_changed)
        while True:
            try:
                await self._register(api, store)
                await self._heartbeats(api, holder, store)
            except Exception as exc:  # never let the link die: log, wait, start over
                self.last_error = f"{type(exc).__name__}"
                log.exception("OpenHIM link failed; starting over")
                await self._notify()
                await asyncio.sleep(self.settings.openhim_heartbeat_s)

    def _backoff(self, delay: float | None) -> float:
        """The next pause between attempts: from 1 s (or the heartbeat, if shorter), doubling up to
        CR_OPENHIM_RETRY_MAX_S."""
        if delay is None:
            return min(1.0, self.settings.openhim_heartbeat_s)
        return min(delay * 2, self.settings.openhim_retry_max_s)

    def _registrable(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """A stored config fitted to this version's ``configDefs`` (the core refuses unknown parameters);
        parameters it lacks (new in this version) take the start-up settings."""
        seeds = self.registration.get("config") or {}
        return {**seeds, **{k: v for k, v in config.items() if k in self.params}}

    async def _registration_config(self, hapi: HapiClient) -> Any:
        """What the core should hold if it does not know us: the config last applied — kept in HAPI (by any
        replica), else this process's — never the start-up settings while one exists (a core that forgot
        the mediator hands the registration's config back: open mode, the start-up thresholds)."""
        self._seeded = False
        try:
            self._stored = await openhim_state.read(hapi)
        except RegistryError as exc:  # the FHIR store does not answer (or refuses): this process's copy
            self._stored = _UNREAD  # read again once it answers (_keep)
            if isinstance(self._applied_source, Mapping):
                return self._registrable(self._applied_source)
            log.warning(
                "OpenHIM: the FHIR store cannot say which config was applied last; registering with the "
                "start-up settings, and giving the core the stored config back once the store answers",
                extra={"error": str(exc)},
            )
            self._seeded = True
            return self.registration.get("config")
        except openhim_state.StoredConfigError as exc:
            log.error("OpenHIM: stored config ignored", extra={"error": str(exc)})
            self._stored = None
        for config in (self._stored, self._applied_source):
            if isinstance(config, Mapping):
                return self._registrable(config)
        return self.registration.get("config")

    def _store_changed(self) -> None:
        """The config kept in the old store says nothing of the new one: read it there (:meth:`_keep`)."""
        self._stored = _UNREAD

    async def _register(self, api: CoreAPI, store: FhirStore) -> None:
        delay = self._backoff(None)
        while True:
            config = await self._registration_config(store.hapi)
            try:
                await api.register({**self.registration, "config": config})
            except (CoreUnavailable, AuthError, RegistrationRefused) as exc:
                self.last_error = str(exc)
                self.failures += 1
                log.warning(
                    "OpenHIM registration failed, retrying",
                    extra={"urn": self.urn, "error": str(exc), "retry_in_s": round(delay, 2)},
                )
                await self._notify()
                await asyncio.sleep(delay)  # backoff between attempts, not synchronisation
                delay = self._backoff(delay)
                continue
            self.registrations += 1
            self.registered_config = config
            self.last_error = None
            log.info(
                "registered with OpenHIM",
                extra={
                    "urn": self.urn,
                    "version": self.registration["version"],
                    "config": "last applied" if config != self.registration.get("config") else "start-up",
                },
            )
            await self._notify()
            return

    async def _install_channels(self, api: CoreAPI) -> None:
        """One attempt; :class:`NotRegistered` goes up (register again), other failures wait for the next."""
        names = [c["name"] for c in self.registration.get("defaultChannelConfig", [])]
        self.channel_attempts += 1
        try:
            created = await api.install_channels(names)
        except ChannelsRefused as exc:
            self.channels_done = True
            self.channel_error = str(exc)
            log.error(
                "OpenHIM refused the default channel; install it by hand (docs/openhim.md, 4) or fix the "
                "API user's rights and restart the mediator",
                extra={"error": str(exc)},
            )
        else:
            self.channels_done = True
            self.channels_installed.extend(created)
            if created:
                log.info("installed OpenHIM default channel(s)", extra={"channels": created})
        finally:
            await self._notify()

    async def _heartbeats(self, api: CoreAPI, holder: ConfigHolder, store: FhirStore) -> None:
        unreachable = False
        channel_delay = self._backoff(None)
        channel_due = time.monotonic()
        while True:
            try:
                config = await api.heartbeat(round(time.monotonic() - self._started, 3))
            except NotRegistered:
                log.warning("OpenHIM core forgot this mediator (404 on heartbeat); registering again")
                return
            except (CoreUnavailable, AuthError) as exc:
                if not unreachable:
                    log.warning("OpenHIM heartbeat failed", extra={"error": str(exc)})
                unreachable = True
                self.failures += 1
                self.last_error = str(exc)
                await self._notify()
            else:
                if unreachable:  # the core may have restarted with an empty database: register again
                    log.info("OpenHIM core reachable again; registering again")
                    return
                self.heartbeats += 1
                if config is not None:
                    self.apply(config, holder, store)
                await self._keep(api, store.hapi)
                if not self.channels_done and time.monotonic() >= channel_due:
                    try:
                        await self._install_channels(api)
                    except NotRegistered:
                        log.warning("OpenHIM core forgot this mediator (404 on channel install)")
                        return
                    except (CoreUnavailable, AuthError) as exc:
                        self.last_error = str(exc)
                        log.warning(
                            "OpenHIM default channel not installed yet, retrying",
                            extra={"error": str(exc), "retry_in_s": round(channel_delay, 2)},
                        )
                        channel_due = time.monotonic() + channel_delay
                        channel_delay = self._backoff(channel_delay)
                await self._notify()
            await asyncio.sleep(self.settings.openhim_heartbeat_s)  # the heartbeat interval

    async def _keep(self, api: CoreAPI, hapi: HapiClient) -> None:
        """Keep the config in force in HAPI; after a registration with the start-up settings (the store
        could not be read), give the core the stored config back if it took ours instead."""
        applied = self._applied_source
        if applied is None:
            return
        try:
            if self._stored is _UNREAD:
                try:
                    self._stored = await openhim_state.read(hapi)
                except openhim_state.StoredConfigError as exc:
                    log.error("OpenHIM: stored config ignored", extra={"error": str(exc)})
                    self._stored = None
            stored = self._stored
            # the core holds what we sent (the start-up settings): it had forgotten us
            if (
                self._seeded
                and isinstance(stored, Mapping)
                and stored != applied
                and applied == as_stored(self.registered_config)
            ):
                restore = self._registrable(stored)
                await api.set_config(restore)
                self._seeded = False
                self.configs_restored += 1
                log.warning(
                    "OpenHIM core held the start-up settings after a registration; the config last "
                    "applied (kept in the FHIR store) was given back to it"
                )
                return  # delivered, applied and kept on the next heartbeat
            self._seeded = False
            if applied != stored:
                await openhim_state.write(hapi, applied)
                self._stored = applied
        except RegistryError as exc:  # the FHIR store does not answer: again at the next heartbeat
            log.debug("OpenHIM: config not kept in the FHIR store yet", extra={"error": str(exc)})
        except (CoreUnavailable, AuthError, RegistrationRefused, NotRegistered) as exc:
            log.warning("OpenHIM: could not give the core its config back", extra={"error": str(exc)})

    @property
    def console_sets_rules(self) -> bool:
        """The console config in force has its own ``rules`` text, which wins over any other rules."""
        source = self._applied_source
        return isinstance(source, Mapping) and bool(str(source.get("rules") or "").strip())

    def reapply(self, holder: ConfigHolder, store: FhirStore) -> bool:
        """The rules stored in HAPI changed (:func:`mediator.applied_rules.poll`): build the console config in
        force again over them, so a console ``rules`` text keeps winning and an empty one takes them."""
        source = self._applied_source
        if source is None:
            return False
        self._applied_source = None
        if not self.apply(source, holder, store):
            self._applied_source = source  # refused (logged): not tried again on every heartbeat
            return False
        return True

    def apply(self, config: Any, holder: ConfigHolder, store: FhirStore) -> bool:
        """Validate a console config and swap it in; an invalid one is logged and the old one kept. Another
        FHIR store address or timeouts: ``store`` swaps in a new client (mediator/store.py)."""
        if config == self._applied_source or config == self._refused:
            return False
        try:
            live = live_config(config, self.settings, holder.origin.doc)
        except ConsoleConfigError as exc:
            self._refused = config  # each heartbeat brings it again: reported once
            self.config_errors.append(exc.problems)
            log.error(
                "OpenHIM console config refused; the previous config stays in force",
                extra={"problems": exc.problems},
            )
            return False
        store.use(live.hapi)
        holder.replace(live.registry)
        self._applied_source = config
        self.configs_applied += 1
        if live.registry.open_mode and not self.settings.openhim_allow_open_mode:
            log.warning(NO_CLIENT_MAP_LOG)
        log.info(
            "OpenHIM console config applied",
            extra={
                "generation": holder.generation,
                "rules": live.registry.rules.name,
                "auto_match": live.registry.rules.auto_threshold,
                "potential_match": live.registry.rules.potential_threshold,
                "clients": sorted(live.registry.client_systems),
            },
        )
        return True


OPENHIM = web.AppKey("openhim", OpenHIMLink)

NO_CLIENT_MAP_LOG = (
    "OpenHIM: no client map is in force (the console's 'Identifier systems allowed per client' is empty); "
    "requests routed by the core are refused with 503 until one is set (or CR_OPENHIM_ALLOW_OPEN_MODE=true)"
)
NO_CLIENT_MAP = (
    "The client registry has no identifier-system map for its clients in force, so it cannot tell which "
    "identifiers a client may submit; it refuses requests until an HIE admin sets 'Identifier systems "
    "allowed per client' in the OpenHIM console (Mediators > Client Registry > Configuration)."
)


def client_map_guard(settings: Settings, metrics_registry: Any) -> Callable[..., Any]:
    """Refuse requests routed by the core (``X-OpenHIM-TransactionID``) with 503 while the config in force
    has no client map — open mode — unless CR_OPENHIM_ALLOW_OPEN_MODE wants it. Installed inside the envelope
    middleware, so the refusal is enveloped (status Failed, with an error: a channel with auto-retry retries
    it). Counted in ``cr_openhim_requests_refused_total{reason="no_client_map"}``; a warning is logged at the
    first refusal and again whenever refusals start after requests were served."""
    refused = Counter(
        "cr_openhim_requests_refused",
        "Requests routed by the OpenHIM core that the mediator refused without handling them, by reason",
        ["reason"],
        registry=metrics_registry,
    )
    warned = False

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal warned
        if TX_HEADER not in request.headers or settings.openhim_allow_open_mode:
            return await handler(request)
        if not request.app[CONFIG].current.open_mode:
            warned = False  # served: refusals that start again are logged again
            return await handler(request)
        refused.labels("no_client_map").inc()
        if not warned:
            log.warning(NO_CLIENT_MAP_LOG)
            warned = True
        return fhir_response(operation_outcome("error", "transient", NO_CLIENT_MAP), status=503)

    return guard


def setup(app: web.Application, settings: Settings) -> None:
    """Install the envelope middleware and the registration/heartbeat task (only behind OpenHIM).

    Call from ``create_app`` before the app starts (middlewares and ``cleanup_ctx`` freeze at start), after
    the HAPI session's ``cleanup_ctx`` so ``app[STORE]`` is open when ours runs.
    """
    registration = load_registration(settings)
    link = OpenHIMLink(settings, registration)
    app[OPENHIM] = link
    app.middlewares.insert(0, client_map_guard(settings, app[METRICS].registry))
    app.middlewares.insert(
        0,
        envelope_middleware(
            link.urn,
            require_client=not settings.openhim_allow_anonymous,
            bodies=settings.openhim_orchestration_bodies,
        ),
    )
    in_force = Gauge(
        "cr_openhim_client_map_in_force",
        "1 while the config in force maps OpenHIM clients to identifier systems, 0 while it has no map "
        "(routed requests are then refused unless CR_OPENHIM_ALLOW_OPEN_MODE)",
        registry=app[METRICS].registry,
    )
    in_force.set_function(lambda: 0.0 if app[CONFIG].current.open_mode else 1.0)

    async def openhim_task(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(ssl=ssl_context(settings), limit=4)
        async with aiohttp.ClientSession(connector=connector) as session:
            api = CoreAPI(session, settings, link.urn)
            task = asyncio.create_task(link.run(api, app[CONFIG], app[STORE]), name="openhim-heartbeat")
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.cleanup_ctx.append(openhim_task)
