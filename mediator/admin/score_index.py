"""The review score as a HAPI search parameter, so HAPI sorts and pages the review queue.

``SearchParameter/cr-review-score`` (and ``cr-review-candidate``) are installed when the mediator starts
and the open review Tasks HAPI has not indexed are written again (:func:`install`); until then the queue
sorts in memory. :class:`ScoreIndex` (one per app) knows whether the install is done in the FHIR store in
force. Details:
``docs/internals.md``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from .. import records
from ..errors import Conflict, RegistryError, Unprocessable
from ..fhir_client import HapiClient
from ..instants import instant
from ..review import CANDIDATE_SEARCH, OPEN, POSSIBLE_DUPLICATE, POTENTIAL_MATCH

log = logging.getLogger(__name__)

SP_ID = "cr-review-score"
CODE = "review-score"
# HAPI stores number index values with two decimals (measured: 5.9858, 5.985 and 5.9889 sorted as equal);
# scores carry four, so the index holds score × 10,000.
SCALE = 10_000
EXPRESSION = f"(Task.input.where(type.text = 'score').value.ofType(decimal) * {SCALE})"
SEARCH_PARAMETER: dict[str, Any] = {
    "resourceType": "SearchParameter",
    "id": SP_ID,
    "url": f"{records.NS}:SearchParameter/{CODE}",
    "name": "review-score",
    "status": "active",
    "description": "Score of a client-registry review Task (input typed 'score'); sorts the review queue.",
    "code": CODE,
    "base": ["Task"],
    "type": "number",
    "expression": EXPRESSION,
}
CANDIDATE_SP_ID = "cr-review-candidate"
CANDIDATE = CANDIDATE_SEARCH
CANDIDATE_PARAMETER: dict[str, Any] = {
    "resourceType": "SearchParameter",
    "id": CANDIDATE_SP_ID,
    "url": f"{records.NS}:SearchParameter/{CANDIDATE}",
    "name": "review-candidate",
    "status": "active",
    "description": "The other golden record of a client-registry review Task (input typed 'candidate').",
    "code": CANDIDATE,
    "base": ["Task"],
    "type": "reference",
    "target": ["Patient"],
    "expression": "Task.input.where(type.text = 'candidate').value.ofType(Reference)",
}
PARAMETERS = (SEARCH_PARAMETER, CANDIDATE_PARAMETER)
LOWEST = "ge-10000000000"  # every (scaled) score the matcher can give (weights sum to a few dozen at most)
BATCH = 100  # ids per search URL (200 ids overflow the request line)


class ScoreIndex:
    """Whether the parameters are installed in the FHIR store in force, and the install running in the
    background: one per app (``SCORE_INDEX``), :meth:`reset` when the app changes store (the OpenHIM console
    may change it live: ``FhirStore.on_change``, mediator/store.py)."""

    def __init__(self) -> None:
        self._ready = False
        self._running: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._generation = 0  # one per store: an install for an earlier one does not make this one ready
        self._cancelled: set[asyncio.Task[None]] = set()  # installs of earlier stores, until they end

    def is_ready(self) -> bool:
        return self._ready

    def forget(self) -> None:
        """The store lost the parameter (e.g. a new database behind the same URL): install again."""
        self._ready = False

    def start(self, hapi: HapiClient) -> None:
        """Start :meth:`install` in the background unless it is done or running."""
        if self._ready or (self._running is not None and not self._running.done()):
            return
        self._running = asyncio.get_running_loop().create_task(self._install_logged(hapi))

    def reset(self) -> None:
        """The app works on another store now: what was known of the old one is forgotten, its install
        cancelled (awaited by :meth:`stop`)."""
        self._generation += 1
        self._ready = False
        self._lock = asyncio.Lock()
        if self._running is not None and not self._running.done():
            self._running.cancel()
            self._cancelled.add(self._running)
            self._running.add_done_callback(self._cancelled.discard)
        self._running = None

    async def stop(self) -> None:
        """Cancel this app's install, if one runs."""
        running = [t for t in (self._running, *self._cancelled) if t is not None and not t.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._running = None

    async def install(self, hapi: HapiClient) -> int:
        """:func:`install`, one at a time (start-up and a caller may both ask); then ready, unless the app
        changed store meanwhile."""
        generation = self._generation
        async with self._lock:
            rewritten = await install(hapi)
            if generation == self._generation:
                self._ready = True
            return rewritten

    async def _install_logged(self, hapi: HapiClient) -> None:
        try:
            await self.install(hapi)
        except RegistryError as exc:
            log.warning("review-score search parameter not installed yet", extra={"error": exc.diagnostics})


SCORE_INDEX = web.AppKey("score_index", ScoreIndex)


def _same(stored: dict[str, Any] | None, wanted: dict[str, Any]) -> bool:
    return stored is not None and all(
        stored.get(k) == wanted[k] for k in ("code", "base", "type", "expression", "status")
    )


async def install(hapi: HapiClient) -> int:
    """Install the parameters (idempotent) and index the open review Tasks; returns how many were rewritten.

    When the candidate parameter is new, every open review Task is rewritten (the score index cannot tell
    which Tasks lack the candidate index); otherwise the Tasks the score index does not find."""
    stored = await asyncio.gather(*(hapi.read("SearchParameter", sp["id"]) for sp in PARAMETERS))
    changed = [sp for sp, old in zip(PARAMETERS, stored, strict=True) if not _same(old, sp)]
    if changed:
        entries = [
            {"resource": sp, "request": {"method": "PUT", "url": f"SearchParameter/{sp['id']}"}}
            for sp in changed
        ]
        try:
            await hapi.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        except Conflict:  # another replica (or start-up) wrote them at the same moment
            for sp in changed:
                if not _same(await hapi.read("SearchParameter", sp["id"]), sp):
                    raise
        log.info("installed search parameters", extra={"search_parameters": [sp["id"] for sp in changed]})
    everything = any(sp is CANDIDATE_PARAMETER for sp in changed)
    rewritten = 0
    for _ in range(5):
        missing = await unindexed_open_tasks(hapi, everything=everything)
        everything = False
        if not missing:
            return rewritten
        for i in range(0, len(missing), BATCH):
            try:
                await _touch(hapi, missing[i : i + BATCH])
                rewritten += len(missing[i : i + BATCH])
            except Conflict:
                pass  # decided or re-raised meanwhile; the next pass reads them again
    raise Conflict("Review Tasks kept changing while they were being indexed; try again.")


async def unindexed_open_tasks(hapi: HapiClient, everything: bool = False) -> list[dict[str, Any]]:
    """Open review Tasks with a score that the ``review-score`` index does not know (yet); all of them
    with ``everything``."""
    codes = ",".join(f"{records.REVIEW_TYPE_SYSTEM}|{k}" for k in (POTENTIAL_MATCH, POSSIBLE_DUPLICATE))
    base = {"status": OPEN, "code": codes}
    known: set[str] = set()
    if not everything:
        try:
            counts = await asyncio.gather(
                hapi.count("Task", base), hapi.count("Task", {**base, CODE: LOWEST})
            )
            if counts[0] == counts[1]:  # two counts instead of reading every open Task
                return []
            indexed = await hapi.search(
                "Task", {**base, CODE: LOWEST, "_elements": "id", "_count": "1000"}, max_results=1_000_000
            )
            known = {t["id"] for t in indexed}
        except Unprocessable:  # the store does not know the parameter: nothing is indexed
            pass
    open_tasks = await hapi.search(
        "Task", {**base, "_elements": "id,input", "_count": "1000"}, max_results=1_000_000
    )
    return [
        t
        for t in open_tasks
        if t["id"] not in known and any(i.get("type", {}).get("text") == "score" for i in t.get("input", []))
    ]


async def _touch(hapi: HapiClient, tasks: list[dict[str, Any]]) -> None:
    full = await hapi.search(
        "Task", {"_id": ",".join(t["id"] for t in tasks), "_count": str(len(tasks))}, max_results=len(tasks)
    )
    now = instant()
    entries = []
    for task in full:
        if task.get("status") != OPEN:
            continue
        version = task.get("meta", {}).get("versionId")
        task = {k: v for k, v in task.items() if k != "meta"}
        task["lastModified"] = now
        entries.append(
            {
                "resource": task,
                "request": {"method": "PUT", "url": f"Task/{task['id']}", "ifMatch": f'W/"{version}"'},
            }
        )
    if entries:
        await hapi.transaction({"resourceType": "Bundle", "type": "transaction", "entry": entries})
