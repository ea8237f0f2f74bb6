"""Errors raised by :mod:`matching`.

- :class:`MatchingError` — base class.
  - :class:`RulesError` — a rules document is invalid; ``problems`` lists every problem found, each naming
    the line (for files) or the key path (for mappings).
"""

from __future__ import annotations


class MatchingError(Exception):
    """Base class of the matching errors."""


class RulesError(MatchingError, ValueError):
    """A rules document is invalid. ``problems`` holds every problem found, not just the first."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid rules:\n  " + "\n  ".join(self.problems))
