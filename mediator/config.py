"""The registry's live configuration: what an HIE admin may change while the mediator runs.

The OpenHIM console delivers edits on a heartbeat; :class:`ConfigHolder` swaps the whole frozen
:class:`RegistryConfig` at once, so a request sees either the old or the new config, never a mix.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from matching import Rules, load_rules

from .settings import Settings


@dataclass(frozen=True)
class RegistryConfig:
    rules: Rules
    cruid_system: str
    shared_identifier_systems: frozenset[str]
    # client id -> identifier systems it may submit; empty mapping = open development mode
    client_systems: Mapping[str, frozenset[str]] = field(default_factory=dict)
    max_candidates: int = 500

    @property
    def open_mode(self) -> bool:
        return not self.client_systems

    def may_key(self, client_id: str | None, system: str) -> bool:
        """Whether ``client_id`` may write the source record keyed by an identifier of ``system`` (submit,
        update, delete it): in open mode any system but the shared ones; with a client map only the
        client's own systems."""
        if self.open_mode:
            return system not in self.shared_identifier_systems
        return system in self.client_systems.get(client_id or "", frozenset())

    def known_systems(self) -> frozenset[str]:
        systems = {self.cruid_system, *self.shared_identifier_systems}
        for allowed in self.client_systems.values():
            systems.update(allowed)
        return frozenset(systems)

    def with_changes(self, **changes: object) -> RegistryConfig:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryConfig:
        rules = load_rules(settings.rules_path)
        return cls(
            rules=rules,
            cruid_system=settings.cruid_system,
            shared_identifier_systems=frozenset(settings.shared_identifier_systems)
            | frozenset(rules.shared_identifier_systems),
            client_systems={k: frozenset(v) for k, v in settings.client_systems.items()},
            max_candidates=settings.max_candidates,
        )


@dataclass(frozen=True)
class RulesOrigin:
    """Where the live matching rules come from: the ``CR_RULES`` file, or rules a re-match job applied
    (stored in HAPI, :mod:`mediator.applied_rules`)."""

    path: str  # the CR_RULES file
    job_id: str | None = None  # set: the rules a re-match job applied
    applied_at: str | None = None
    applied_by: str | None = None
    doc: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)  # the applied rules

    @property
    def applied(self) -> bool:
        return self.job_id is not None

    def describe(self) -> str:
        if self.job_id is None:
            return f"rules file {self.path}"
        by = f" by {self.applied_by}" if self.applied_by else ""
        return f"applied by job {self.job_id}{by} at {self.applied_at}"


class ConfigHolder:
    """Holds the current :class:`RegistryConfig`; readers take ``.current`` once per request.

    ``origin`` says where its rules come from. While the rules applied by a re-match (stored in HAPI) have
    not been read yet — HAPI was unreachable at start-up — ``pending`` reads them; the registry awaits
    :meth:`settled` before deciding, so no submission is decided with the file's rules meanwhile; a broken
    stored document found later (start-up in the background, or a poll while running) leaves ``pending`` set,
    so submissions are refused (503) until it is fixed or reset.

    ``stored_version`` is the ``meta.versionId`` of the stored rules document last read (``""``: there was
    none; ``None``: not read yet); :func:`mediator.applied_rules.poll` compares it with HAPI's.
    """

    def __init__(self, config: RegistryConfig, origin: RulesOrigin | None = None) -> None:
        self._config = config
        self.generation = 0
        self.origin = origin or RulesOrigin(path="")
        # the shared identifier systems configured outside the rules (a rules swap adds the new rules' own)
        self.base_shared_systems: frozenset[str] = config.shared_identifier_systems
        self.pending: Callable[[], Awaitable[None]] | None = None
        self.stored_version: str | None = None
        # called after rules read from HAPI (or a reset) were swapped in: the OpenHIM link builds its console
        # config again over them, so a console rules text keeps winning (mediator/app.py)
        self.rules_swapped: Callable[[], None] | None = None
        self._settling = asyncio.Lock()

    async def settled(self) -> None:
        """Returns once the live rules are the ones every replica uses (reads them first if need be)."""
        if self.pending is None:
            return
        async with self._settling:
            if self.pending is not None:
                await self.pending()  # clears ``pending`` on success; raises while HAPI is unreachable

    @property
    def current(self) -> RegistryConfig:
        return self._config

    def replace(self, config: RegistryConfig) -> None:
        self._config = config
        self.generation += 1
