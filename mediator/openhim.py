"""OpenHIM integration: registration, heartbeat, live config from the console, transaction envelope.

Lifecycle (one background task, started and cancelled by the app's ``cleanup_ctx``):

    POST /mediators (retry with backoff while the core is down or answers 5xx)
    → POST /mediators/:urn/channels (only with CR_OPENHIM_INSTALL_CHANNELS, skipped if the channel exists)
    → POST /mediators/:urn/heartbeat {"uptime", "config": true}   (the console's config, applied live)
    → a heartbeat every CR_OPENHIM_HEARTBEAT_S; a non-empty answer is a config edited in the console
    → 404 on a heartbeat, or the core back after being unreachable → register again

Evidence (jembi/openhim-core-js @ fdfa87b): routes in src/koaApi.js; ``addMediator``, ``heartbeat``,
``setConfig``, ``loadDefaultChannels`` in src/api/mediators.js. The heartbeat answers the stored config iff
``_configModifiedTS > _lastHeartbeat`` or the request said ``config: true``, else an empty body ('' — or
"OK" from Koa when no config was ever stored; jembi/openhim-mediator-utils heartbeat.js treats both as none).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

from .config import ConfigHolder
from .context import CONFIG, HAPI
from .envelope import envelope_middleware
from .fhir_client import HapiClient
from .openhim_auth import AuthError, CoreAuth
from .openhim_config import ConsoleConfigError, HapiTarget, live_config, load_registration
from .settings import Settings

log = logging.getLogger(__name__)


class CoreUnavailable(Exception):
    """The core could not be reached, timed out or answered 5xx: try again later."""


class NotRegistered(Exception):
    """The core does not know our URN (404 on heartbeat): register again."""


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
            raise AuthError("the core refused the API credentials (401): check CR_OPENHIM_USERNAME/PASSWORD")
        if status == 403:
            raise AuthError(
                f"the API user lacks the rights for {method} {path.split('/')[1]} (403): {text[:200]}"
            )
        return status, text

    async def register(self, doc: dict[str, Any]) -> None:
        status, text = await self.call("POST", "/mediators", doc)
        if status != 201:
            raise RegistrationRefused(f"HTTP {status}: {text[:300]}")

    async def install_channels(self, names: list[str]) -> list[str]:
        """Create the default channels not there yet (channel names are unique: a duplicate is a 500)."""
        try:
            status, text = await self.call("GET", "/channels")
            existing = {c.get("name") for c in json.loads(text)} if status == 200 and text else set()
        except AuthError:  # a user with mediator rights only (no channel-view-all): just try
            existing = set()
        missing = [n for n in names if n not in existing]
        if missing:
            status, text = await self.call("POST", f"/mediators/{self.urn_path}/channels", missing)
            if status != 201:
                raise RegistrationRefused(f"channel install: HTTP {status}: {text[:300]}")
        return missing

    async def heartbeat(self, uptime: float, want_config: bool) -> Any:
        body: dict[str, Any] = {"uptime": uptime}
        if want_config:
            body["config"] = True
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


class OpenHIMLink:
    """The mediator's side of the relation with the core; observable state for logs and tests."""

    def __init__(self, settings: Settings, registration: dict[str, Any]) -> None:
        self.settings = settings
        self.registration = registration
        self.urn: str = registration["urn"]
        self.registrations = 0  # successful POST /mediators
        self.heartbeats = 0  # successful heartbeats
        self.failures = 0  # failed calls to the core (registration or heartbeat)
        self.configs_applied = 0
        self.config_errors: list[list[str]] = []  # problems of each refused console config
        self.last_error: str | None = None
        self.channels_installed: list[str] = []
        self._applied_source: Any = None
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

    async def run(self, api: CoreAPI, holder: ConfigHolder, hapi: HapiClient) -> None:
        while True:
            try:
                await self._register(api)
                if self.settings.openhim_install_channels:
                    await self._install_channels(api)
                await self._heartbeats(api, holder, hapi)
            except Exception as exc:  # never let the link die: log, wait, start over
                self.last_error = f"{type(exc).__name__}"
                log.exception("OpenHIM link failed; starting over")
                await self._notify()
                await asyncio.sleep(self.settings.openhim_heartbeat_s)

    async def _register(self, api: CoreAPI) -> None:
        delay = min(1.0, self.settings.openhim_heartbeat_s)
        while True:
            try:
                await api.register(self.registration)
            except (CoreUnavailable, AuthError, RegistrationRefused) as exc:
                self.last_error = str(exc)
                self.failures += 1
                log.warning(
                    "OpenHIM registration failed, retrying",
                    extra={"urn": self.urn, "error": str(exc), "retry_in_s": round(delay, 2)},
                )
                await self._notify()
                await asyncio.sleep(delay)  # backoff between attempts, not synchronisation
                delay = min(delay * 2, self.settings.openhim_retry_max_s)
                continue
            self.registrations += 1
            self.last_error = None
            log.info(
                "registered with OpenHIM", extra={"urn": self.urn, "version": self.registration["version"]}
            )
            await self._notify()
            return

    async def _install_channels(self, api: CoreAPI) -> None:
        names = [c["name"] for c in self.registration.get("defaultChannelConfig", [])]
        try:
            created = await api.install_channels(names)
        except (CoreUnavailable, AuthError, RegistrationRefused) as exc:
            log.warning("OpenHIM default channel not installed", extra={"error": str(exc)})
            return
        self.channels_installed.extend(created)
        if created:
            log.info("installed OpenHIM default channel(s)", extra={"channels": created})
        await self._notify()

    async def _heartbeats(self, api: CoreAPI, holder: ConfigHolder, hapi: HapiClient) -> None:
        want_config = True
        unreachable = False
        while True:
            try:
                config = await api.heartbeat(round(time.monotonic() - self._started, 3), want_config)
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
                want_config = False
                if config is not None:
                    self.apply(config, holder, hapi)
                await self._notify()
            await asyncio.sleep(self.settings.openhim_heartbeat_s)  # the heartbeat interval

    @property
    def console_sets_rules(self) -> bool:
        """The console config in force has its own ``rules`` text, which wins over any other rules."""
        source = self._applied_source
        return isinstance(source, Mapping) and bool(str(source.get("rules") or "").strip())

    def reapply(self, holder: ConfigHolder, hapi: HapiClient) -> bool:
        """The rules stored in HAPI changed (:func:`mediator.applied_rules.poll`): build the console config in
        force again over them, so a console ``rules`` text keeps winning and an empty one takes them."""
        source = self._applied_source
        if source is None:
            return False
        self._applied_source = None
        if not self.apply(source, holder, hapi):
            self._applied_source = source  # refused (logged): not tried again on every heartbeat
            return False
        return True

    def apply(self, config: Any, holder: ConfigHolder, hapi: HapiClient) -> bool:
        """Validate a console config and swap it in; an invalid one is logged and the old one kept."""
        if config == self._applied_source:
            return False
        try:
            live = live_config(config, self.settings, holder.origin.doc)
        except ConsoleConfigError as exc:
            self.config_errors.append(exc.problems)
            log.error(
                "OpenHIM console config refused; the previous config stays in force",
                extra={"problems": exc.problems},
            )
            return False
        _retarget(hapi, live.hapi)
        holder.replace(live.registry)
        self._applied_source = config
        self.configs_applied += 1
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


def _retarget(hapi: HapiClient, target: HapiTarget) -> None:
    """Point the one HAPI client at a new URL/timeouts in place (the registry holds this same object)."""
    hapi.reconfigure(target.base_url, target.timeout_s, target.connect_timeout_s)


OPENHIM = web.AppKey("openhim", OpenHIMLink)


def setup(app: web.Application, settings: Settings) -> None:
    """Install the envelope middleware and the registration/heartbeat task (only behind OpenHIM).

    Call from ``create_app`` before the app starts (middlewares and ``cleanup_ctx`` freeze at start), after
    the HAPI session's ``cleanup_ctx`` so ``app[HAPI]`` exists when ours runs.
    """
    registration = load_registration(settings)
    link = OpenHIMLink(settings, registration)
    app[OPENHIM] = link
    app.middlewares.insert(
        0,
        envelope_middleware(
            link.urn,
            require_client=not settings.openhim_allow_anonymous,
            bodies=settings.openhim_orchestration_bodies,
        ),
    )

    async def openhim_task(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(ssl=ssl_context(settings), limit=4)
        async with aiohttp.ClientSession(connector=connector) as session:
            api = CoreAPI(session, settings, link.urn)
            task = asyncio.create_task(link.run(api, app[CONFIG], app[HAPI]), name="openhim-heartbeat")
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.cleanup_ctx.append(openhim_task)
