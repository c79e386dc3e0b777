"""Per-client launch rate limit: a token bucket per client address, in memory.

Each gateway replica counts on its own, so N replicas allow up to N times the rate; the limit is
a guard against a runaway script, not an exact quota.
"""

from __future__ import annotations

import time
from collections import OrderedDict

__all__ = ["RateLimiter"]


class RateLimiter:
    """``per_minute`` launches per client on average, bursts of up to ``burst``."""

    def __init__(self, per_minute: float, burst: int, max_clients: int = 100_000) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, now: float | None = None) -> float:
        """Spend one launch for ``client``: 0.0 if allowed, else seconds until one is allowed."""
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(client, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        if tokens >= 1.0:
            self._buckets[client] = (tokens - 1.0, now)
            wait = 0.0
        else:
            self._buckets[client] = (tokens, now)
            wait = (1.0 - tokens) / self._rate
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)  # forget the least recently seen client
        return wait
