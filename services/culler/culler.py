"""The culler service: every few seconds, ends the sandboxes the policy says should end.

Ending is a compare-and-set of the record to ``ending``; the owning spawner removes the sandbox
and the router its route. A culler restart loses nothing: records and activity live on the bus.
"""

from __future__ import annotations

import asyncio
import time

import nats.errors
import nats.js.errors

from nbpool import logs
from nbpool.aio import cancel_and_wait, wait_event
from nbpool.bus import Bus, KVMirror
from nbpool.culler.policy import CullPolicy, decide
from nbpool.models import Activity, SandboxRecord, State
from nbpool.records import transition
from nbpool.settings import CullerSettings

__all__ = ["Culler"]

log = logs.get("nbpool.culler")


class Culler:
    """Applies :func:`nbpool.culler.policy.decide` to every sandbox."""

    def __init__(self, settings: CullerSettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.policy = CullPolicy(settings.idle_timeout, settings.max_age, settings.pool_max_age, settings.unopened_timeout)
        self.records: KVMirror[SandboxRecord] = KVMirror(bus, bus.names.sandboxes, SandboxRecord)
        self.activity: KVMirror[Activity] = KVMirror(bus, bus.names.activity, Activity)

    async def serve(self, stop: asyncio.Event) -> None:
        mirrors = [asyncio.ensure_future(self.records.run()), asyncio.ensure_future(self.activity.run())]
        try:
            await asyncio.gather(self.records.ready.wait(), self.activity.ready.wait())
            while not stop.is_set():
                try:
                    await self.sweep(time.time())
                except (TimeoutError, nats.errors.Error) as err:
                    log.warning("sweep failed", extra={"error": repr(err)})
                await wait_event(stop, timeout=self.settings.cull_interval)
        finally:
            await cancel_and_wait(*mirrors)

    async def sweep(self, now: float) -> int:
        """End every sandbox whose verdict says so; returns how many."""
        kv = await self.bus.kv(self.bus.names.sandboxes)
        ended = 0
        for rec, rev in list(self.records.items.values()):
            verdict = decide(rec, self.activity.get(rec.id), now, self.policy)
            if not verdict.end:
                continue
            # Once: a record that changed meanwhile (claimed, ended) is judged again next sweep.
            moved = await transition(kv, rec.id, State.ENDING, from_={rec.state}, known=(rec, rev), attempts=1,
                                     ending_reason=verdict.reason)
            if moved is None:
                continue
            ended += 1
            log.info("culled", extra={"sandbox": rec.id, "reason": verdict.reason, "state": rec.state})
            await self.bus.event("cull.decision", rec.id, host=rec.host, cause=verdict.reason, data={"state": rec.state})
        return ended
