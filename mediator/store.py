"""The FHIR store the app works on (``app[STORE]``), and the one place where it changes.

The OpenHIM console may point the mediator at another store, or change its timeouts, while it runs
(:mod:`mediator.openhim`). :meth:`FhirStore.use` then builds a new :class:`HapiClient` and over it a new
:class:`Registry` with an empty candidate cache (:class:`TaggedSources`), and resets whatever else the
process keeps of the old store (``on_change``: the admin's review-score index). Whatever calls the store
reads ``app[STORE].hapi`` (or ``.registry``) when it calls it, never keeps one from the start.

The old client is never changed: requests in flight finish on it, against the old store (it shares the app's
HTTP session, which stays open until the app stops), and it goes away with the last of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from .config import ConfigHolder
from .fhir_client import HapiClient
from .locks import LockManager
from .metrics import Metrics
from .registry import Registry
from .settings import Settings
from .tagged_sources import TaggedSources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HapiTarget:
    """Where the FHIR store is and how long a call to it may take."""

    base_url: str
    timeout_s: float
    connect_timeout_s: float

    @classmethod
    def of(cls, settings: Settings) -> HapiTarget:
        return cls(settings.hapi_base_url, settings.hapi_timeout_s, settings.hapi_connect_timeout_s)


@dataclass(frozen=True)
class _Tied:
    """One store's client and the registry over it (with its cache of that store's records)."""

    hapi: HapiClient
    registry: Registry


class FhirStore:
    def __init__(
        self, settings: Settings, config: ConfigHolder, locks: LockManager, metrics: Metrics | None = None
    ) -> None:
        """Starts on the store ``settings`` name; its registries are built with ``settings``' conflict
        retries, shared writes and candidate cache size."""
        self.target = HapiTarget.of(settings)
        self._settings, self._config, self._locks, self._metrics = settings, config, locks, metrics
        self._session: aiohttp.ClientSession | None = None
        self._now: _Tied | None = None
        # called after every change of store: reset what the process keeps of the old one
        self.on_change: list[Callable[[], None]] = []

    def open(self, session: aiohttp.ClientSession) -> None:
        """Start on ``target`` with the app's HTTP session (the app's start-up)."""
        self._session = session
        self._now = self._tied(self.target)

    @property
    def hapi(self) -> HapiClient:
        """The client of the store in force now."""
        return self._opened().hapi

    @property
    def registry(self) -> Registry:
        """The registry over the store in force now."""
        return self._opened().registry

    def use(self, target: HapiTarget) -> bool:
        """Work on ``target`` from now on: a new client, registry and candidate cache, and ``on_change``
        called. False (nothing changes, the records held are kept) when ``target`` is the one in force."""
        if target == self.target:
            return False
        self.target = target
        if self._session is not None:  # else open() builds them
            self._now = self._tied(target)
        for reset in self.on_change:
            reset()
        log.info("FHIR store changed", extra={"hapi": target.base_url, "timeout_s": target.timeout_s})
        return True

    def _tied(self, target: HapiTarget) -> _Tied:
        assert self._session is not None
        hapi = HapiClient(self._session, target.base_url, target.timeout_s, target.connect_timeout_s)
        hapi.metrics = self._metrics
        sources = TaggedSources(hapi, self._settings.source_cache_records)
        registry = Registry(hapi, self._config, self._locks, self._settings.conflict_retries, sources)
        registry.metrics = self._metrics
        registry.shared_writes = self._settings.shared_writes
        return _Tied(hapi, registry)

    def _opened(self) -> _Tied:
        if self._now is None:
            raise RuntimeError("the FHIR store is used before the app started (FhirStore.open)")
        return self._now
