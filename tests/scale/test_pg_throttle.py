"""The login throttle replicas share (``CR_LOCKS=postgres``): failed logins are rows in PostgreSQL, so two
throttles on one database (two replicas) count them together. A test clock stands in for PostgreSQL's."""

from __future__ import annotations

import uuid

import asyncpg  # type: ignore[import-untyped]
import pytest

from mediator.admin.pg_throttle import TABLE, PgLoginThrottle
from mediator.admin.throttle import TooManyAttempts
from mediator.errors import UpstreamUnavailable
from mediator.pg_locks import PgAdvisoryLocks

pytestmark = pytest.mark.postgres


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pair(pg_dsn):
    """Two throttles (as two replicas would have) on one database, with one test clock."""
    clock = Clock()
    pools = [PgAdvisoryLocks(pg_dsn, pool_size=2) for _ in range(2)]
    throttles = [
        PgLoginThrottle(locks, max_per_user=3, max_per_address=5, window_s=60, clock=clock) for locks in pools
    ]
    try:
        for locks, throttle in zip(pools, throttles, strict=True):
            await locks.start()
            await throttle.start()
        yield throttles, clock
    finally:
        for locks in pools:
            await locks.close()


def _name() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


def _address() -> str:
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


async def test_failures_on_either_replica_lock_the_name_on_both_until_the_window_passes(pair):
    (one, two), clock = pair
    name, address = _name(), _address()
    await one.failed(name, address)
    clock.now += 10
    await two.failed(name.upper(), address)  # names are counted case-insensitively
    await one.check(name, address)  # two failures of three: still allowed
    await two.failed(name, _address())
    for throttle in (one, two):
        with pytest.raises(TooManyAttempts) as refused:
            await throttle.check(name, _address())
        assert refused.value.retry_after_s == 50  # the first failure leaves the 60 s window in 50 s
    clock.now += 50
    await one.check(name, address)
    await two.check(name, address)


async def test_an_address_is_locked_across_names_and_a_success_clears_only_the_name(pair):
    (one, two), _ = pair
    address = _address()
    names = [_name() for _ in range(5)]
    for n, name in enumerate(names):
        await (one if n % 2 else two).failed(name, address)
    with pytest.raises(TooManyAttempts):
        await one.check(_name(), address)
    name, elsewhere = _name(), _address()
    for _ in range(3):
        await one.failed(name, elsewhere)
    with pytest.raises(TooManyAttempts):
        await two.check(name, _address())
    await two.succeeded(name)
    await one.check(name, _address())
    with pytest.raises(TooManyAttempts):  # the success cleared the name, not the address
        await one.check(_name(), address)


async def test_rows_older_than_the_window_are_deleted_at_the_next_failure(pair, pg_dsn):
    (one, _), clock = pair
    name = _name()
    await one.failed(name, _address())
    clock.now += 61
    await one.failed(_name(), _address())
    conn = await asyncpg.connect(pg_dsn)
    try:
        left = await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE key = $1", name)
    finally:
        await conn.close()
    assert left == 0


async def test_a_lost_database_refuses_logins_with_503(pg_dsn):
    """Never let a login through unthrottled: with the database gone, the check answers 503 (and the locks'
    readiness probe says it is unavailable)."""
    locks = PgAdvisoryLocks(pg_dsn, pool_size=1)
    await locks.start()
    throttle = PgLoginThrottle(locks, timeout_s=2)
    await throttle.start()
    await throttle.check(_name(), _address())
    await locks.ping()
    await locks.close()
    locks._pool = await asyncpg.create_pool(  # a pool whose server is gone (nothing listens on port 1)
        "postgresql://hapi:hapi@127.0.0.1:1/hapi", min_size=0, max_size=1, timeout=2
    )
    try:
        with pytest.raises(UpstreamUnavailable):
            await throttle.check(_name(), _address())
        with pytest.raises(UpstreamUnavailable):
            await locks.ping()
    finally:
        await locks.close()
