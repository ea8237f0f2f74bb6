"""The shape of the registry's records in HAPI — pure functions, no I/O.

A **source record** (``src-<hash of its identifier>``) is what one point-of-service system sent for one
identifier, with tags (record type, client, blocking keys) and one ``refer`` link to its golden record. A
**golden record** (``cr-<uuid>``) holds no demographics: the CRUID, a record-type tag and one ``seealso``
link per source record; inactive when it has no sources, ``replaced-by`` when merged. A source record a
point-of-service system merged into another of its own (IHE PMIR) also keeps that ``replaced-by`` link.
Decisions of people and of POS merges live in extensions (``link-source`` manual or pos-merge,
``distinct-from``).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

NS = "urn:client-registry"
RECORD_TYPE_SYSTEM = f"{NS}:record-type"
CLIENT_SYSTEM = f"{NS}:client"
BLOCK_SYSTEM = f"{NS}:block"
# Extensions (not tags: HAPI keeps tags across updates, an update replaces extensions)
# on a source record, who decided its link: valueCode "manual" (an admin) or "pos-merge" (its POS merged it)
LINK_SOURCE_URL = f"{NS}:link-source"
DISTINCT_FROM_URL = f"{NS}:distinct-from"  # on a golden record, valueReference: decided to be another person
REVIEW_SYSTEM = f"{NS}:review"
REVIEW_TYPE_SYSTEM = f"{NS}:review-type"

GOLDEN = "golden"
SOURCE = "source"
MANUAL = "manual"
POS_MERGE = "pos-merge"

Resource = dict[str, Any]
J = TypeVar("J")  # JSON data: a dict, a list or a scalar


def source_record_id(system: str, value: str) -> str:
    digest = hashlib.sha256(f"{system}|{value}".encode()).hexdigest()[:40]
    return f"src-{digest}"


def new_golden_id() -> str:
    return f"cr-{uuid.uuid4()}"


def ref(resource_id: str) -> str:
    return f"Patient/{resource_id}"


def ref_id(reference: str | None) -> str | None:
    if not reference:
        return None
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-1] if len(parts) >= 2 and parts[-2] == "Patient" else None


def tags(resource: Mapping[str, Any], system: str) -> list[str]:
    return [t.get("code", "") for t in resource.get("meta", {}).get("tag", []) if t.get("system") == system]


SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}


def subsetted(resource: Mapping[str, Any]) -> dict[str, Any]:
    """``resource`` labelled as a partial view (FHIR's ``SUBSETTED``): for looking at, never written back."""
    meta: dict[str, Any] = dict(resource.get("meta", {}))
    others = [s for s in meta.get("security", []) if s.get("code") != "SUBSETTED"]
    meta["security"] = [*others, SUBSETTED]
    return {**resource, "meta": meta}


def is_subsetted(resource: Mapping[str, Any]) -> bool:
    """A partial view (FHIR's ``SUBSETTED`` security label), e.g. a candidate
    record shared by :mod:`mediator.tagged_sources` (:func:`subsetted`)."""
    return any(s.get("code") == "SUBSETTED" for s in resource.get("meta", {}).get("security", []))


def is_golden(resource: Mapping[str, Any]) -> bool:
    return GOLDEN in tags(resource, RECORD_TYPE_SYSTEM)


def is_source(resource: Mapping[str, Any]) -> bool:
    return SOURCE in tags(resource, RECORD_TYPE_SYSTEM)


def key_identifier(source: Mapping[str, Any]) -> tuple[str, str] | None:
    """The identifier (system, value) a source record is keyed by (its id derives from it), if it holds it."""
    for ident in source.get("identifier", []):
        system, value = ident.get("system"), ident.get("value")
        if (
            isinstance(system, str)
            and isinstance(value, str)
            and source_record_id(system, value) == source.get("id")
        ):
            return system, value
    return None


def extension_values(resource: Mapping[str, Any], url: str) -> list[Any]:
    values: list[Any] = []
    for ext in resource.get("extension", []):
        if ext.get("url") == url:
            values.extend(v for k, v in ext.items() if k.startswith("value"))
    return values


def link_decision(resource: Mapping[str, Any]) -> str | None:
    """Who decided this source record's link: :data:`MANUAL` (an admin), :data:`POS_MERGE` (its
    point-of-service system merged it into another of its records) or None (matching)."""
    values = extension_values(resource, LINK_SOURCE_URL)
    return MANUAL if MANUAL in values else POS_MERGE if POS_MERGE in values else None


def is_manually_linked(resource: Mapping[str, Any]) -> bool:
    """A decision fixed this source record's link — an admin's, or its POS's merge (:func:`link_decision`);
    matching never changes it."""
    return link_decision(resource) is not None


def pos_survivor(source: Mapping[str, Any]) -> str | None:
    """The source record its point-of-service system merged this one into (its ``replaced-by`` link, kept only
    with the :data:`POS_MERGE` decision), or None."""
    return replaced_by(source) if link_decision(source) == POS_MERGE else None


def distinct_from(golden: Mapping[str, Any]) -> set[str]:
    """Golden records an admin decided are other people than this one (never auto-matched)."""
    return {rid for v in extension_values(golden, DISTINCT_FROM_URL) if (rid := ref_id(v.get("reference")))}


def version_of(resource: Mapping[str, Any]) -> str | None:
    version = resource.get("meta", {}).get("versionId")
    return str(version) if version is not None else None


def golden_id_of(source: Mapping[str, Any]) -> str | None:
    for link in source.get("link", []):
        if link.get("type") == "refer":
            return ref_id(link.get("other", {}).get("reference"))
    return None


def source_ids_of(golden: Mapping[str, Any]) -> list[str]:
    ids = []
    for link in golden.get("link", []):
        if link.get("type") == "seealso":
            rid = ref_id(link.get("other", {}).get("reference"))
            if rid:
                ids.append(rid)
    return ids


def replaced_by(resource: Mapping[str, Any]) -> str | None:
    """The record a merge replaced this one by: a golden record's survivor, or a POS-merged source
    record's."""
    for link in resource.get("link", []):
        if link.get("type") == "replaced-by":
            return ref_id(link.get("other", {}).get("reference"))
    return None


# -- following replaced-by links -------------------------------------------------------------------------

MAX_RECORDS = 10  # records a walk along replaced-by links reads at most (the start included)

LIVE = "live"  # ended on a golden record without a replaced-by link
ABSENT = "absent"  # the start, or the record a link names, does not exist
NOT_GOLDEN = "not-golden"  # ended on a record that is not a golden record
CYCLE = "cycle"  # a link names a record already visited
TOO_LONG = "too-long"  # still a replaced-by link after MAX_RECORDS records


@dataclass(frozen=True)
class Walk:
    """Where a walk along ``replaced-by`` links ended; each caller decides what each end means to it."""

    end: str  # LIVE, ABSENT, NOT_GOLDEN, CYCLE or TOO_LONG
    last: Resource | None  # the last record that exists on the way (None: not even the start)
    missing: str | None = None  # with ABSENT: the id that does not exist

    @property
    def live(self) -> Resource | None:
        """The surviving golden record, or None unless the walk ended on one."""
        return self.last if self.end == LIVE else None


def _walk(start: str | Resource, max_records: int) -> Generator[str, Resource | None, Walk]:
    """The walk without I/O: yields the ids to read, is sent the records read (None: absent)."""
    seen: set[str] = set()
    last: Resource | None = None
    current: str | Resource = start
    for _ in range(max_records):
        resource = (yield current) if isinstance(current, str) else current
        if resource is None:
            return Walk(ABSENT, last, missing=current if isinstance(current, str) else None)
        last = resource
        seen.add(resource["id"])
        if not is_golden(resource):
            return Walk(NOT_GOLDEN, last)
        successor = replaced_by(resource)
        if successor is None:
            return Walk(LIVE, last)
        if successor in seen:
            return Walk(CYCLE, last)
        current = successor
    return Walk(TOO_LONG, last)


def follow_replaced_by(
    lookup: Callable[[str], Resource | None], start: str | Resource, *, max_records: int = MAX_RECORDS
) -> Walk:
    """Follow ``replaced-by`` links from ``start`` (an id, or a record already read) with a sync lookup."""
    walk = _walk(start, max_records)
    try:
        rid = next(walk)
        while True:
            rid = walk.send(lookup(rid))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def follow_replaced_by_async(
    read: Callable[[str], Awaitable[Resource | None]],
    start: str | Resource,
    *,
    max_records: int = MAX_RECORDS,
) -> Walk:
    """:func:`follow_replaced_by` with an async reader (a unit of work, the HAPI client)."""
    walk = _walk(start, max_records)
    try:
        rid = next(walk)
        while True:
            rid = walk.send(await read(rid))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


def cruid_of(golden: Mapping[str, Any], cruid_system: str) -> str | None:
    for ident in golden.get("identifier", []):
        if ident.get("system") == cruid_system and isinstance(ident.get("value"), str):
            return str(ident["value"])
    return None


def clone(value: J) -> J:
    """A deep copy of JSON data (dicts, lists, scalars): what ``copy.deepcopy`` gives for FHIR resources
    parsed from JSON, several times faster (no memo, no dispatch) — the registry copies on every read."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, list):
        return [clone(v) for v in value]  # type: ignore[return-value]
    return value


def new_golden(golden_id: str, cruid_system: str) -> Resource:
    return {
        "resourceType": "Patient",
        "id": golden_id,
        "meta": {"tag": [{"system": RECORD_TYPE_SYSTEM, "code": GOLDEN, "display": "Golden record"}]},
        "identifier": [{"use": "official", "system": cruid_system, "value": golden_id}],
        "active": True,
        "link": [],
    }


def with_source(golden: Mapping[str, Any], source_id: str) -> Resource:
    updated: Resource = clone(dict(golden))
    if source_id not in source_ids_of(updated):
        updated.setdefault("link", []).append({"other": {"reference": ref(source_id)}, "type": "seealso"})
    updated["active"] = True
    return updated


def without_source(golden: Mapping[str, Any], source_id: str, moved_to: str | None = None) -> Resource:
    """``golden`` without its link to ``source_id``; inactive when no source is left. ``moved_to``: the
    golden record the source now belongs to; a person whose last record moved there is that person now
    (``replaced-by`` it), so a CRUID a point-of-service system keeps leads on. Without it (a retraction) the
    person has no records and its CRUID names nobody."""
    updated: Resource = clone(dict(golden))
    updated["link"] = [
        link
        for link in updated.get("link", [])
        if not (link.get("type") == "seealso" and ref_id(link.get("other", {}).get("reference")) == source_id)
    ]
    if not source_ids_of(updated):
        updated["active"] = False
        if moved_to is not None and moved_to != updated.get("id") and replaced_by(updated) is None:
            updated["link"].append({"other": {"reference": ref(moved_to)}, "type": "replaced-by"})
    return updated


def build_source_record(
    submitted: Mapping[str, Any],
    record_id: str,
    *,
    client_id: str | None,
    golden_id: str,
    block_keys: Iterable[str],
    manual: bool = False,
    survivor: str | None = None,
) -> Resource:
    """The stored source record: the submitted demographics plus the registry's tags and its ``refer`` link;
    ``survivor``: its POS merged it into that source record (a ``replaced-by`` link, decision ``pos-merge``).
    The links the POS sent are not copied (the registry checks them, :mod:`mediator.linking`)."""
    record = {k: clone(v) for k, v in submitted.items() if k not in ("id", "meta", "link", "text")}
    record["extension"] = [e for e in record.get("extension", []) if e.get("url") != LINK_SOURCE_URL]
    if survivor:
        record["extension"].append({"url": LINK_SOURCE_URL, "valueCode": POS_MERGE})
    elif manual:
        record["extension"].append({"url": LINK_SOURCE_URL, "valueCode": MANUAL})
    if not record["extension"]:
        del record["extension"]
    tag = [{"system": RECORD_TYPE_SYSTEM, "code": SOURCE}]
    if client_id:
        tag.append({"system": CLIENT_SYSTEM, "code": client_id})
    tag.extend({"system": BLOCK_SYSTEM, "code": key} for key in sorted(set(block_keys)))
    record.update(
        resourceType="Patient",
        id=record_id,
        meta={"tag": tag},
        link=[{"other": {"reference": ref(golden_id)}, "type": "refer"}],
    )
    if survivor:
        record["link"].append({"other": {"reference": ref(survivor)}, "type": "replaced-by"})
    return record


def client_of(source: Mapping[str, Any]) -> str | None:
    clients = tags(source, CLIENT_SYSTEM)
    return clients[0] if clients else None


# -- link state: what a curation decision changes, and what undo restores --------------------------------


def link_state(resource: Resource | None) -> dict[str, Any]:
    """A record's links and link decisions only (JSON, no demographics): for AuditEvents and undo."""
    if resource is None:
        return {"kind": "absent"}
    if is_golden(resource):
        return {
            "kind": "golden",
            "active": resource.get("active", True),
            "sources": sorted(source_ids_of(resource)),
            "replaced_by": replaced_by(resource),
            "distinct_from": sorted(distinct_from(resource)),
        }
    state: dict[str, Any] = {
        "kind": "source",
        "golden": golden_id_of(resource),
        "manual": is_manually_linked(resource),
    }
    if (survivor := pos_survivor(resource)) is not None:
        state["pos_merge"] = survivor  # only then: states recorded before POS merges compare equal
    return state


def with_link_state(resource: Resource, state: dict[str, Any]) -> Resource:
    """``resource`` with the link state ``state`` (the inverse of :func:`link_state`)."""
    out: Resource = clone(resource)
    kind = state["kind"]
    if kind == "absent":  # a golden record created by the undone decision: emptied, never deleted
        kind, state = "golden", {"active": False, "sources": [], "replaced_by": None, "distinct_from": []}
    if kind == "golden":
        links: list[dict[str, Any]] = [
            {"other": {"reference": ref(s)}, "type": "seealso"} for s in state["sources"]
        ]
        if state["replaced_by"]:
            links.append({"other": {"reference": ref(state["replaced_by"])}, "type": "replaced-by"})
        out["link"] = links
        out["active"] = state["active"]
        _set_extensions(
            out,
            DISTINCT_FROM_URL,
            [{"valueReference": {"reference": ref(g)}} for g in state["distinct_from"]],
        )
    else:
        out["link"] = [{"other": {"reference": ref(state["golden"])}, "type": "refer"}]
        survivor = state.get("pos_merge")
        if survivor:
            out["link"].append({"other": {"reference": ref(survivor)}, "type": "replaced-by"})
        decided = POS_MERGE if survivor else MANUAL if state["manual"] else None
        _set_extensions(out, LINK_SOURCE_URL, [{"valueCode": decided}] if decided else [])
    return out


def relinked(source: Resource, golden_id: str) -> Resource:
    """``source`` linked to ``golden_id`` with its link decision kept: a record its POS merged into one that
    moves goes with it, still merged by its POS."""
    return with_link_state(source, {**link_state(source), "golden": golden_id})


def _set_extensions(resource: Resource, url: str, values: list[dict[str, Any]]) -> None:
    kept = [e for e in resource.get("extension", []) if e.get("url") != url]
    kept.extend({"url": url, **v} for v in values)
    if kept:
        resource["extension"] = kept
    else:
        resource.pop("extension", None)
