"""Serialise work on overlapping records.

Two submissions that could match each other share at least one blocking key (that is how candidates
are found), so holding a lock per key — taken in sorted order to avoid deadlock — makes "find candidates,
decide, write" atomic for any pair of submissions that could affect each other. The in-process
implementation covers one mediator process; a second replica needs a shared lock service implementing
the same ``hold`` (see README).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol


class Lease(Protocol):
    """A named exclusive lease (one holder in the whole deployment) until :meth:`release`."""

    async def release(self) -> None: ...

    async def held(self) -> bool:
        """Still held: not released, and (for a lock service) its connection still answers."""


class LockManager(Protocol):
    shared: bool  # held for every replica (a lock service), not only for this process

    def hold(self, keys: Iterable[str]) -> AbstractAsyncContextManager[None]: ...

    async def try_lease(self, name: str) -> Lease | None:
        """The lease ``name`` if nobody holds it (else None at once): for work of which only one may run
        at a time, such as applying a re-match, held for as long as the work runs."""

    async def ping(self) -> None:
        """Raise :class:`~mediator.errors.UpstreamUnavailable` when the locks cannot be taken now."""

    async def confirm(self) -> None:
        """Inside :meth:`hold`, just before writing: raise :class:`~mediator.errors.UpstreamUnavailable`
        when the locks held were lost meanwhile (a lock service's connection dropped)."""


class _LocalLease:
    def __init__(self, names: set[str], name: str) -> None:
        self._names, self.name = names, name
        self._released = False

    async def release(self) -> None:
        self._names.discard(self.name)
        self._released = True

    async def held(self) -> bool:
        return not self._released


class LocalKeyedLocks:
    """asyncio locks per key, created on demand and dropped when nobody holds or waits for them."""

    shared = False

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._leases: set[str] = set()

    async def ping(self) -> None:
        """In-process locks are always there."""

    async def confirm(self) -> None:
        """In-process locks cannot be lost."""

    async def try_lease(self, name: str) -> Lease | None:
        if name in self._leases:
            return None
        self._leases.add(name)
        return _LocalLease(self._leases, name)

    def _ref(self, key: str) -> asyncio.Lock:
        lock, count = self._locks.get(key, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[key] = (lock, count + 1)
        return lock

    def _unref(self, key: str) -> None:
        lock, count = self._locks[key]
        if count <= 1:
            del self._locks[key]
        else:
            self._locks[key] = (lock, count - 1)

    @asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        ordered = sorted(set(keys))
        acquired: list[str] = []
        try:
            for key in ordered:
                lock = self._ref(key)
                try:
                    await lock.acquire()
                except BaseException:
                    self._unref(key)
                    raise
                acquired.append(key)
            yield
        finally:
            for key in reversed(acquired):
                self._locks[key][0].release()
                self._unref(key)

    def __len__(self) -> int:
        return len(self._locks)
