"""The spawner service: warm pool, claims, activity heartbeats, removal, reconciliation.

It owns the sandboxes whose record says ``host == spawner_id``. Every record change goes through
:mod:`nbpool.records` (compare-and-set on the KV revision), so a sandbox is handed out once,
whoever races for it. :class:`Spawner` wires the parts together, each in a module of its own:

- ``state``: what this spawner knows (its sandboxes, health, wake-ups), shared by the parts;
- ``starting``: keeping the pool full, and bringing each start to warm;
- ``claims``: answering claims from the gateways;
- ``removal``: ending sandboxes, and retrying what the runtime could not end;
- ``health``: replacing dead or silent sandboxes, following the runtime's health;
- ``beats``: the heartbeat and the claimed sandboxes' activity.
"""

from __future__ import annotations

import asyncio

from nbpool import logs
from nbpool.aio import cancel_and_wait
from nbpool.bus import Bus
from nbpool.models import Drain, SandboxRecord, State
from nbpool.records import read_record
from nbpool.runtime import Runtime, RuntimeUnavailable
from nbpool.runtime.base import ReportsEvents
from nbpool.settings import SpawnerSettings
from nbpool.spawner.beats import activity_loop, beat_loop, send_beat
from nbpool.spawner.claims import ClaimDesk
from nbpool.spawner.health import HealthWatch
from nbpool.spawner.images import check_images
from nbpool.spawner.removal import remove, remove_all
from nbpool.spawner.starting import Starter
from nbpool.spawner.state import SpawnerState

__all__ = ["Spawner"]

log = logs.get("nbpool.spawner")

#: On stop, a loop still running this long after its cancellation (one swallowed inside nats-py) is cancelled again.
LOOPS_STOP_AGAIN_S = 1.0


class Spawner:
    """One spawner replica (see the module docstring)."""

    def __init__(self, settings: SpawnerSettings, bus: Bus, runtime: Runtime) -> None:
        self.state = SpawnerState(settings, bus, runtime)
        self.starter = Starter(self.state)
        self.claims = ClaimDesk(self.state, self.starter)
        self.health = HealthWatch(self.state)
        self.state.records.on_change = self._record_changed
        self.state.routes.on_change = self.starter.route_changed
        self.state.control.on_change = self._control_changed

    # ---- mirrors -------------------------------------------------------------------------

    def _record_changed(self, key: str, rec: SandboxRecord | None) -> None:
        s = self.state
        if rec is None:
            if s.pool.discard(key):
                s.changed()
            return
        if rec.host != s.id:
            return
        if rec.state == State.CLAIMED and s.pool.discard(key):
            # Claimed while it was back in the pool: a claim whose write timed out but was applied.
            s.changed()
        if rec.state == State.ENDING:
            s.pool.discard(key)
            s.background.start(remove(s, rec, rec.ending_reason or "ended"))

    def _control_changed(self, key: str, doc: Drain | None) -> None:
        s = self.state
        if key != "drain":
            return
        if s.draining:
            log.info("draining: ending warm sandboxes, starting none")
            for rec, _ in s.mine():
                if rec.state == State.WARM and s.pool.discard(rec.id):
                    s.background.start(remove(s, rec, "drained"))
        else:
            log.info("drain over: refilling the pool")
        s.changed()

    # ---- life ----------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        """Reconcile, then answer claims and keep the pool full until ``stop`` is set."""
        s = self.state
        mirrors = [asyncio.ensure_future(m.run()) for m in (s.records, s.routes, s.control)]
        try:
            await asyncio.gather(s.records.ready.wait(), s.routes.ready.wait(), s.control.ready.wait())
            await self.reconcile()
            try:
                await check_images(s, {})  # before the first start: a missing image is said, not tried
            except RuntimeUnavailable:
                pass  # the health rounds look again
            sub = await s.bus.nc.subscribe(s.bus.names.claim_subject(s.id), cb=self.claims.on_request)
            loops = [
                asyncio.ensure_future(self.starter.run()),
                asyncio.ensure_future(beat_loop(s)),
                asyncio.ensure_future(activity_loop(s)),
                asyncio.ensure_future(self.health.run()),
            ]
            if isinstance(s.runtime, ReportsEvents):
                loops.append(asyncio.ensure_future(s.runtime.watch_events(self.health.runtime_event)))
            log.info("serving", extra={"spawner": s.id, "runtime": s.runtime.name})
            try:
                await stop.wait()
            finally:
                s.stopping = True
                await sub.unsubscribe()
                # The loops hold no work of their own (starts run in s.background, closed below):
                await cancel_and_wait(*loops, again_after=LOOPS_STOP_AGAIN_S)
                if s.settings.remove_on_stop:
                    await remove_all(s, "shutdown")
        finally:
            await cancel_and_wait(*mirrors, again_after=LOOPS_STOP_AGAIN_S)
            await s.background.close()
            await s.http.aclose()
            await s.runtime.close()

    async def reconcile(self) -> None:
        """Make the records and the runtime agree after a (re)start.

        Claimed and warm sandboxes whose server still runs are adopted; everything else of this
        spawner (starting, failed, ending, records without a server, servers without a record) is
        removed.
        """
        s = self.state
        while True:
            try:
                found = {sb.id: sb for sb in await s.runtime.list()}
                s.set_health(True, "")
                break
            except RuntimeUnavailable as err:
                s.set_health(False, f"runtime unavailable: {err}")
                await send_beat(s)
                await asyncio.sleep(2.0)
        adopted = removed = 0
        for rec, _ in s.mine():
            sandbox = found.pop(rec.id, None)
            if rec.id in s.removing:
                # Already on its way out (an ending record, seen by the mirror before this ran):
                # counting it here would outlive that removal and hold its room forever.
                removed += 1
                continue
            alive = sandbox is not None and sandbox.alive
            if alive:
                s.known.add(rec.id)
            # A warm sandbox served under another routing (NBPOOL_ROUTING changed) would never be routed.
            routed_as_now = rec.path == s.settings.origins.base_path(rec.id)
            if alive and (rec.state == State.CLAIMED or (rec.state == State.WARM and routed_as_now and not s.draining)):
                if rec.state == State.WARM:
                    s.pool.put(rec.pool, rec.id)
                adopted += 1
                continue
            s.known.add(rec.id)
            await remove(s, rec, "lost" if not alive else f"reconcile:{rec.state}")
            removed += 1
        kv = await s.sandboxes()
        for orphan in found.values():
            if await read_record(kv, orphan.id) is not None:
                continue  # the mirror missed its record: not an orphan (the next health round looks again)
            log.info("removing orphan", **s.log(orphan.id, profile=orphan.profile))
            await s.runtime.remove(orphan.id)
            await s.bus.event("sandbox.removed", orphan.id, host=s.id, cause="orphan")
            removed += 1
        log.info("reconciled", extra={"adopted": adopted, "removed": removed})
        await s.bus.event("spawner.reconciled", host=s.id, data={"adopted": adopted, "removed": removed})
        s.changed()
