"""Re-matching the stored source records after a rules change: a dry run, then a resumable apply job.

The dry run (:func:`dry_run`) re-decides every stored source record in ``_id`` order with the new rules,
in memory, through the same linking decision as live submissions (:mod:`mediator.linking`), and writes
nothing. The apply (:class:`RematchJob`) makes the rules live, rewrites changed blocking tags, then
re-submits each record of the plan through ``Registry.submit``. How it pages, resumes and audits:
``docs/internals.md``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import matching

from . import applied_rules, linking, records
from .audit import Actor
from .config import ConfigHolder, RegistryConfig
from .errors import Conflict, RegistryError, UpstreamError
from .fhir_client import HapiClient
from .files import write_json
from .identifiers import token
from .registry import Registry, Submission
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

PAGE_SIZE = 500
RETAG_BATCH = 50
EXAMPLES = 10
_NEW = "new:"  # placeholder id of a golden record the plan would create


@dataclass(frozen=True)
class Change:
    source_id: str
    kind: str  # "merge" (joins another person's golden record) | "split" (gets a new golden record)
    from_golden: str | None
    to_golden: str | None  # None: a new golden record
    partner: str | None = None  # merge: the record it auto-matched in the target golden
    score: float | None = None
    rule: str = ""


@dataclass
class Plan:
    records: int = 0
    unchanged: int = 0
    manual_kept: int = 0
    potential: int = 0  # decided 'potential' against someone (a review Task would be raised or kept)
    changes: list[Change] = field(default_factory=list)
    retag: list[str] = field(default_factory=list)  # records whose blocking keys differ under the new rules

    def summary(self) -> dict[str, Any]:
        merges = [c for c in self.changes if c.kind == "merge"]
        splits = [c for c in self.changes if c.kind == "split"]
        return {
            "records": self.records,
            "links_changed": len(self.changes),
            "merges": len(merges),
            "splits": len(splits),
            "unchanged": self.unchanged,
            "manual_kept": self.manual_kept,
            "potential": self.potential,
            "retag": len(self.retag),
            "examples": {
                "merge": [asdict(c) for c in merges[:EXAMPLES]],
                "split": [asdict(c) for c in splits[:EXAMPLES]],
            },
        }


@dataclass(slots=True)
class SourceFacts:
    """What the plan needs of one stored source record (not the record: a snapshot holds all of them)."""

    golden_id: str | None
    manual: bool  # a person decided its link
    stored_keys: tuple[str, ...]  # its ``block`` tags, sorted
    keys: tuple[str, ...]  # its blocking keys under the new rules (filed under), sorted
    search_keys: tuple[str, ...]  # the keys its candidates are looked up by under the new rules
    fields: matching.Prepared  # its normalised comparison values under the new rules
    merged_into: str | None = None  # its POS merged it into this source record: it follows that one


@dataclass
class Snapshot:
    """The stored source records (as :class:`SourceFacts` under ``rules``) and their golden records (reduced
    to their record-type tag, ``replaced-by`` link and ``distinct-from`` decisions)."""

    sources: dict[str, SourceFacts]
    goldens: dict[str, dict[str, Any]]
    rules: matching.Rules
    scope: frozenset[str] | None = None  # the records to re-decide (None: all); the others are candidates


def source_facts(
    source: Mapping[str, Any],
    rules: matching.Rules,
    canon: dict[tuple[str, ...], tuple[str, ...]] | None = None,
) -> SourceFacts:
    """``canon`` (shared by all the records of a snapshot) stores equal values and keys once."""
    canon = {} if canon is None else canon

    def once(values: Sequence[str]) -> tuple[str, ...]:
        t = tuple(sys.intern(v) for v in values)
        return canon.setdefault(t, t)

    fields = matching.prepare(source, rules)
    keys = matching.keys_of(source, rules)
    return SourceFacts(
        golden_id=records.golden_id_of(source),
        manual=records.is_manually_linked(source),
        stored_keys=once(sorted(set(records.tags(source, records.BLOCK_SYSTEM)))),
        keys=once(keys.index),
        search_keys=once(keys.search),
        fields=matching.Prepared({k: once(v) for k, v in fields.items()}),
        merged_into=records.pos_survivor(source),
    )


def golden_facts(golden: Mapping[str, Any]) -> dict[str, Any]:
    """A golden record reduced to what the plan reads (``is_golden``, ``replaced_by``, ``distinct_from``)."""
    meta = golden.get("meta", {})
    return {
        "resourceType": "Patient",
        "id": golden["id"],
        "meta": {"tag": [t for t in meta.get("tag", []) if t.get("system") == records.RECORD_TYPE_SYSTEM]},
        "link": [lnk for lnk in golden.get("link", []) if lnk.get("type") == "replaced-by"],
        "extension": [e for e in golden.get("extension", []) if e.get("url") == records.DISTINCT_FROM_URL],
    }


# -- reading the store ---------------------------------------------------------------------------------


async def source_pages(
    hapi: HapiClient, systems: Sequence[str] = (), page_size: int = PAGE_SIZE
) -> AsyncIterator[list[dict[str, Any]]]:
    """Stored source records, a bounded page at a time, sorted by ``_id`` (optionally only some systems)."""
    params = {
        "_tag": f"{records.RECORD_TYPE_SYSTEM}|{records.SOURCE}",
        "_sort": "_id",
        "_count": str(page_size),
    }
    if systems:
        params["identifier"] = ",".join(token(s) for s in systems)  # escaped: a system may hold ','
    async for page in hapi.pages("Patient", params):
        yield page


async def load_snapshot(
    hapi: HapiClient, rules: matching.Rules, systems: Sequence[str] = (), page_size: int = PAGE_SIZE
) -> Snapshot:
    """Pages through the stored source records, keeping only their :class:`SourceFacts` under ``rules``.
    All of them: a record of ``systems`` (the ones to re-decide) has candidates of any system, as it has when
    the apply re-submits it."""
    sources: dict[str, SourceFacts] = {}
    scope: set[str] = set()
    canon: dict[tuple[str, ...], tuple[str, ...]] = {}
    async for page in source_pages(hapi, (), page_size):
        for r in page:
            if records.SOURCE in records.tags(r, records.RECORD_TYPE_SYSTEM):
                sources[r["id"]] = source_facts(r, rules, canon)
                if any(i.get("system") in systems for i in r.get("identifier", [])):
                    scope.add(r["id"])
    goldens: dict[str, dict[str, Any]] = {}
    wanted = {g for f in sources.values() if (g := f.golden_id)}
    while wanted:  # the goldens, then the successors of merged ones, 100 ids per search
        ids = sorted(wanted)
        for i in range(0, len(ids), 100):
            chunk = ids[i : i + 100]
            found = await hapi.search("Patient", {"_id": ",".join(chunk), "_count": "100"}, max_results=100)
            goldens.update((r["id"], golden_facts(r)) for r in found)
        wanted = {s for r in goldens.values() if (s := records.replaced_by(r)) and s not in goldens}
        wanted -= set(ids)
    return Snapshot(sources, goldens, rules, frozenset(scope) if systems else None)


# -- the simulation ------------------------------------------------------------------------------------


def plan(snapshot: Snapshot, cfg: RegistryConfig) -> Plan:
    """Re-decide every source record in ``_id`` order with ``cfg.rules``, each result seen by the next."""
    rules, limit = cfg.rules, cfg.max_candidates
    if snapshot.rules is not rules:
        raise ValueError(
            "The snapshot was loaded with other rules than the plan's (load_snapshot(hapi, rules))."
        )
    sources, goldens = snapshot.sources, snapshot.goldens
    golden_of = {sid: f.golden_id for sid, f in sources.items()}
    members: dict[str, set[str]] = defaultdict(set)
    for sid, gid in golden_of.items():
        if gid:
            members[gid].add(sid)
    keys = {sid: f.keys for sid, f in sources.items()}
    index: dict[str, list[str]] = defaultdict(list)
    for sid in sorted(sources):
        for key in keys[sid]:
            index[key].append(sid)

    def resolve(gid: str) -> str | None:  # Registry._golden: follow replaced-by, None unless a live golden
        if gid.startswith(_NEW):  # planned here, not stored: no links (stored links never name one)
            return gid
        live = records.follow_replaced_by(goldens.get, gid).live
        return live["id"] if live is not None else None

    out = Plan()
    for sid in sorted(sources):
        source = sources[sid]
        if source.stored_keys != keys[sid]:  # any record: live candidate searches go by the stored tags
            out.retag.append(sid)
        if snapshot.scope is not None and sid not in snapshot.scope:
            continue
        out.records += 1
        current = golden_of[sid]
        if current and source.manual:
            out.manual_kept += 1
            out.unchanged += 1
            continue
        # .get: search keys nobody is filed under add nothing
        found = linking.within_limit([index.get(key, []) for key in source.search_keys], limit)
        current_golden = goldens.get(current) if current and not current.startswith(_NEW) else None
        never = records.distinct_from(current_golden) if current_golden else set()
        candidates = linking.candidates(
            sid, (linking.Found(c, golden_of[c], sources[c].fields) for c in sorted(found)), never
        )
        decision = matching.decide(source.fields, candidates, rules)
        if decision.outcome == "potential":
            out.potential += 1
        # the records its POS merged into it go where it goes (Registry._link): not others it would leave
        merged = {f: sources[f].merged_into for f in members[current]} if current else {}
        followers = set(linking.followers_of(sid, merged))
        target = linking.choose_golden(
            current=current,
            manual=False,  # manually linked records were kept above
            auto=decision.auto_match_goldens(),
            current_has_others=current is not None and not members[current] <= {sid, *followers},
        )
        resolved = resolve(target) if target else None
        if resolved is None:
            resolved = f"{_NEW}{sid}"
        if resolved == current:
            out.unchanged += 1
            continue
        if resolved.startswith(_NEW):
            out.changes.append(Change(sid, "split", current, None, score=decision.score, rule=decision.rule))
        else:
            best = next((s for s in decision.scores if s.golden_id == target), None)
            out.changes.append(
                Change(
                    sid,
                    "merge",
                    current,
                    resolved,
                    partner=best.candidate_id if best else None,
                    score=best.score if best else decision.score,
                    rule=best.rule if best else decision.rule,
                )
            )
        for moved in (sid, *sorted(followers)):
            if current:
                members[current].discard(moved)
            members[resolved].add(moved)
            golden_of[moved] = resolved
    return out


async def dry_run(
    hapi: HapiClient, cfg: RegistryConfig, systems: Sequence[str] = (), page_size: int = PAGE_SIZE
) -> Plan:
    """What re-matching with ``cfg.rules`` would change; writes nothing."""
    snapshot = await load_snapshot(hapi, cfg.rules, systems, page_size)
    return await asyncio.to_thread(plan, snapshot, cfg)


# -- the apply job ---------------------------------------------------------------------------------------


@dataclass
class RematchState:
    id: str
    rules: dict[str, Any]  # matching.Rules.to_dict() of the new rules
    systems: list[str] = field(default_factory=list)
    phase: str = "planning"  # planning | retagging | relinking | finished | failed
    summary: dict[str, Any] = field(default_factory=dict)  # the dry-run summary the job applies
    relink: list[str] = field(default_factory=list)
    retag: list[str] = field(default_factory=list)
    retag_done: int = 0
    relink_done: int = 0
    changed: int = 0  # re-submissions that did change the link
    unchanged: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    applied_by: str = ""  # the admin user who applied the rules
    applied_at: str = ""  # when the job first made them live (ISO 8601, UTC)

    def progress(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("rules", "relink", "retag")}
        out.update(retag_total=len(self.retag), relink_total=len(self.relink))
        return out


class RematchJob:
    def __init__(
        self,
        state: RematchState,
        *,
        job_dir: Path,
        hapi: HapiClient,
        config: ConfigHolder,
        registry: Registry,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.state, self.hapi, self.config, self.registry = state, hapi, config, registry
        self.page_size = page_size
        self.failure: Exception | None = None  # why the last run stopped (HAPI down, …), if it did
        job_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = job_dir / f"{state.id}.rematch.json"

    @classmethod
    def load(cls, path: Path, **kwargs: Any) -> RematchJob:
        return cls(RematchState(**json.loads(path.read_text())), job_dir=path.parent, **kwargs)

    def save(self) -> None:
        write_json(self.state_path, asdict(self.state))

    async def run(self) -> RematchState:
        s = self.state
        if s.phase == "finished":
            return s
        started = time.perf_counter() - s.seconds
        try:
            rules = matching.load_rules(s.rules)
            applied = applied_rules.AppliedRules.of(s.rules, s.id, s.applied_by)
            if s.applied_at:  # resumed: the same document as at the first start
                applied = dataclasses.replace(applied, applied_at=s.applied_at)
            s.applied_at = applied.applied_at
            await applied_rules.write(self.hapi, applied)  # every replica (and restart) uses them from now
            applied_rules.use(self.config, applied, rules)  # from now on every submission here uses them
            cfg = self.config.current
            if not s.summary:
                the_plan = await dry_run(self.hapi, cfg, s.systems, self.page_size)
                s.summary = the_plan.summary()
                s.relink = [c.source_id for c in the_plan.changes]
                s.retag = the_plan.retag
            s.phase = "retagging"
            self.save()
            while s.retag_done < len(s.retag):
                chunk = s.retag[s.retag_done : s.retag_done + RETAG_BATCH]
                await self._retag(chunk, rules)
                s.retag_done += len(chunk)
                s.seconds = time.perf_counter() - started
                self.save()
            s.phase = "relinking"
            self.save()
            in_doubt = s.relink_done < len(s.relink)  # a stopped run may have written it, not saved it
            while s.relink_done < len(s.relink):
                sid = s.relink[s.relink_done]
                if not (in_doubt and await self._already_relinked(sid)):
                    await self._relink(sid)
                in_doubt = False
                s.relink_done += 1
                s.seconds = time.perf_counter() - started
                self.save()
            s.phase = "finished"
        except asyncio.CancelledError:
            self.save()  # the mediator stops: resume from here next time
            raise
        except Exception as exc:  # HAPI down, …: stop; a restart (or resume) goes on from the saved position
            log.exception("re-match job failed", extra={"job": s.id})
            s.phase, s.error = "failed", f"{type(exc).__name__}: {exc}"
            self.failure = exc
        s.seconds = time.perf_counter() - started
        self.save()
        return s

    async def _retag(self, ids: Sequence[str], rules: matching.Rules) -> None:
        retries = self.registry.conflict_retries
        for attempt in range(1, retries + 1):
            uow = UnitOfWork(self.hapi)
            for sid in ids:
                stored = await uow.read("Patient", sid)
                if stored is None:
                    continue
                keys = matching.block_keys(stored, rules)
                if sorted(set(records.tags(stored, records.BLOCK_SYSTEM))) == keys:
                    continue
                kept = [
                    t
                    for t in stored.get("meta", {}).get("tag", [])
                    if t.get("system") != records.BLOCK_SYSTEM
                ]
                stored["meta"] = {
                    "tag": [*kept, *({"system": records.BLOCK_SYSTEM, "code": k} for k in keys)]
                }
                uow.put(stored)
            try:
                await uow.commit()
                return
            except Conflict:
                if attempt == retries:
                    raise

    async def _already_relinked(self, sid: str) -> bool:
        """Whether this job already re-submitted ``sid``: its AuditEvent (written in the same transaction as
        the record) exists. Then it is counted from that event, not re-submitted (no second AuditEvent)."""
        address = f"rematch:{self.state.id}"
        events = await self.hapi.search(
            "AuditEvent", {"entity": f"Patient/{sid}", "_count": "100"}, max_results=1000
        )
        for ev in events:
            if not any(a.get("network", {}).get("address") == address for a in ev.get("agent", [])):
                continue
            details = [d for ent in ev.get("entity", []) for d in ent.get("detail", [])]
            if any(d.get("type") == "previous-cruid" for d in details):
                self.state.changed += 1
            else:
                self.state.unchanged += 1
            return True
        return False

    async def _relink(self, sid: str) -> None:
        stored = await self.hapi.read("Patient", sid)
        if stored is None:
            return
        before = records.golden_id_of(stored)
        key = records.key_identifier(stored)
        if key is None:
            self.state.errors.append({"source_id": sid, "error": "no identifier gives this record's id"})
            return
        patient = {k: v for k, v in stored.items() if k not in ("id", "meta", "link", "text")}
        actor = Actor(client_id=records.client_of(stored), address=f"rematch:{self.state.id}")
        try:
            result = await self.registry.submit(Submission(patient, actor, target_id=sid, conditional=key))
        except UpstreamError:
            raise
        except RegistryError as exc:
            self.state.errors.append({"source_id": sid, "error": exc.diagnostics})
            return
        if result.golden_id != before:
            self.state.changed += 1
        else:
            self.state.unchanged += 1


def new_state(
    job_id: str, rules: matching.Rules, systems: Sequence[str] = (), applied_by: str = ""
) -> RematchState:
    return RematchState(id=job_id, rules=rules.to_dict(), systems=list(systems), applied_by=applied_by)


def rules_from(source: str | Path | Mapping[str, Any]) -> matching.Rules:
    """``matching.load_rules`` (a YAML path or a parsed mapping); errors are ``matching.RulesError``."""
    return matching.load_rules(source)


__all__ = ["Change", "Plan", "RematchJob", "RematchState", "dry_run", "load_snapshot", "new_state", "plan"]
