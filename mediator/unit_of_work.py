"""One all-or-nothing set of writes to HAPI.

Reads remember the version they saw; writes (updates, deletions) are staged and sent as one FHIR
``transaction`` Bundle with ``If-Match`` on every update (``W/"0"`` for a record read as absent), so a
concurrent change anywhere makes HAPI refuse the whole Bundle and the workflow decides again from fresh
reads. Staged records are seen by later reads and candidate searches of the same unit of work. Details:
``docs/internals.md``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .errors import Conflict
from .fhir_client import HapiClient
from .linking import within_limit
from .records import (
    BLOCK_SYSTEM,
    Resource,
    clone,
    is_source,
    is_subsetted,
    tags,
    version_of,
)
from .tagged_sources import TaggedSources

log = logging.getLogger(__name__)
_SERVER_META = ("versionId", "lastUpdated")  # set by HAPI; never sent back
ABSENT_VERSION = "0"  # If-Match of a record read as absent: HAPI creates it, or refuses if it exists now
# HAPI's refusal of such a record (HAPI-0989), naming it
_NOT_ABSENT = re.compile(r"Trying to update (\w+)/([A-Za-z0-9.-]+)/_history/" + ABSENT_VERSION + r" but")


class KnownRecords:
    """Records as this process last wrote or read them, with their versions, taken by a unit of work as read
    without asking HAPI. Only for records the workflow always writes when it uses them (live golden
    records): the write carries ``If-Match`` with the version held, so a copy gone stale (another replica,
    a curator) makes HAPI refuse the transaction, and the workflow decides again from fresh reads, which
    replace the copy. Held records are private copies, only looked at (:meth:`UnitOfWork.peek`) or cloned
    (:meth:`UnitOfWork.read`)."""

    def __init__(self, keep: Callable[[Resource], bool], capacity: int = 100_000) -> None:
        self._keep = keep
        self.capacity = max(0, capacity)
        self._held: OrderedDict[str, Resource] = OrderedDict()  # "Type/id" -> record with meta.versionId
        self.hits = 0

    def get(self, key: str) -> Resource | None:
        held = self._held.get(key)
        if held is not None:
            self._held.move_to_end(key)
            self.hits += 1
        return held

    def offer(self, key: str, resource: Resource | None, version: str | None = None) -> None:
        """Hold ``resource`` (as read, or as written when ``version`` is the one HAPI gave it) if it is of the
        kind kept; anything else under that key is forgotten."""
        self._held.pop(key, None)
        if resource is None or self.capacity == 0 or not self._keep(resource):
            return
        if version is not None:
            resource = {**resource, "meta": {**resource.get("meta", {}), "versionId": version}}
        if version_of(resource) is None:
            return
        self._held[key] = clone(resource)
        while len(self._held) > self.capacity:
            self._held.popitem(last=False)

    def __len__(self) -> int:
        return len(self._held)


class UnitOfWork:
    def __init__(
        self,
        hapi: HapiClient,
        sources: TaggedSources | None = None,
        known: KnownRecords | None = None,
        *,
        fresh: bool = False,
    ) -> None:
        self._hapi = hapi
        self._sources = sources if sources is not None else TaggedSources(hapi, capacity=0)
        # records taken as read without asking HAPI (unless ``fresh``: after a conflict), kept up to date
        self._known = known
        self._trusted = None if fresh else known
        self.owner: str | None = None  # whose writes :meth:`put` stages now (a shared transaction's member)
        self.owners: dict[str, set[str]] = {}  # "Type/id" -> the owners that staged it
        self._seen_versions: dict[str, str | None] = {}  # "Type/id" -> version read from HAPI (None: absent)
        self._read_cache: dict[str, Resource | None] = {}
        self._staged: dict[str, Resource] = {}  # "Type/id" -> resource to PUT, in staging order
        self.held: set[str] = set()  # "Type/id" staged unchanged by :meth:`hold`, only for its If-Match
        self._deleted: set[str] = set()  # "Type/id" to DELETE (HAPI keeps its history)
        # block key -> its source records in HAPI (None: more than the limit, skipped)
        self._searches: dict[tuple[str, ...], list[Resource] | None] = {}
        self._staged_blocks: dict[str, set[str]] = {}  # block key -> staged source records ("Patient/id")

    async def read(self, resource_type: str, resource_id: str) -> Resource | None:
        """The record as staged, else as read from HAPI (once per unit of work): a private copy to change."""
        resource = await self.peek(resource_type, resource_id)
        return clone(resource) if resource is not None else None

    async def peek(self, resource_type: str, resource_id: str) -> Resource | None:
        """:meth:`read` without the copy, for looking only: the caller must not change what it gets."""
        key = f"{resource_type}/{resource_id}"
        if key in self._staged:
            return self._staged[key]
        if key in self._deleted:
            return None
        if key not in self._read_cache:
            held = self._held(key)
            if held is not None:
                self._remember(key, held)
            else:
                resource = await self._hapi.read(resource_type, resource_id)
                self._remember(key, resource)
                if self._known is not None:
                    self._known.offer(key, resource)
        return self._read_cache[key]

    def _held(self, key: str) -> Resource | None:
        """The record as :class:`KnownRecords` holds it, when it may be taken as read (not ``fresh``)."""
        return self._trusted.get(key) if self._trusted is not None else None

    def assume(self, resource_type: str, resource_id: str, resource: Resource | None) -> None:
        """Take ``resource`` as read without reading it: the view a candidate listing gave in the version HAPI
        holds now, or None for a record believed never stored. A write of it then carries ``If-Match`` with
        that version (``W/"0"``: created only if still absent), so HAPI refuses the transaction if the belief
        was wrong, and the workflow decides again from fresh reads."""
        key = f"{resource_type}/{resource_id}"
        if key not in self._read_cache and key not in self._staged:
            self._remember(key, resource)

    def _remember(self, key: str, resource: Resource | None) -> None:
        self._read_cache[key] = resource
        self._seen_versions.setdefault(key, version_of(resource) if resource else None)

    async def find_sources(self, block_keys: list[str], limit: int) -> list[Resource]:
        """Source records sharing at least one blocking key, staged versions taking precedence (read-only).

        Blocks come from the search cache that :meth:`prefetch_blocks` fills (the registry asks it first,
        one grouped search for a submission's keys); a key not cached is asked alone. A block larger than
        ``limit`` (a birth date shared by thousands) is left out, so the selective keys (phone, national
        id, name) still find the person. Records come from :class:`TaggedSources` (ids and versions
        listed by HAPI, records read only when not held in that version).
        """
        if not block_keys:
            return []
        missing = [key for key in block_keys if (str(limit), key) not in self._searches]
        if missing:  # not prefetched: asked one key each, concurrently
            await asyncio.gather(*(self._search_blocks([key], limit) for key in missing))
        blocks = [self._searches[(str(limit), key)] for key in block_keys]
        oversized = [key for key, block in zip(block_keys, blocks, strict=True) if block is None]
        if oversized:
            # the kinds of key only: a key holds demographics (a birth date, name codes)
            kinds = sorted({key.split(":")[0] for key in oversized})
            log.warning(
                "blocks over the candidate limit skipped",
                extra={"key_kinds": kinds, "blocks": len(oversized), "limit": limit},
            )
        found = within_limit(blocks, limit)
        # views for matching (SUBSETTED), never remembered as reads: nothing stale can be written back
        by_key: dict[str, Resource] = {f"Patient/{r['id']}": r for r in found}
        staged_here = set().union(*(self._staged_blocks.get(k, ()) for k in block_keys))
        for key in [k for k in by_key if (k in self._staged and k not in staged_here) or k in self._deleted]:
            del by_key[key]  # staged without those keys any more, or deleted
        if staged_here:
            for key in [k for k in self._staged if k in staged_here]:  # in staging order, deterministically
                by_key[key] = self._staged[key]
        # shared with the cache, not copied (copying was a third of the registry's CPU in bulk loads): the
        # candidates are only read; anything to change is read again with :meth:`read`, which copies
        return list(by_key.values())

    async def _search_blocks(self, block_keys: list[str], limit: int) -> list[Resource] | None:
        """HAPI's answer for these keys, asked once per unit of work (staged records are overlaid later)."""
        cache_key = (str(limit), *block_keys)
        if cache_key not in self._searches:
            answer = await self._sources.find(block_keys, limit)
            self._searches[cache_key] = _block(answer, limit)
        return self._searches[cache_key]

    async def prefetch_blocks(
        self, key_sets: list[list[str]], limit: int, chunk: int = 400, cap: int = 5000, concurrency: int = 8
    ) -> int:
        """Answer the candidate searches of many records with a few grouped searches (``chunk`` keys each)
        and fill the per-key search cache exactly as :meth:`_search_blocks` would. A search reaching ``cap``
        results (some key of the group is a huge block) is split in halves, down to single keys, which are
        asked as :meth:`find_sources` asks them (``limit + 1`` results at most). Returns the searches made.
        (A bulk batch of 50 rows has ≈ 330 distinct keys: one listing by ``Patient/$tagged-versions``; 60
        keys and 1,000 results were the bounds while searches returned whole resources.)"""
        keys = sorted({k for ks in key_sets for k in ks if (str(limit), k) not in self._searches})
        sem = asyncio.Semaphore(concurrency)
        searches = 0

        async def fetch(group: list[str]) -> None:
            nonlocal searches
            searches += 1
            if len(group) == 1:
                async with sem:
                    await self._search_blocks(group, limit)
                return
            async with sem:
                answer = await self._sources.find(group, cap - 1)
            if answer is None:
                half = len(group) // 2
                await asyncio.gather(fetch(group[:half]), fetch(group[half:]))
                return
            per_key: dict[str, dict[str, Resource]] = {k: {} for k in group}
            sources: set[str] = set()  # looked at once per record, not once per block it is in
            for resource in answer:
                if is_source(resource):
                    sources.add(resource["id"])
                for tag in tags(resource, BLOCK_SYSTEM):
                    if tag in per_key:
                        per_key[tag][resource["id"]] = resource
            for k in group:  # complete blocks: the search returned every record with any of the keys
                self._searches.setdefault((str(limit), k), _block(list(per_key[k].values()), limit, sources))

        await asyncio.gather(*(fetch(keys[i : i + chunk]) for i in range(0, len(keys), chunk)))
        return searches

    async def prefetch(self, resource_type: str, ids: list[str], chunk: int = 50) -> None:
        """Read many records with ``_id`` searches (``chunk`` ids each) into the read cache; absent ones as
        absent. Later :meth:`read` calls then cost nothing; versions seen are remembered as by ``read``."""
        todo = []
        for i in sorted(set(ids)):
            key = f"{resource_type}/{i}"
            if key in self._read_cache:
                continue
            held = self._held(key)
            if held is not None:
                self._remember(key, held)
            else:
                todo.append(i)
        chunks = [todo[k : k + chunk] for k in range(0, len(todo), chunk)]
        answers = await asyncio.gather(  # one response each, not kept by HAPI (no search rows written)
            *(self._hapi.search_once(resource_type, {"_id": ",".join(c)}, max_results=len(c)) for c in chunks)
        )
        for c, found in zip(chunks, answers, strict=True):
            by_id = {r["id"]: r for r in found}
            for i in c:
                key = f"{resource_type}/{i}"
                if key not in self._read_cache:
                    self._remember(key, by_id.get(i))
                    if self._known is not None:
                        self._known.offer(key, by_id.get(i))

    def created_here(self, key: str) -> bool:
        """``key`` ("Type/id") is staged and was never seen in HAPI: this unit of work creates it."""
        return key in self._staged and self._seen_versions.get(key) is None

    def put(self, resource: Resource, owners: list[str] | None = None) -> None:
        """Stage ``resource`` for the commit, staged by :attr:`owner` (or by ``owners``: a resource several
        members of a shared transaction stage together)."""
        key = f"{resource['resourceType']}/{resource['id']}"
        if key in self._deleted:
            raise ValueError(f"{key} is staged for deletion and cannot also be updated")
        if is_subsetted(resource):
            raise ValueError(f"{key} is a partial view from a search (SUBSETTED) and cannot be written")
        self.held.discard(key)  # changed now, not only held
        previous = self._staged.pop(key, None)  # re-staging moves it to the end, after what it may refer to
        if previous is not None:
            for block in _source_blocks(previous):
                self._staged_blocks[block].discard(key)
        self._staged[key] = clone(resource)
        if owners is not None:
            self.owners.setdefault(key, set()).update(owners)
        elif self.owner is not None:
            self.owners.setdefault(key, set()).add(self.owner)
        for block in _source_blocks(resource):
            self._staged_blocks.setdefault(block, set()).add(key)

    async def hold(self, resource_type: str, resource_id: str) -> None:
        """Stage a record the decision depends on but does not change, as read (unless staged already):
        HAPI keeps an unchanged record's version, and its ``If-Match`` refuses the transaction when the
        record changed meanwhile. Nothing is staged for a record that is absent. Kept in :attr:`held` until
        it is staged with a change."""
        key = f"{resource_type}/{resource_id}"
        if key in self._staged:
            return
        resource = await self.read(resource_type, resource_id)
        if resource is not None:
            self.put(resource)
            self.held.add(key)

    def delete(self, resource_type: str, resource_id: str) -> None:
        """Stage the deletion of a record (HAPI keeps its history; a later write creates it again). HAPI
        ignores ``If-Match`` on a DELETE in a transaction (measured with 8.8): the caller stages, with
        ``If-Match``, an update of a record every concurrent change of this one also writes."""
        key = f"{resource_type}/{resource_id}"
        if key in self._staged:
            raise ValueError(f"{key} is staged for an update and cannot also be deleted")
        self._deleted.add(key)

    @property
    def staged(self) -> dict[str, Resource]:
        return self._staged

    def _order(self) -> list[str]:
        """The keys of the transaction's entries, in its order: deletions, then updates."""
        return [*sorted(self._deleted), *self._staged]

    def bundle(self) -> dict[str, Any]:
        entries: list[dict[str, Any]] = [
            {"request": {"method": "DELETE", "url": key}} for key in sorted(self._deleted)
        ]
        for key, resource in self._staged.items():
            request: dict[str, str] = {"method": "PUT", "url": key}
            if key in self._seen_versions:  # read: updated in that version, or created only if still absent
                request["ifMatch"] = f'W/"{self._seen_versions[key] or ABSENT_VERSION}"'
            body = dict(resource)  # staged resources are private copies; only meta is trimmed here
            if "meta" in body:
                body["meta"] = {k: v for k, v in body["meta"].items() if k not in _SERVER_META}
            entries.append({"fullUrl": f"{self._hapi.base_url}/{key}", "resource": body, "request": request})
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

    async def commit(self) -> dict[str, str]:
        """Write everything staged at once; returns "Type/id" -> new version id."""
        if not self._staged and not self._deleted:
            return {}
        try:
            response = await self._hapi.transaction(self.bundle())
        except Conflict as conflict:
            if not await self._deleted_in_hapi(conflict):
                raise
            response = await self._hapi.transaction(self.bundle())
        versions: dict[str, str] = {}
        for key, entry in zip(self._order(), response.get("entry", []), strict=False):
            answer = entry.get("response", {})
            parts = answer.get("location", "").split("/")
            if key in self._deleted:
                self._sources.forget(key.split("/", 1)[1])
                if self._known is not None:
                    self._known.offer(key, None)
                continue
            resource = self._staged[key]
            if "_history" in parts:
                versions[key] = parts[parts.index("_history") + 1]
                if _source_blocks(resource):  # a candidate of later submissions: known in this version
                    self._sources.remember(resource, versions[key], answer.get("lastModified"))
                elif self._known is not None:
                    self._known.offer(key, resource, versions[key])
        return versions

    async def _deleted_in_hapi(self, conflict: Conflict) -> bool:
        """The conflict is a record read as absent whose history ends in a deletion (someone deleted it in
        HAPI directly): it is then written over the deletion's version. False for anything else, which is
        a concurrent change (the workflow decides again from fresh reads)."""
        refused = _NOT_ABSENT.search(conflict.diagnostics)
        if refused is None:
            return False
        key = f"{refused.group(1)}/{refused.group(2)}"
        if key not in self._staged or self._seen_versions.get(key, ABSENT_VERSION) is not None:
            return False
        deleted = await self._hapi.deleted_version(refused.group(1), refused.group(2))
        if deleted is None:
            return False  # created meanwhile: a true conflict
        log.info("record deleted in the FHIR store is written again", extra={"record": key, "over": deleted})
        self._seen_versions[key] = deleted
        return True


def _block(
    answer: list[Resource] | None, limit: int, sources: set[str] | None = None
) -> list[Resource] | None:
    """A block as kept: its source records (``sources``: their ids, when known), or None when more than
    ``limit`` records have the key."""
    if answer is None or len(answer) > limit:
        return None
    if sources is not None:
        return [r for r in answer if r["id"] in sources]
    return [r for r in answer if is_source(r)]


def _source_blocks(resource: Resource) -> list[str]:
    """The blocking keys under which a staged record is a candidate: a source Patient's block tags."""
    if resource.get("resourceType") != "Patient" or not is_source(resource):
        return []
    return tags(resource, BLOCK_SYSTEM)
