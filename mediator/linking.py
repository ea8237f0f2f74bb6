"""The linking decision — which golden record a source record belongs to. Pure: no I/O.

Live submissions and bulk loads (:mod:`mediator.registry`) and the re-match plan (:mod:`mediator.rematch`)
all take their candidates, decision and golden record from here, so a dry run cannot drift from what an
apply or a live submission does. A point-of-service system's own merge (IHE PMIR: the submitted record
``replaced-by`` another of its records) is decided here too: :func:`merge_link`, :func:`merge_target`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import matching

from . import records
from .errors import Forbidden, InvalidInput, Unprocessable
from .identifiers import IdentifierRefused, is_fhir_id, normal_form

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


# -- a POS's own merge (IHE PMIR ITI-93: the subsumed record, replaced-by its survivor) --------------------

REPLACED_BY = "replaced-by"
POS_MERGE_RULE = (
    "pos-merge"  # the outcome and rule of a submission linked by its POS's merge, not by matching
)


@dataclass(frozen=True)
class MergeLink:
    """A submission's one ``replaced-by`` link: its POS merged it into the source record ``survivor_id``.
    ``index``: its place in ``Patient.link``; ``system``: the survivor's identifier system when the link names
    it by identifier (else known once the survivor is read)."""

    index: int
    survivor_id: str
    system: str | None = None

    @property
    def where(self) -> str:
        return f"Patient.link[{self.index}]"


def merge_link(links: Any, cruid_system: str) -> MergeLink | None:
    """The submitted ``Patient.link`` read as a POS merge (None: no link). The registry keeps ``refer`` and
    ``seealso`` links itself, so a POS may send only one ``replaced-by`` link, to a source record by
    ``Patient/<id>`` or by ``identifier``; anything else is refused (400) rather than dropped."""
    if not links:
        return None
    found: MergeLink | None = None
    for index, link in enumerate(links if isinstance(links, list) else [links]):
        where = f"Patient.link[{index}]"
        kind = link.get("type") if isinstance(link, Mapping) else None
        if kind != REPLACED_BY:
            raise InvalidInput(
                f"{where}: the registry takes only 'replaced-by' links from a point-of-service system (its "
                f"merge of two of its own records), not {kind!r}; it keeps the other links itself.",
                expression=[where],
            )
        if found is not None:
            raise InvalidInput(f"{where}: a record can be replaced by one record only.", expression=[where])
        found = _survivor(link.get("other"), index, cruid_system)
    return found


def _survivor(other: Any, index: int, cruid_system: str) -> MergeLink:
    where = f"Patient.link[{index}]"
    other = other if isinstance(other, Mapping) else {}
    named: list[MergeLink] = []
    reference = other.get("reference")
    if reference is not None:
        rid = records.ref_id(reference) if isinstance(reference, str) else None
        if rid is None or not is_fhir_id(rid):
            raise InvalidInput(
                f"{where}.other.reference: name the survivor as Patient/<id>.", expression=[where]
            )
        named.append(MergeLink(index, rid))
    ident = other.get("identifier")
    if ident is not None:
        if not isinstance(ident, Mapping) or not ident.get("system") or not ident.get("value"):
            raise InvalidInput(f"{where}.other.identifier needs a system and a value.", expression=[where])
        try:
            system, value = normal_form(ident["system"], ident["value"])
        except IdentifierRefused as exc:
            raise InvalidInput(f"{where}.other.identifier: {exc}", expression=[where]) from exc
        if system == cruid_system:
            named.append(MergeLink(index, value))  # a CRUID: refused below as a golden record
        else:
            named.append(MergeLink(index, records.source_record_id(system, value), system))
    if not named:
        raise InvalidInput(
            f"{where}.other: name the survivor by reference or identifier.", expression=[where]
        )
    if len({n.survivor_id for n in named}) > 1:
        raise InvalidInput(
            f"{where}.other: the reference and the identifier name two records.", expression=[where]
        )
    if named[0].survivor_id.startswith("cr-"):
        raise InvalidInput(
            f"{where}: golden records are maintained by the registry; a point-of-service system merges its "
            "own records only (replaced-by one of its source records).",
            expression=[where],
        )
    return named[-1]


def merge_target(
    link: MergeLink, source_id: str, survivor: Mapping[str, Any] | None, may_write: Callable[[str], bool]
) -> str:
    """The golden record the survivor belongs to (before following merges of golden records), or the
    refusal: the survivor unknown, the record itself or merged itself (422), named by an identifier of a
    system the client may not write (403, as an update would be); named by reference, a record not the
    client's to write is answered as unknown (422). ``may_write``: whether the submitting client
    may write records keyed in that system."""
    where = [link.where]
    if link.survivor_id == source_id:
        raise Unprocessable(f"{link.where}: a record cannot be replaced by itself.", expression=where)
    unknown = Unprocessable(
        f"{link.where}: the survivor Patient/{link.survivor_id} is not known to the registry; submit it "
        "first.",
        expression=where,
    )
    # by identifier: refused before reading (403), so nothing tells whether another client's record exists
    if link.system is not None and not may_write(link.system):
        raise Forbidden(
            f"{link.where}: Patient/{link.survivor_id} is not a record of the submitting client.",
            expression=where,
        )
    if survivor is None or records.is_golden(survivor):
        raise unknown
    # by reference: another client's record is answered as one never stored (a record id is a hash anyone
    # can compute from an identifier: a 403 would tell which of another client's identifiers exist); so is
    # one stored under a key not in normal form (whose it is cannot be told)
    key = records.key_identifier(survivor)
    system = link.system or (key[0] if key is not None else None)
    if system is None or not may_write(system):
        raise unknown
    merged = records.pos_survivor(survivor)
    if merged is not None:
        raise Unprocessable(
            f"{link.where}: Patient/{link.survivor_id} was itself replaced by Patient/{merged}; name that "
            "record as the survivor.",
            expression=where,
        )
    golden_id = records.golden_id_of(survivor)
    if golden_id is None:
        raise Unprocessable(f"{link.where}: the survivor belongs to no person.", expression=where)
    return golden_id


def followers(survivor_id: str, sources: Iterable[Mapping[str, Any] | None]) -> list[str]:
    """The ids of the ``sources`` their POS merged into ``survivor_id``, or into one of those, and so on:
    one person with it by the POS's decisions, they go wherever matching or an admin takes it (and do not
    count as others it would leave behind)."""
    return followers_of(survivor_id, {s["id"]: records.pos_survivor(s) for s in sources if s is not None})


def followers_of(survivor_id: str, merged_into: Mapping[str, str | None]) -> list[str]:
    """:func:`followers` from what each record was merged into (record id -> survivor id or None): the
    records merged into ``survivor_id`` first, then those merged into them, in the order given."""
    out: list[str] = []
    seen = {survivor_id}
    wave = [survivor_id]
    while wave:
        wave = [rid for rid, into in merged_into.items() if into in wave and rid not in seen]
        seen.update(wave)
        out.extend(wave)
    return out


__all__ = [
    "POS_MERGE_RULE",
    "Found",
    "MergeLink",
    "candidates",
    "choose_golden",
    "followers",
    "followers_of",
    "merge_link",
    "merge_target",
    "within_limit",
]
