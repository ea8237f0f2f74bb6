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


class LockManager(Protocol):
    def hold(self, keys: Iterable[str]) -> AbstractAsyncContextManager[None]: ...


class LocalKeyedLocks:
    """asyncio locks per key, created on demand and dropped when nobody holds or waits for them."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

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
