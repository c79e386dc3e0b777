"""The culler service: every few seconds, ends the sandboxes the policy says should end.

Ending is a compare-and-set of the record to ``ending``; the owning spawner removes the sandbox
and the router its route. A culler restart loses nothing: records and activity live on the bus.
Several replicas may run: each move is a compare-and-set, so each sandbox is ended (and its
``cull.decision`` said) by one of them. Every second it also looks for lost hosts
(:mod:`nbpool.culler.hosts`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats.errors
import nats.js.errors

from nbpool import logs
from nbpool.aio import cancel_and_wait, wait_event
from nbpool.bus import Bus, KVMirror
from nbpool.culler.hosts import LostHosts
from nbpool.culler.policy import CullPolicy, decide
from nbpool.metrics import CULLS
from nbpool.models import Activity, SandboxRecord, State
from nbpool.records import transition
from nbpool.settings import CullerSettings

__all__ = ["Culler"]

log = logs.get("nbpool.culler")

#: Seconds between looks for lost hosts: a host is found lost at most this long after its timeout.
HOST_CHECK_INTERVAL = 1.0


class Culler:
    """Applies :func:`nbpool.culler.policy.decide` to every sandbox."""

    def __init__(self, settings: CullerSettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.policy = CullPolicy(settings.idle_timeout, settings.max_age, settings.pool_max_age, settings.unopened_timeout)
        self.records: KVMirror[SandboxRecord] = KVMirror(bus, bus.names.sandboxes, SandboxRecord)
        self.activity: KVMirror[Activity] = KVMirror(bus, bus.names.activity, Activity)
        self.hosts = LostHosts(bus, self.records, settings.host_timeout)

    async def serve(self, stop: asyncio.Event) -> None:
        followed: list[KVMirror[Any]] = [self.records, self.activity, self.hosts.watch.beats, self.hosts.lost]
        mirrors = [asyncio.ensure_future(m.run()) for m in followed]
        try:
            await asyncio.gather(*(m.ready.wait() for m in followed))
            next_cull = 0.0
            while not stop.is_set():
                try:
                    await self.hosts.sweep()
                    if time.monotonic() >= next_cull:
                        next_cull = time.monotonic() + self.settings.cull_interval
                        await self.sweep(time.time())
                except (TimeoutError, nats.errors.Error) as err:
                    log.warning("sweep failed", extra={"error": repr(err)})
                await wait_event(stop, timeout=HOST_CHECK_INTERVAL)
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
            CULLS.labels(verdict.reason).inc()
            log.info("culled", extra={"sandbox": rec.id, "reason": verdict.reason, "state": rec.state})
            await self.bus.event("cull.decision", rec.id, host=rec.host, cause=verdict.reason, data={"state": rec.state})
        return ended
