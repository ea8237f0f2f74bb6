"""Login rate limiting: failed logins counted per user name and per client address, in bounded memory.

Too many failures within the window: refused (429, ``Retry-After``) before the password is checked; a
success clears its name's failures. :class:`LoginThrottle` counts in this process; replicas sharing
PostgreSQL count there (:mod:`mediator.admin.pg_throttle`). Details: ``docs/internals.md``.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Protocol

from ..errors import RegistryError


class TooManyAttempts(RegistryError):
    status = 429
    code = "throttled"

    def __init__(self, diagnostics: str, retry_after_s: int) -> None:
        super().__init__(diagnostics)
        self.retry_after_s = retry_after_s


class Throttle(Protocol):
    """What the login handler asks: may this name try from this address now, and how did the try end."""

    async def check(self, user: str, address: str | None) -> None:
        """Raise :class:`TooManyAttempts` when the name or the address is locked."""

    async def failed(self, user: str, address: str | None) -> None: ...

    async def succeeded(self, user: str) -> None: ...


def too_many(wait_s: float) -> TooManyAttempts:
    message = "Too many failed logins; wait before trying again."
    return TooManyAttempts(message, retry_after_s=math.ceil(wait_s))


class _Failures:
    def __init__(self, limit: int, max_keys: int) -> None:
        self.limit = limit
        self.max_keys = max_keys
        self.times: OrderedDict[str, deque[float]] = OrderedDict()

    def wait_s(self, key: str, now: float, window_s: float) -> float:
        """Seconds until ``key`` may try again (0: now)."""
        times = self.times.get(key)
        if times is None:
            return 0.0
        while times and times[0] <= now - window_s:
            times.popleft()
        if not times:
            del self.times[key]
            return 0.0
        return times[0] + window_s - now if len(times) >= self.limit else 0.0

    def add(self, key: str, now: float) -> None:
        times = self.times.pop(key, None) or deque(maxlen=self.limit)
        times.append(now)
        self.times[key] = times  # most recent last
        while len(self.times) > self.max_keys:
            self.times.popitem(last=False)


class LoginThrottle:
    def __init__(
        self,
        *,
        max_per_user: int = 5,
        max_per_address: int = 20,
        window_s: float = 900.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.clock = clock
        self.users = _Failures(max_per_user, max_keys)
        self.addresses = _Failures(max_per_address, max_keys)

    async def check(self, user: str, address: str | None) -> None:
        now = self.clock()
        wait = max(
            self.users.wait_s(user.lower(), now, self.window_s),
            self.addresses.wait_s(address or "-", now, self.window_s),
        )
        if wait > 0:
            raise too_many(wait)

    async def failed(self, user: str, address: str | None) -> None:
        now = self.clock()
        self.users.add(user.lower(), now)
        self.addresses.add(address or "-", now)

    async def succeeded(self, user: str) -> None:
        self.users.times.pop(user.lower(), None)
