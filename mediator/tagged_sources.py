"""Source records by blocking tag, read through a cache of the records already seen, checked by version.

HAPI lists which records carry the tags and in which version (``Patient/$tagged-versions``, an operation
of the project's HAPI launcher); only records not held in that version are read. What is returned is a
copy labelled ``SUBSETTED``, never written back. Without the operation, a ``_tag`` search gives the same
answers. Why and how: ``docs/internals.md``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from .errors import Unprocessable
from .fhir_client import SINGLE_RESPONSE_MAX, HapiClient
from .records import BLOCK_SYSTEM, Resource, subsetted

log = logging.getLogger(__name__)

OPERATION = "Patient/$tagged-versions"
OPERATION_MAX = 5000  # hapi-server TaggedVersionsProvider.MAX
UNKNOWN_OPERATION = "does not know how to handle"  # HAPI's 400 for an operation it does not have
SEARCH_KEYS = 60  # tags per ``_tag`` search without the operation (URL length)
READ_CHUNK = 80  # ids per ``_id`` search (URL length)


class TaggedSources:
    """The records of one store, the one ``hapi`` calls: a new store gets a new cache (mediator/store.py)."""

    def __init__(self, hapi: HapiClient, capacity: int = 200_000) -> None:
        self._hapi = hapi
        self.capacity = max(0, capacity)
        self._cache: OrderedDict[str, tuple[str, Resource]] = OrderedDict()  # id -> (version, view)
        self._operation = True  # False once the server is known not to have it
        self.hits = self.reads = 0

    async def find(self, block_keys: list[str], limit: int) -> list[Resource] | None:
        """The Patients tagged with any of the keys, each as HAPI holds it now, in HAPI's search order;
        None when more than ``limit`` carry them (then none is read)."""
        if self._operation:
            try:
                return await self._find(_tag_list(block_keys), limit)
            except Unprocessable as exc:
                if UNKNOWN_OPERATION not in exc.diagnostics:
                    raise
                self._operation = False
                log.warning("the FHIR store has no %s: candidates are searched by _tag", OPERATION)
        return await self._search(block_keys, limit)

    async def _search(self, block_keys: list[str], limit: int) -> list[Resource] | None:
        """:meth:`find` by ``_tag`` searches of whole resources (a FHIR server without the operation)."""
        most = min(limit + 1, SINGLE_RESPONSE_MAX)
        found: dict[str, Resource] = {}
        for start in range(0, len(block_keys), SEARCH_KEYS):
            answer = await self._hapi.search_once(
                "Patient", {"_tag": _tag_list(block_keys[start : start + SEARCH_KEYS])}, max_results=most
            )
            if len(answer) >= most:  # more than the limit, or as many as one answer holds: unknown
                return None
            found.update((r["id"], subsetted(r)) for r in answer)
        return None if len(found) > limit else list(found.values())

    async def _find(self, tag: str, limit: int) -> list[Resource] | None:
        most = min(limit + 1, OPERATION_MAX)
        listed = await self._hapi.operation(OPERATION, {"tag": tag, "max": most})
        versions: list[tuple[str, str]] = [(str(i), str(v)) for i, v in (listed or {}).get("ids", [])]
        if len(versions) >= most:  # more than the limit, or as many as one answer holds: unknown
            return None
        out: dict[str, Resource] = {}
        stale: list[str] = []
        for rid, version in versions:
            held = self._cache.get(rid)
            if held is not None and held[0] == version:
                self._cache.move_to_end(rid)
                out[rid] = held[1]
            else:
                stale.append(rid)
        self.hits += len(versions) - len(stale)
        self.reads += len(stale)
        chunks = [stale[k : k + READ_CHUNK] for k in range(0, len(stale), READ_CHUNK)]
        answers = await asyncio.gather(
            *(self._hapi.search_once("Patient", {"_id": ",".join(c)}, max_results=len(c)) for c in chunks)
        )
        for resource in (r for answer in answers for r in answer):
            view = subsetted(resource)
            self._keep(view)
            out[view["id"]] = view
        # listing order; a record deleted between the two requests is left out
        return [out[rid] for rid, _ in versions if rid in out]

    def remember(self, resource: Resource, version: str, last_updated: str | None = None) -> None:
        """A source record this process has just written, in the version HAPI gave it."""
        meta = {**resource.get("meta", {}), "versionId": version}
        if last_updated:
            meta["lastUpdated"] = last_updated
        self._keep(subsetted(_as_stored({**resource, "meta": meta})))

    def forget(self, resource_id: str) -> None:
        """A source record this process has just deleted: nothing of it is held any more."""
        self._cache.pop(resource_id, None)

    def _keep(self, view: Resource) -> None:
        """Hold ``view``."""
        if self.capacity == 0:
            return
        version = view.get("meta", {}).get("versionId")
        if not isinstance(version, str):
            return
        self._cache[view["id"]] = (version, view)
        self._cache.move_to_end(view["id"])
        while len(self._cache) > self.capacity:
            self._cache.popitem(last=False)

    def __len__(self) -> int:
        return len(self._cache)


def _as_stored(value: Any) -> Any:
    """JSON as HAPI stores it: empty objects and arrays left out (HAPI drops empty elements)."""
    if isinstance(value, dict):
        kept = {k: _as_stored(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [v for v in map(_as_stored, value) if v not in ({}, [])]
    return value


def _tag_list(block_keys: list[str]) -> str:
    return ",".join(f"{BLOCK_SYSTEM}|{key}" for key in block_keys)
