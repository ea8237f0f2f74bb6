"""A reverse proxy for tests that widens the race window of HAPI transactions, without sleeps or hooks.

Put it between mediator processes and HAPI (``CR_HAPI_URL=proxy.url``). It forwards every request as is, but
holds each transaction — ``POST`` of a ``Bundle`` to the FHIR base — until a second transaction is pending too
(then both go on at once) or ``hold_s`` passes (a bounded wait on an event: a barrier, not a pause). A
submission searches for candidates before it writes, so two submissions that are not kept apart by a lock
both search, find nothing, and then both write: two golden records for one person. Submissions that are kept
apart never have two transactions pending at once, so the proxy never pairs them (``stats.pairs == 0``).

Runs its own event loop in a thread, so blocking code (fixtures, ``urllib``) and the tests' own loop can use
it alike. ``with PairingProxy(upstream) as proxy: ... proxy.url``; ``proxy.reset()`` starts new counts.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

# not forwarded: hop-by-hop headers, and the ones aiohttp sets itself for the body it sends
_SKIP_REQUEST = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}
_SKIP_RESPONSE = {"content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass
class Stats:
    transactions: int = 0  # transaction POSTs seen
    pairs: int = 0  # times a pending transaction was released because a second one arrived
    alone: int = 0  # transactions released after hold_s with no partner
    partner_waits_s: list[float] = field(default_factory=list)  # how long the first of each pair waited
    max_concurrent: int = 0  # most transactions between arrival and HAPI's answer at once
    _concurrent: int = 0


class PairingProxy:
    def __init__(self, upstream: str, *, hold_s: float = 1.0) -> None:
        parts = urlsplit(upstream.rstrip("/"))
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.base_path = parts.path  # e.g. /fhir: a POST here is a transaction (or batch)
        self.hold_s = hold_s
        self.stats = Stats()
        self.url = ""
        self._waiting: tuple[asyncio.Event, float] | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="pairing-proxy", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    def reset(self) -> None:
        """New counts (call while no request is in flight)."""
        self.stats = Stats()

    # -- lifecycle ----------------------------------------------------------------------------------

    def __enter__(self) -> PairingProxy:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise RuntimeError("the pairing proxy did not start") from self._error
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:
            self._error = exc
        self._ready.set()
        if self._error is None:
            self._loop.run_forever()
        self._loop.run_until_complete(self._stop())
        self._loop.close()

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,  # bodies pass through as HAPI sent them, Content-Encoding included
        )
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}{self.base_path}"

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- forwarding ---------------------------------------------------------------------------------

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        transaction = request.method == "POST" and request.path.rstrip("/") == self.base_path
        if transaction:
            transaction = _is_bundle(body)
        stats = self.stats
        if transaction:
            stats.transactions += 1
            stats._concurrent += 1
            stats.max_concurrent = max(stats.max_concurrent, stats._concurrent)
            await self._hold(stats)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in _SKIP_REQUEST}
            async with self._session.request(
                request.method, self.origin + request.path_qs, headers=headers, data=body
            ) as resp:
                payload = await resp.read()
                out = {k: v for k, v in resp.headers.items() if k.lower() not in _SKIP_RESPONSE}
                return web.Response(status=resp.status, body=payload, headers=out)
        finally:
            if transaction:
                stats._concurrent -= 1

    async def _hold(self, stats: Stats) -> None:
        """Wait for a partner transaction, at most ``hold_s``; release a waiting one if there is one."""
        if self._waiting is not None:
            event, since = self._waiting
            self._waiting = None
            stats.pairs += 1
            stats.partner_waits_s.append(time.monotonic() - since)
            event.set()
            return
        event = asyncio.Event()
        self._waiting = (event, time.monotonic())
        try:
            await asyncio.wait_for(event.wait(), self.hold_s)
        except TimeoutError:
            stats.alone += 1
        finally:
            if self._waiting is not None and self._waiting[0] is event:
                self._waiting = None


def _is_bundle(body: bytes) -> bool:
    try:
        resource = json.loads(body)
    except ValueError:
        return False
    return isinstance(resource, dict) and resource.get("resourceType") == "Bundle"
