"""Login rate limiting shared by replicas: the failed logins are rows in PostgreSQL.

The same rules as :class:`~mediator.admin.throttle.LoginThrottle`, counted in one table
(``client_registry.login_failures``, database of ``CR_LOCKS_DSN``) so a name is locked on every replica at
once; PostgreSQL unreachable: the login is refused (503), never let through unthrottled. Used with
``CR_LOCKS=postgres``. Details: ``docs/internals.md``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
from aiohttp import web

from ..errors import UpstreamUnavailable
from ..pg_locks import DB_ERRORS, PgAdvisoryLocks
from .throttle import too_many

log = logging.getLogger(__name__)

TABLE = "client_registry.login_failures"
_CREATE_LOCK = 0x63725F7468726F74  # one start-up at a time creates the table ("cr_throt")
_CREATE = f"""
CREATE SCHEMA IF NOT EXISTS client_registry;
CREATE TABLE IF NOT EXISTS {TABLE} (kind text NOT NULL, key text NOT NULL, at timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS login_failures_key ON {TABLE} (kind, key, at);
CREATE INDEX IF NOT EXISTS login_failures_at ON {TABLE} (at);
"""
_NOW = "coalesce(to_timestamp($1::float8), clock_timestamp())"  # $1: a test's clock, else PostgreSQL's
# seconds until the name and the address may both try again: the limit-th most recent failure of each, if
# there are that many within the window, leaves the window then
_WAIT = f"""
WITH now AS (SELECT {_NOW} AS t),
recent AS (
    SELECT f.kind, f.at, row_number() OVER (PARTITION BY f.kind ORDER BY f.at DESC) AS n
    FROM {TABLE} f, now
    WHERE ((f.kind = 'user' AND f.key = $2) OR (f.kind = 'address' AND f.key = $3))
      AND f.at > now.t - make_interval(secs => $4)
)
SELECT coalesce(max(extract(epoch FROM r.at + make_interval(secs => $4) - now.t)), 0)::float8
FROM recent r, now
WHERE (r.kind = 'user' AND r.n = $5) OR (r.kind = 'address' AND r.n = $6)
"""
_FAILED = f"""
WITH now AS (SELECT {_NOW} AS t),
pruned AS (DELETE FROM {TABLE} WHERE at <= (SELECT t FROM now) - make_interval(secs => $4))
INSERT INTO {TABLE} (kind, key, at)
SELECT k, v, now.t FROM now, (VALUES ('user', $2), ('address', $3)) AS x(k, v)
"""
_SUCCEEDED = f"DELETE FROM {TABLE} WHERE kind = 'user' AND key = $1"


class PgLoginThrottle:
    """A :class:`~mediator.admin.throttle.Throttle` over one PostgreSQL table, on the pool of ``locks``;
    ``start()`` (after the locks') before use."""

    def __init__(
        self,
        locks: PgAdvisoryLocks,
        *,
        max_per_user: int = 5,
        max_per_address: int = 20,
        window_s: float = 900.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.locks = locks
        self.max_per_user = max_per_user
        self.max_per_address = max_per_address
        self.window_s = window_s
        self.timeout_s = timeout_s
        self.clock = clock  # None: PostgreSQL's clock (tests pass their own)

    async def start(self) -> None:
        try:
            async with self.locks.pool.acquire(timeout=self.timeout_s) as conn, conn.transaction():
                await conn.execute(f"SELECT pg_advisory_xact_lock({_CREATE_LOCK})")
                await conn.execute(_CREATE)
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise UpstreamUnavailable(f"Cannot set up the login throttle table {TABLE}: {exc}") from exc

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.start()  # the pool opens and closes with the locks (their cleanup_ctx comes first)
        yield

    async def check(self, user: str, address: str | None) -> None:
        wait = await self._run(
            "fetchval",
            _WAIT,
            self._now(),
            user.lower(),
            address or "-",
            self.window_s,
            self.max_per_user,
            self.max_per_address,
        )
        if wait and wait > 0:
            raise too_many(wait)

    async def failed(self, user: str, address: str | None) -> None:
        await self._run("execute", _FAILED, self._now(), user.lower(), address or "-", self.window_s)

    async def succeeded(self, user: str) -> None:
        await self._run("execute", _SUCCEEDED, user.lower())

    def _now(self) -> float | None:
        return self.clock() if self.clock is not None else None

    async def _run(self, method: str, sql: str, *args: Any) -> Any:
        try:
            async with self.locks.pool.acquire(timeout=self.timeout_s) as conn:
                return await getattr(conn, method)(sql, *args)
        except (TimeoutError, *DB_ERRORS) as exc:
            log.warning("login throttle database unavailable", extra={"error": type(exc).__name__})
            raise UpstreamUnavailable("The login throttle's database is unavailable; try again.") from exc


def setup(app: web.Application, locks: PgAdvisoryLocks) -> PgLoginThrottle:
    """A shared throttle on the pool of ``locks`` (set up on ``app`` before it)."""
    throttle = PgLoginThrottle(locks)
    app.cleanup_ctx.append(throttle.cleanup_ctx)
    return throttle
