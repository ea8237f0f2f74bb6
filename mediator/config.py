"""The registry's live configuration: what an HIE admin may change while the mediator runs.

The OpenHIM console delivers edits on a heartbeat; :class:`ConfigHolder` swaps the whole frozen
:class:`RegistryConfig` at once, so a request sees either the old or the new config, never a mix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

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


class ConfigHolder:
    """Holds the current :class:`RegistryConfig`; readers take ``.current`` once per request."""

    def __init__(self, config: RegistryConfig) -> None:
        self._config = config
        self.generation = 0

    @property
    def current(self) -> RegistryConfig:
        return self._config

    def replace(self, config: RegistryConfig) -> None:
        self._config = config
        self.generation += 1
