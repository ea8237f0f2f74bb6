"""Async client for the HAPI FHIR store: one ``aiohttp.ClientSession`` per app, a timeout on every call.

Upstream failures become :mod:`mediator.errors` exceptions: connection refused or HAPI 5xx → 503,
timeout → 504, a stale ``If-Match`` (409/412) → retryable :class:`Conflict`. Every call is reported
to the current :class:`CallRecorder` (if any) so the OpenHIM envelope can list one orchestration per call.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import numpy as np
import orjson

from .errors import Conflict, NotFound, Unprocessable, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from .identifiers import is_fhir_id
from .metrics import Metrics

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
SINGLE_RESPONSE_MAX = 1000  # HAPI's largest page (hapi.max-page-size); a no-store search has one page
# search parameters: a dict, or (name, value) pairs when a parameter repeats (authored-on=ge…&authored-on=le…)
Params = Mapping[str, str] | Sequence[tuple[str, str]]


@dataclass
class CallRecord:
    name: str
    method: str
    url: str
    request_body: str | None
    started: datetime
    status: int | None = None
    response_body: str | None = None
    finished: datetime | None = None
    error: str | None = None


@dataclass
class CallRecorder:
    """Collects the upstream calls made while handling one request (for OpenHIM orchestrations)."""

    calls: list[CallRecord] = field(default_factory=list)


current_recorder: contextvars.ContextVar[CallRecorder | None] = contextvars.ContextVar(
    "current_recorder", default=None
)


def _now() -> datetime:
    return datetime.now(UTC)


class HapiClient:
    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, timeout_s: float, connect_s: float
    ) -> None:
        self._session = session
        self.metrics: Metrics | None = None  # set by the app: timings and failures of the calls
        # fixed: another store or other timeouts (OpenHIM console) get a new client (mediator/store.py)
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_s)

    async def _call(
        self,
        name: str,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        accept_status: tuple[int, ...] = (),
    ) -> tuple[int, dict[str, Any] | None]:
        url = path if path.startswith("http") else f"{self.base_url}/{path.lstrip('/')}"
        if params:
            url = f"{url}?{urlencode(params)}"
        data = orjson.dumps(body, default=_plain) if body is not None else None
        # uncompressed: HAPI runs beside the mediator, and gzip cost both sides CPU (≈ 4 % of HAPI's time
        # answering a bulk load's candidate searches went to compressing them)
        req_headers = {"Accept": FHIR_JSON, "Accept-Encoding": "identity", **(headers or {})}
        if data is not None:
            req_headers["Content-Type"] = FHIR_JSON
        recorder = current_recorder.get()
        record = CallRecord(
            name=name,
            method=method,
            url=url,
            request_body=data.decode() if data is not None and recorder is not None else None,
            started=_now(),
        )
        if recorder is not None:
            recorder.calls.append(record)
        t0 = time.perf_counter()
        try:
            async with self._session.request(
                method, url, data=data, headers=req_headers, timeout=self._timeout
            ) as resp:
                raw = await resp.read()
                status = resp.status
        except TimeoutError as exc:
            self._failed(name, "timeout")
            record.error = "timeout"
            record.finished = _now()
            log.warning("hapi call timed out", extra={"call": name, "method": method})
            raise UpstreamTimeout(f"The FHIR store did not answer in time ({name}).") from exc
        except aiohttp.ClientError as exc:
            self._failed(name, "connection")
            record.error = type(exc).__name__
            record.finished = _now()
            log.warning("hapi call failed", extra={"call": name, "error": type(exc).__name__})
            raise UpstreamUnavailable(f"The FHIR store is unavailable ({name}).") from exc
        record.status, record.finished = status, _now()
        if self.metrics is not None:
            self.metrics.store_seconds.labels(name).observe(time.perf_counter() - t0)
        if recorder is not None:  # the orchestration shown in OpenHIM
            record.response_body = raw.decode("utf-8", errors="replace")
        log.debug("hapi %s %s -> %s in %.1f ms", method, name, status, (time.perf_counter() - t0) * 1000)
        payload = _parse(raw)
        if status in accept_status or 200 <= status < 300:
            return status, payload
        diagnostics = _diagnostics(payload) or f"HTTP {status}"
        if status in (409, 412):
            raise Conflict(f"Concurrent change in the FHIR store: {diagnostics}")
        if status == 404 or status == 410:
            raise NotFound(f"Not found in the FHIR store ({name}).")
        if status >= 500 or status == 429:
            self._failed(name, "server_error")
            raise UpstreamUnavailable(f"The FHIR store failed ({name}): HTTP {status}.")
        raise Unprocessable(f"The FHIR store rejected the request ({name}): {diagnostics}")

    def _failed(self, call: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.store_failures.labels(call, reason).inc()

    async def read(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The record, or None when it does not exist. An id that is not a FHIR id names no record (and
        never goes into the URL, where ``x/_history/1`` or ``x?…`` would read something else)."""
        if not is_fhir_id(resource_id):
            return None
        status, payload = await self._call(
            f"read {resource_type}", "GET", f"{resource_type}/{resource_id}", accept_status=(404, 410)
        )
        return payload if status == 200 else None

    async def search(
        self, resource_type: str, params: Params, *, max_results: int = 1000
    ) -> list[dict[str, Any]]:
        """Run a search and follow ``next`` links until ``max_results`` resources were read."""
        results: list[dict[str, Any]] = []
        _, bundle = await self._call(f"search {resource_type}", "GET", resource_type, params=params)
        while bundle is not None:
            for entry in bundle.get("entry", []):
                resource = entry.get("resource")
                if resource and entry.get("search", {}).get("mode", "match") == "match":
                    results.append(resource)
            next_url = next(
                (lnk["url"] for lnk in bundle.get("link", []) if lnk.get("relation") == "next"), None
            )
            if next_url is None or len(results) >= max_results:
                break
            _, bundle = await self._call(f"search {resource_type} (next page)", "GET", self._local(next_url))
        return results[:max_results]

    async def search_once(
        self, resource_type: str, params: Params, *, max_results: int
    ) -> list[dict[str, Any]]:
        """A search answered in one response and not kept by HAPI (``Cache-Control: no-store``): no paging,
        at most ``max_results`` (≤ :data:`SINGLE_RESPONSE_MAX`) resources — HAPI skips writing the search
        and its result ids to its database (about 30 % less time for the registry's candidate searches at
        100k records). For callers that only need to know whether there are more than ``max_results - 1``."""
        if not 0 < max_results <= SINGLE_RESPONSE_MAX:
            raise ValueError(f"max_results must be 1..{SINGLE_RESPONSE_MAX}")
        pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
        pairs = [(k, v) for k, v in pairs if k != "_count"] + [("_count", str(max_results))]
        _, bundle = await self._call(
            f"search {resource_type}",
            "GET",
            resource_type,
            params=pairs,
            headers={"Cache-Control": f"no-store, max-results={max_results}"},
        )
        entries = (bundle or {}).get("entry", [])
        matches = [e.get("resource") for e in entries if e.get("search", {}).get("mode", "match") == "match"]
        return [r for r in matches if r][:max_results]

    async def operation(self, path: str, params: Mapping[str, str | int]) -> dict[str, Any] | None:
        """``POST {path}`` (e.g. ``Patient/$tagged-versions``) with its parameters as a ``Parameters``
        resource (no URL length limit): the JSON answer."""
        body = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": k, "valueInteger" if isinstance(v, int) else "valueString": v}
                for k, v in params.items()
            ],
        }
        _, payload = await self._call(f"operation {path}", "POST", path, body=body)
        return payload

    async def pages(self, resource_type: str, params: dict[str, str]) -> AsyncIterator[list[dict[str, Any]]]:
        """Run a search and yield its result pages one at a time (``_count`` bounds a page)."""
        _, bundle = await self._call(f"search {resource_type}", "GET", resource_type, params=params)
        while bundle is not None:
            yield [
                e["resource"]
                for e in bundle.get("entry", [])
                if e.get("resource") and e.get("search", {}).get("mode", "match") == "match"
            ]
            next_url = next(
                (lnk["url"] for lnk in bundle.get("link", []) if lnk.get("relation") == "next"), None
            )
            if next_url is None:
                break
            _, bundle = await self._call(f"search {resource_type} (next page)", "GET", self._local(next_url))

    async def count(self, resource_type: str, params: Params) -> int:
        pairs = list(params.items()) if isinstance(params, Mapping) else list(params)
        _, bundle = await self._call(
            f"count {resource_type}", "GET", resource_type, params=[*pairs, ("_summary", "count")]
        )
        return int((bundle or {}).get("total", 0))

    async def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        # Snapshot mode: each written resource's meta.tag is exactly what we send (HAPI would otherwise keep
        # old tags, e.g. blocking keys of a name that was corrected).
        _, payload = await self._call(
            "transaction", "POST", "", body=bundle, headers={"X-Meta-Snapshot-Mode": "TAG"}
        )
        if payload is None:
            raise UpstreamUnavailable("The FHIR store answered a transaction without a body.")
        return payload

    async def deleted_version(self, resource_type: str, resource_id: str) -> str | None:
        """The version of the deletion when the record's latest version is one (HAPI keeps a deleted record's
        history and refuses to create it again as new), else None."""
        entries = await self._deletion_history(resource_type, resource_id, 1)
        if not entries:
            return None
        return entries[0].get("request", {}).get("url", "").rpartition("/_history/")[2] or None

    async def before_deletion(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        """The record as it was just before its deletion, when its latest version is a deletion (HAPI keeps
        the history of a deleted record); else None (never stored, or not deleted)."""
        entries = await self._deletion_history(resource_type, resource_id, 2)
        before = entries[1].get("resource") if len(entries) > 1 else None
        return before if isinstance(before, dict) else None

    async def _deletion_history(
        self, resource_type: str, resource_id: str, count: int
    ) -> list[dict[str, Any]]:
        """The record's ``count`` latest history entries, newest first, when the newest is its deletion; else
        none (never stored, not deleted, or not a FHIR id)."""
        if not is_fhir_id(resource_id):
            return []
        _, bundle = await self._call(
            f"history {resource_type}",
            "GET",
            f"{resource_type}/{resource_id}/_history",
            params={"_count": str(count)},
            headers={"Cache-Control": "no-store"},
            accept_status=(404, 410),
        )
        entries: list[dict[str, Any]] = (bundle or {}).get("entry", [])
        deleted = bool(entries) and entries[0].get("request", {}).get("method") == "DELETE"
        return entries if deleted else []

    async def metadata(self) -> dict[str, Any] | None:
        _, payload = await self._call("metadata", "GET", "metadata")
        return payload

    def _local(self, url: str) -> str:
        """HAPI builds paging links from its own idea of its address; keep our base URL."""
        parts = urlsplit(url)
        base_path = urlsplit(self.base_url).path
        path = parts.path[len(base_path) :] if parts.path.startswith(base_path) else parts.path
        return f"{self.base_url}/{path.lstrip('/')}" + (f"?{parts.query}" if parts.query else "")


def _diagnostics(payload: dict[str, Any] | None) -> str | None:
    if not payload or payload.get("resourceType") != "OperationOutcome":
        return None
    return "; ".join(i.get("diagnostics", i.get("code", "")) for i in payload.get("issue", []))


async def wait_until_ready(client: HapiClient, timeout_s: float) -> None:
    """Poll the store's capability statement until it answers (used at start-up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.metadata()
            return
        except UpstreamError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)  # poll interval while HAPI boots


def _parse(raw: bytes) -> dict[str, Any] | None:
    """HAPI's JSON answer (orjson: a bulk batch parses tens of thousands of candidate records); None when the
    body is empty or not a JSON object (an HTML error page of a proxy)."""
    if not raw.lstrip().startswith(b"{"):
        return None
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) else None


def _plain(value: Any) -> Any:
    """What orjson cannot write itself: numpy scalars (scores) as Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
