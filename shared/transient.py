"""Bus operations that outlast a JetStream election: what counts as "try again", and trying again.

With several NATS servers, each KV bucket and stream is a Raft group with a leader. When the
leader's server dies, the group elects another in a few seconds (tried here: a write paused 6 s
after ``kill -9`` of the leader of a 3-node cluster). Meanwhile operations time out, or the
server answers "no responders" / 503. Those are :func:`transient`; :func:`retrying` tries again
with a bounded exponential backoff for up to :data:`RETRY_BUDGET` seconds, which outlasts an
election. A write that timed out may still have been applied: a compare-and-set must be read
back before it is tried again (``nbpool.records`` does).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors

from nbpool import logs
from nbpool.metrics import BUS_RETRIES

__all__ = ["RETRY_BUDGET", "Backoff", "retrying", "transient"]

log = logs.get("nbpool.bus")

#: Seconds a bus operation keeps being retried through an outage (elections take seconds).
RETRY_BUDGET = 30.0

#: JetStream's "temporarily unavailable" answers: no leader yet, system account busy, and "no
#: suitable peers for placement" (10005), which a cluster says while its nodes are still joining
#: (and for good when asked for more replicas than it has nodes: then the budget runs out).
_UNAVAILABLE_CODES = {10005, 10008, 10023}

T = TypeVar("T")


def transient(err: BaseException) -> bool:
    """Whether ``err`` is what the bus raises while a leader is being elected or a server is away."""
    if isinstance(err, nats.js.errors.ServiceUnavailableError):
        return True
    if isinstance(err, nats.js.errors.APIError):
        # Not every subclass sets these (KeyNotFoundError has neither).
        return getattr(err, "code", None) == 503 or getattr(err, "err_code", None) in _UNAVAILABLE_CODES
    return isinstance(err, (nats.errors.TimeoutError, nats.errors.NoRespondersError,
                            nats.errors.ConnectionReconnectingError, asyncio.TimeoutError))


class Backoff:
    """Pauses that double from ``first`` to ``most``, until ``budget`` seconds have passed."""

    def __init__(self, budget: float = RETRY_BUDGET, first: float = 0.1, most: float = 2.0, op: str = "write") -> None:
        self.op = op
        self.deadline = time.monotonic() + budget
        self.delay = first
        self.most = most

    async def pause(self) -> bool:
        """Sleep before the next try; False (without sleeping) when the budget is spent."""
        if time.monotonic() + self.delay > self.deadline:
            return False
        BUS_RETRIES.labels(self.op).inc()
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.most)
        return True


async def retrying(op: Callable[[], Awaitable[T]], what: str, budget: float = RETRY_BUDGET) -> T:
    """``await op()``, again after each :func:`transient` error until ``budget`` seconds are spent.

    Only for operations that are safe to repeat (reads, puts of a whole value, deletes).
    """
    backoff = Backoff(budget, op=what)
    while True:
        try:
            return await op()
        except Exception as err:
            if not transient(err):
                raise
            if not await backoff.pause():
                raise
            log.info("bus busy, retrying", extra={"op": what, "error": repr(err)})
