"""Timestamps as FHIR and OpenHIM write them: ISO 8601 in UTC, ending in ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime


def instant(moment: datetime | None = None, *, timespec: str = "seconds") -> str:
    """``2026-12-07T06:33:54Z`` (``timespec="milliseconds"``: ``…54.123Z``) of ``moment`` (a UTC datetime;
    default: now)."""
    return (moment or datetime.now(UTC)).isoformat(timespec=timespec).replace("+00:00", "Z")
