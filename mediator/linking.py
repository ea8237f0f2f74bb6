"""The linking decision — which golden record a source record belongs to. Pure: no I/O.

Live submissions and bulk loads (:mod:`mediator.registry`) and the re-match plan (:mod:`mediator.rematch`)
all take their candidates, decision and golden record from here, so a dry run cannot drift from what an
apply or a live submission does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import matching

T = TypeVar("T")


def within_limit(blocks: Sequence[Sequence[T] | None], limit: int) -> list[T]:
    """The members of the blocks holding at most ``limit`` records (None: a block known to be larger): a
    birth date shared by thousands is left out, so the selective keys (phone, national id, name) still find
    the person. Each member (a record, or a record id) once."""
    out: dict[Any, T] = {}
    for block in blocks:
        if block is None or len(block) > limit:
            continue
        for member in block:
            out[member["id"] if isinstance(member, Mapping) else member] = member
    return list(out.values())


@dataclass(frozen=True)
class Found:
    """A stored (or staged) source record met through a blocking key: its id, its golden record, and
    what it is compared by (the record itself, or its prepared values)."""

    id: str
    golden_id: str | None
    values: Mapping[str, Any]


def candidates(source_id: str, found: Iterable[Found], never: set[str]) -> list[matching.Candidate]:
    """What ``source_id`` is scored against: every record found but itself, linked to a golden record that
    is not one its person was decided to be distinct from (``never``)."""
    return [
        matching.Candidate(id=f.id, golden_id=f.golden_id, resource=f.values)
        for f in found
        if f.id != source_id and f.golden_id and f.golden_id not in never
    ]


def choose_golden(
    *, current: str | None, manual: bool, auto: list[str], current_has_others: bool
) -> str | None:
    """Which golden record a source record belongs to after a decision; None = a new one.

    A manual link stays; the current person is kept while it is among the auto-matches (stability);
    otherwise the best auto-match; with none, a record alone on its golden record keeps it, and a record
    that no longer matches the others of its person leaves them.
    """
    if current and manual:
        return current
    if current and current in auto:
        return current
    if auto:
        return auto[0]
    if current and not current_has_others:
        return current
    return None


__all__ = ["Found", "candidates", "choose_golden", "within_limit"]
