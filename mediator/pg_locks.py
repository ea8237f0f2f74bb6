"""Key locks shared by every mediator replica: PostgreSQL transaction-level advisory locks.

``hold(keys)`` takes every key's lock in one transaction, in one total order (no deadlocks), released
together when the body ends; ``confirm()`` checks the lock session still answers before a HAPI write;
leases (``try_lease``) are session-level locks for long work. Use with ``CR_LOCKS=postgres``.
Timeouts, the lost-connection limitation and leases: ``docs/internals.md``.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from aiohttp import web

from .errors import UpstreamUnavailable
from .settings import Settings

log = logging.getLogger(__name__)
# what a lost, refused or closed lock-database connection raises (InternalClientError: a statement sent while
# the server's notice that it ended the session is being read)
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)
_HELD: contextvars.ContextVar[Any] = contextvars.ContextVar("held_lock_connection", default=None)

# PostgreSQL probes the lock connections of an idle replica after 30 s, then every 10 s, and ends their
# sessions (releasing their locks and leases: a job's, an apply's) after 3 unanswered probes: a replica whose
# host vanished without closing its connections holds nothing for more than ≈ 1 minute (the server's
# default is the operating system's, often 2 hours).
KEEPALIVES = {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3"}

# the array comes sorted from Python; unnest() yields it in order and count() consumes every row
_LOCK_ALL = "SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k"


def key_id(key: str, space: bytes = b"cr-locks") -> int:
    """A stable signed 64-bit integer for a lock key (the first 8 bytes of its BLAKE2b digest)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8, person=space).digest()
    return int.from_bytes(digest, "big", signed=True)


def lease_id(name: str) -> int:
    """The advisory lock of the lease ``name``: a key space apart from record keys."""
    return key_id(name, b"cr-lease")


async def _answers(conn: Any, timeout_s: float) -> bool:
    """One round trip on ``conn``: its session is alive, and with it the advisory locks it holds (a lost
    connection ends the session and releases them)."""
    try:
        await conn.fetchval("SELECT 1", timeout=timeout_s)
    except (TimeoutError, *DB_ERRORS):
        return False
    return True


async def _give_back(pool: Any, conn: Any, undo: str, *args: Any, what: dict[str, Any]) -> None:
    """Release what ``conn``'s session holds with ``undo`` and return it to ``pool``; a lost connection is
    logged, and one where ``undo`` fails is closed (ending the session releases its locks too)."""
    try:
        try:
            lost = conn.is_closed()
        except asyncpg.InterfaceError:  # the pool took back a connection that closed under it
            lost = True
        if lost:
            log.error("lock connection lost while holding locks", extra=what)
        else:
            try:
                await conn.execute(undo, *args)
            except Exception:
                log.warning("locks not released cleanly; closing the connection", extra=what, exc_info=True)
                with contextlib.suppress(asyncpg.InterfaceError):  # the pool took it back as it closed
                    conn.terminate()
    finally:
        await pool.release(conn)


class _PgLease:
    """A session-level advisory lock held on one pooled connection until :meth:`release`."""

    def __init__(self, pool: Any, conn: Any, name: str, timeout_s: float) -> None:
        self._pool, self._conn, self.name, self._timeout_s = pool, conn, name, timeout_s

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            unlock = "SELECT pg_advisory_unlock($1)"
            await _give_back(self._pool, conn, unlock, lease_id(self.name), what={"lease": self.name})

    async def held(self) -> bool:
        """Not released, and the session holding the advisory lock is alive."""
        return self._conn is not None and await _answers(self._conn, self._timeout_s)


class PgAdvisoryLocks:
    """A :class:`~mediator.locks.LockManager` over PostgreSQL advisory locks; ``start()`` before use."""

    shared = True

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 20,
        acquire_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.acquire_timeout_s = acquire_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._pool: Any = None

    async def start(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                timeout=self.connect_timeout_s,
                command_timeout=self.acquire_timeout_s + 5,
                server_settings=KEEPALIVES,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise UpstreamUnavailable(f"Cannot reach the lock database: {exc}") from exc

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> Any:
        """The connection pool, for other short statements on the lock database (the login throttle)."""
        if self._pool is None:
            raise RuntimeError("PgAdvisoryLocks.start() was not called")
        return self._pool

    async def cleanup_ctx(self, app: web.Application) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.close()

    async def ping(self) -> None:
        """One round trip to the lock database (``/ready``); 503 when it cannot be reached."""
        try:
            async with self.pool.acquire(timeout=self.connect_timeout_s) as conn:
                await conn.fetchval("SELECT 1", timeout=self.connect_timeout_s)
        except (TimeoutError, *DB_ERRORS) as exc:
            raise UpstreamUnavailable(f"Cannot reach the lock database: {exc}") from exc

    async def try_lease(self, name: str) -> _PgLease | None:
        """``pg_try_advisory_lock`` on a connection kept for the lease (one fewer for submissions while
        it is held); None at once when another session (another replica) holds it."""
        pool = self.pool
        conn = await self._acquire()
        try:
            taken = await conn.fetchval("SELECT pg_try_advisory_lock($1)", lease_id(name))
        except DB_ERRORS as exc:
            await pool.release(conn)
            raise UpstreamUnavailable(f"Lock database error: {exc}") from exc
        if not taken:
            await pool.release(conn)
            return None
        return _PgLease(pool, conn, name, self.connect_timeout_s)

    async def _acquire(self) -> Any:
        """A pooled connection within ``acquire_timeout_s`` (503 when none is free or the database is
        unreachable)."""
        try:
            return await self.pool.acquire(timeout=self.acquire_timeout_s)
        except TimeoutError as exc:
            raise UpstreamUnavailable("All lock connections are busy; retry the request.") from exc
        except (OSError, asyncpg.PostgresError) as exc:
            raise UpstreamUnavailable(f"Cannot reach the lock database: {exc}") from exc

    @asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        ids = sorted({key_id(k) for k in keys})
        conn = await self._acquire()
        try:
            try:
                await conn.execute(f"BEGIN; SET LOCAL lock_timeout = {int(self.acquire_timeout_s * 1000)}")
                await conn.fetchval(_LOCK_ALL, ids)
            except asyncpg.LockNotAvailableError as exc:
                raise UpstreamUnavailable("Timed out waiting for a record lock; retry the request.") from exc
            except DB_ERRORS as exc:
                raise UpstreamUnavailable(f"Lock database error: {exc}") from exc
            held = _HELD.set(conn)
            try:
                yield
            finally:
                _HELD.reset(held)
        finally:  # rolling back releases every lock of the transaction
            await _give_back(self._pool, conn, "ROLLBACK", what={"keys": len(ids)})

    async def confirm(self) -> None:
        """503 unless the locks this task holds are still held: their connection answers (a lost
        connection has released them, and another replica may be deciding the same person now)."""
        conn = _HELD.get()
        if conn is not None and not await _answers(conn, self.connect_timeout_s):
            log.warning("record locks lost before writing")
            raise UpstreamUnavailable("The record locks were lost; nothing was written; retry.")


def setup(app: web.Application, settings: Settings) -> PgAdvisoryLocks:
    """Create the lock manager of ``settings`` and open/close its pool with the application."""
    if not settings.locks_dsn:
        raise ValueError("CR_LOCKS=postgres needs CR_LOCKS_DSN (postgresql://user:password@host:port/db)")
    locks = PgAdvisoryLocks(
        settings.locks_dsn,
        pool_size=settings.locks_pool_size,
        acquire_timeout_s=settings.locks_timeout_s,
    )
    app.cleanup_ctx.append(locks.cleanup_ctx)
    return locks
