"""Warm-pool bookkeeping without a network: how many to start, and who gets which warm sandbox."""

from __future__ import annotations

import asyncio
from collections import deque

from nbpool.models import PoolCounts

__all__ = ["WarmPool", "spawn_plan"]


def spawn_plan(
    counts: dict[str, PoolCounts],
    waiting: dict[str, int],
    capacity: int,
    total: int,
    starting: int,
    concurrency: int,
) -> dict[str, int]:
    """How many sandboxes to start now, per profile.

    Each profile wants ``target + waiting claims`` sandboxes warm or starting. Starts are bounded
    by the room left under ``capacity`` (sandboxes of every state count) and by ``concurrency``
    (starts in flight). When room is short, the profile furthest below its want goes first.
    """
    room = min(capacity - total, concurrency - starting)
    deficit = {
        name: c.target + waiting.get(name, 0) - c.warm - c.starting for name, c in counts.items()
    }
    plan = {name: 0 for name in counts}
    while room > 0:
        name = max(deficit, key=lambda n: (deficit[n], n), default=None)
        if name is None or deficit[name] <= 0:
            break
        plan[name] += 1
        deficit[name] -= 1
        room -= 1
    return {name: n for name, n in plan.items() if n}


class RefillGate:
    """Holds refills back for a moment after a burst of claims.

    Thirty visitors who claim at once then open their notebooks, and starting the pool's
    replacements at that moment would take CPU from exactly them (make bench: time to first
    output). The first claim of a burst opens a window of ``delay`` seconds in which only urgent
    refills start: those of a profile with no warm sandbox left or with claims waiting. Later
    claims do not extend the window, so refills wait at most ``delay``.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._until: float | None = None

    def claimed(self, now: float) -> None:
        if self._until is None and self.delay > 0:
            self._until = now + self.delay

    def split(
        self, plan: dict[str, int], counts: dict[str, PoolCounts], waiting: dict[str, int], now: float
    ) -> tuple[dict[str, int], float | None]:
        """The part of ``plan`` to start now, and in how many seconds to look again (None: no need)."""
        if self._until is None or now >= self._until:
            self._until = None
            return plan, None
        urgent = {name: n for name, n in plan.items() if counts[name].warm == 0 or waiting.get(name, 0) > 0}
        return urgent, self._until - now


class WarmPool:
    """Warm sandbox ids per profile, handed out first come, first served.

    A claim that finds no warm sandbox may wait in line (:meth:`take` with a timeout); sandboxes
    that turn warm go to the longest-waiting claim first.
    """

    def __init__(self) -> None:
        self._ready: dict[str, deque[str]] = {}
        self._waiters: dict[str, deque[asyncio.Future[str]]] = {}

    def put(self, profile: str, sandbox_id: str) -> None:
        """Add a warm sandbox, or hand it straight to the first claim in line."""
        waiters = self._waiters.get(profile)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(sandbox_id)
                return
        self._ready.setdefault(profile, deque()).append(sandbox_id)

    def discard(self, sandbox_id: str) -> bool:
        """Take a sandbox out of the pool (it ended or died); True if it was there."""
        for ready in self._ready.values():
            if sandbox_id in ready:
                ready.remove(sandbox_id)
                return True
        return False

    async def take(self, profile: str, timeout: float) -> str | None:
        """The oldest warm sandbox of ``profile``, waiting up to ``timeout`` seconds in line; None if none."""
        ready = self._ready.get(profile)
        if ready and not self.waiting(profile):
            return ready.popleft()
        if timeout <= 0:
            return None
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(profile, deque()).append(fut)
        try:
            async with asyncio.timeout(timeout):
                return await fut
        except TimeoutError:
            return None
        finally:
            waiters = self._waiters.get(profile)
            if waiters and fut in waiters:
                waiters.remove(fut)

    def warm(self, profile: str) -> int:
        return len(self._ready.get(profile, ()))

    def waiting(self, profile: str) -> int:
        return sum(1 for fut in self._waiters.get(profile, ()) if not fut.done())

    def ids(self) -> set[str]:
        return {sid for ready in self._ready.values() for sid in ready}
