"""IHE PIXm cross-reference lookup: every identifier the registry holds for the same person.

The identifier looked up is found by an escaped token search and then checked against each record found
(HAPI trims and truncates indexed values; only a record that holds exactly this identifier, in its normal
form, counts). An identifier held by records of two people is refused, never answered with one of them.
Behind OpenHIM with a client map, a caller sees only the identifier domains the map gives it.
"""

from __future__ import annotations

from typing import Any

from . import records
from .audit import Actor, pix_query_event
from .config import RegistryConfig
from .errors import Ambiguous, Forbidden, NotFound
from .fhir_client import HapiClient
from .identifiers import holds, is_fhir_id, token
from .unit_of_work import UnitOfWork

MAX_SOURCES = 1000
MAX_HOLDERS = 50  # source records holding the identifier looked up, read to tell one person from several


def visible_systems(cfg: RegistryConfig, client_id: str | None) -> frozenset[str] | None:
    """The identifier systems ``client_id`` may look up and be answered with (None: all, open mode):
    its own, the shared ones and the CRUID. A caller the client map does not know may not look up."""
    if cfg.open_mode:
        return None
    own = cfg.client_systems.get(client_id or "")
    if own is None:
        raise Forbidden(f"Client '{client_id or ''}' is not allowed to look up identifiers.")
    return own | cfg.shared_identifier_systems | {cfg.cruid_system}


async def _known_system(hapi: HapiClient, cfg: RegistryConfig, system: str) -> bool:
    if system in cfg.known_systems():
        return True
    # Otherwise a domain is known when the registry holds at least one record of it.
    return await hapi.count("Patient", {"identifier": token(system)}) > 0


async def live_golden(hapi: HapiClient, golden: dict[str, Any]) -> dict[str, Any]:
    """Follow merges to the surviving golden record (up to 10 links after this one). Whatever the end — a
    live golden record, a link to a record that is gone, a record that is not golden, a cycle, too many
    links — the answer is the last record that exists on the way."""
    walk = await records.follow_replaced_by_async(
        lambda rid: hapi.read("Patient", rid), golden, max_records=records.MAX_RECORDS + 1
    )
    return walk.last if walk.last is not None else golden  # never None: the walk starts from a record


async def _golden_of(hapi: HapiClient, cfg: RegistryConfig, system: str, value: str) -> dict[str, Any]:
    if system == cfg.cruid_system:
        golden = await hapi.read("Patient", value) if value.startswith("cr-") and is_fhir_id(value) else None
        if golden is None or not records.is_golden(golden):
            raise NotFound(f"No person with CRUID {value}.")
        live = await live_golden(hapi, golden)
        if not records.source_ids_of(live):  # every record of the person retracted or moved away
            raise NotFound(f"No person with CRUID {value}: the registry holds no records of that person.")
        return live
    found = await hapi.search(
        "Patient",
        {
            "identifier": token(system, value),
            "_tag": f"{records.RECORD_TYPE_SYSTEM}|{records.SOURCE}",
            "_count": str(MAX_HOLDERS),
        },
        max_results=MAX_HOLDERS,
    )
    people: dict[str, dict[str, Any]] = {}
    holders = [r for r in found if holds(r.get("identifier", []), system, value)]
    for golden_id in sorted({g for r in holders if (g := records.golden_id_of(r))}):
        golden = await hapi.read("Patient", golden_id)
        if golden is not None:
            live = await live_golden(hapi, golden)
            people[live["id"]] = live
    if not people:
        raise NotFound(f"The identifier {system}|{value} is not known to the registry.")
    if len(people) > 1:
        raise Ambiguous(
            f"The identifier {system}|{value} is held by records of {len(people)} people; an admin must "
            "decide whether they are one person before it can be looked up."
        )
    return next(iter(people.values()))


async def audited_cross_references(
    hapi: HapiClient,
    cfg: RegistryConfig,
    source: tuple[str, str],
    target_systems: list[str],
    *,
    actor: Actor,
    query: str,
) -> dict[str, Any]:
    """:func:`cross_references`, recorded as an AuditEvent whatever its answer (found, unknown identifier,
    unknown target domain) before it is given: no answer without its record. HAPI unavailable: 503, and
    neither an answer nor a record."""
    try:
        parameters, golden_id = await cross_references(hapi, cfg, source, target_systems, actor.client_id)
    except (NotFound, Forbidden, Ambiguous) as refused:
        await record_event(
            hapi, pix_query_event(actor=actor, query=query, golden_id=None, refused=refused.diagnostics)
        )
        raise
    await record_event(hapi, pix_query_event(actor=actor, query=query, golden_id=golden_id, refused=None))
    return parameters


async def record_event(hapi: HapiClient, event: dict[str, Any]) -> None:
    """Write one AuditEvent (a query's: written before the query is answered)."""
    uow = UnitOfWork(hapi)
    uow.put(event)
    await uow.commit()


async def cross_references(
    hapi: HapiClient,
    cfg: RegistryConfig,
    source: tuple[str, str],
    target_systems: list[str],
    client_id: str | None = None,
) -> tuple[dict[str, Any], str]:
    """The PIXm answer (``Parameters``) for the identifier ``source`` (in normal form), as ``client_id`` may
    see it, and the person's golden record id."""
    system, value = source
    visible = visible_systems(cfg, client_id)
    if visible is not None and system not in visible:
        raise Forbidden(f"Client '{client_id}' may not look up identifiers of system {system}.")
    for target in target_systems:
        if (visible is not None and target not in visible) or not await _known_system(hapi, cfg, target):
            raise Forbidden(f"targetSystem {target} is not an identifier domain known to the registry.")
    golden = await _golden_of(hapi, cfg, system, value)
    wanted = set(target_systems) or set(visible or ())
    identifiers, targets = await person_identifiers(hapi, cfg, golden, wanted, seen={(system, value)})
    parameters: list[dict[str, Any]] = [
        {"name": "targetIdentifier", "valueIdentifier": i} for i in identifiers
    ]
    parameters.extend({"name": "targetId", "valueReference": {"reference": t}} for t in targets)
    return {"resourceType": "Parameters", "parameter": parameters}, golden["id"]


async def person_identifiers(
    hapi: HapiClient,
    cfg: RegistryConfig,
    golden: dict[str, Any],
    wanted: set[str],
    seen: set[tuple[str, str]] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The identifiers of ``golden``'s person (its CRUID first, then its source records'), each once, and the
    references of its records, limited to the systems in ``wanted`` (empty: all), leaving out ``seen``."""
    source_ids = records.source_ids_of(golden)
    sources = (
        await hapi.search(
            "Patient", {"_id": ",".join(source_ids), "_count": str(MAX_SOURCES)}, max_results=MAX_SOURCES
        )
        if source_ids
        else []
    )
    sources.sort(key=lambda r: r["id"])
    seen = set(seen or ())
    out: list[dict[str, Any]] = []
    identifiers = [
        {
            "use": "official",
            "system": cfg.cruid_system,
            "value": records.cruid_of(golden, cfg.cruid_system) or golden["id"],
        }
    ]
    for source_record in sources:
        identifiers.extend(source_record.get("identifier", []))
    for ident in identifiers:
        key = (ident.get("system", ""), ident.get("value", ""))
        if key in seen or (wanted and key[0] not in wanted):
            continue
        seen.add(key)
        out.append({k: ident[k] for k in ("use", "system", "value") if k in ident})
    targets = [
        records.ref(r["id"])
        for r in sources
        if not wanted or {i.get("system") for i in r.get("identifier", [])} & wanted
    ]
    if not wanted or cfg.cruid_system in wanted:
        targets.append(records.ref(golden["id"]))
    return out, targets
