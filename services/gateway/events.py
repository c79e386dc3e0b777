"""The most recent lifecycle events, followed from the bus for the admin page."""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from nbpool import logs
from nbpool.bus import Bus
from nbpool.models import BadMessage, Event, decode

__all__ = ["EventTail"]

log = logs.get("nbpool.gateway.admin")


class EventTail:
    """The most recent lifecycle events, for the admin page (the last 10 minutes, at most ``size``)."""

    def __init__(self, bus: Bus, size: int = 100) -> None:
        self._bus = bus
        self.events: collections.deque[Event] = collections.deque(maxlen=size)

    async def run(self) -> None:
        while True:
            try:
                sub = await self._bus.follow_events(since=time.time() - 600)
                generation = self._bus.generation
                pending: asyncio.Future[Any] | None = None
                try:
                    while self._bus.generation == generation:
                        # asyncio.wait, not next_msg's own timeout: that one can swallow a cancellation.
                        pending = pending or asyncio.ensure_future(sub.next_msg(timeout=None))
                        done, _ = await asyncio.wait({pending}, timeout=1.0)
                        if not done:
                            continue
                        msg, pending = pending.result(), None
                        try:
                            self.events.append(decode(Event, msg.data))
                        except BadMessage:
                            continue
                finally:
                    if pending is not None:
                        pending.cancel()
                await sub.unsubscribe()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the bus went away: follow again once it is back
                log.debug("event tail restarting", extra={"error": repr(err)})
                await asyncio.sleep(1.0)
