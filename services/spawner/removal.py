"""Ending a spawner's sandboxes: the route first, then the server, then its record and activity,
then the event.

The route: the router takes an ending sandbox out of the proxy and then deletes its route from the
bus; :func:`remove` waits for that (up to :data:`UNROUTE_S`) before it stops the server, so a
visitor of an ended session gets the gateway's "this server has ended", never the proxy's 502 for
a server that is gone (and ``DELETE /sessions/<id>``, which waits for the record, answers once
both are gone). A sandbox removed while its record is still routed (warm and drained, or its
server died) is stopped at once; its route goes with its record.

A sandbox is gone only when the runtime says so. When the runtime is away, the record stays
(``ending``, or ``failed``), the id keeps counting against capacity and is kept in
``state.stuck``; :func:`retry_stuck`, called by the health loop, tries again until the runtime
confirms the removal.
"""

from __future__ import annotations

import asyncio
import time

import nats.errors
import nats.js.errors

from nbpool import logs
from nbpool.aio import cancel_and_wait, poll_ready
from nbpool.models import ROUTED_STATES, SandboxRecord
from nbpool.runtime import RuntimeUnavailable
from nbpool.spawner.state import BUS_ERRORS, SpawnerState

__all__ = ["UNROUTE_S", "discard", "remove", "remove_all", "retry_stuck"]

log = logs.get("nbpool.spawner")

#: How long a removal waits for the router to take the sandbox's route out of the proxy (it takes
#: tens of milliseconds; longer only when the router or the proxy is away, and then the server is
#: stopped anyway).
UNROUTE_S = 5.0


async def unrouted(state: SpawnerState, sid: str, within: float = UNROUTE_S) -> bool:
    """Wait until the sandbox has no route on the bus (the router deletes it once the proxy no
    longer sends its requests on), up to ``within`` seconds; whether it has none."""
    async def gone() -> bool | None:
        return None if sid in state.routes.items else True

    try:
        return await poll_ready(gone, deadline=time.monotonic() + within, first=0.01, most=0.05)
    except TimeoutError:
        log.warning("route still there; stopping the server anyway", **state.log(sid, waited_s=within))
        return False


async def discard(state: SpawnerState, sid: str, record_exists: bool = True, reason: str = "ended") -> bool:
    """Remove the runtime sandbox, then its record and activity (in that order: no orphan servers).

    False when the runtime is away: nothing was removed, the record is left for a later try.
    """
    try:
        await state.runtime.remove(sid)
    except RuntimeUnavailable as err:
        log.warning("not removed: runtime unavailable; will retry", **state.log(sid, error=str(err)))
        state.stuck.setdefault(sid, reason)
        return False
    state.stuck.pop(sid, None)
    state.known.discard(sid)
    if record_exists:
        await (await state.sandboxes()).delete(sid)
    activity = await state.bus.kv(state.bus.names.activity)
    try:
        await activity.delete(sid)
    except (nats.errors.Error, TimeoutError) as err:  # nats.js.errors are nats.errors too
        log.debug("activity not deleted", **state.log(sid, error=repr(err)))
    return True


async def remove(state: SpawnerState, rec: SandboxRecord, reason: str) -> None:
    """End a sandbox of this spawner: stop it, drop its record, say so (once it is really gone)."""
    if rec.id in state.removing:
        return
    state.removing.add(rec.id)
    try:
        state.pool.discard(rec.id)
        current = state.records.get(rec.id)
        if current is None or current.state not in ROUTED_STATES:
            # Ending (or its record gone): the router is taking the route out. A sandbox removed
            # while still routed (warm and drained, died) keeps it until its record is deleted below.
            await unrouted(state, rec.id)
        if await discard(state, rec.id, reason=reason):
            log.info("removed", **state.log(rec.id, reason=reason))
            await state.bus.event("sandbox.ended", rec.id, host=state.id, cause=reason, data={"profile": rec.pool})
    except BUS_ERRORS as err:
        log.warning("remove incomplete, will retry", **state.log(rec.id, error=repr(err)))
    finally:
        state.removing.discard(rec.id)
        state.changed()


async def retry_stuck(state: SpawnerState) -> None:
    """Try again to remove the sandboxes the runtime could not remove before."""
    for sid, reason in list(state.stuck.items()):
        if sid in state.removing or sid in state.starting:
            continue
        rec = state.records.get(sid)
        if rec is not None:
            await remove(state, rec, reason)
        elif await discard(state, sid, record_exists=False, reason=reason):
            log.info("removed", **state.log(sid, reason=reason))
            state.changed()


async def remove_all(state: SpawnerState, reason: str) -> None:
    """End every sandbox of this spawner (``nbpool up`` does this on Ctrl-C).

    Servers are stopped first, all at once; records are then deleted if the bus is there
    (if not, the next reconcile deletes them).
    """
    await state.background.close()
    records = {rec.id: rec for rec, _ in state.mine()}
    ids = state.known | records.keys()
    try:
        ids |= {sb.id for sb in await state.runtime.list()}  # and any the bookkeeping missed
    except RuntimeUnavailable:
        pass
    await asyncio.gather(*(state.runtime.remove(sid) for sid in ids), return_exceptions=True)
    state.known.clear()
    log.info("removed all sandboxes", extra={"count": len(ids)})
    if not state.bus.nc.is_connected:
        return

    async def forget(sid: str) -> None:
        await (await state.sandboxes()).delete(sid)
        await (await state.bus.kv(state.bus.names.activity)).delete(sid)
        await state.bus.event("sandbox.ended", sid, host=state.id, cause=reason)

    forgetting = asyncio.ensure_future(asyncio.gather(*(forget(sid) for sid in records)))
    try:
        async with asyncio.timeout(10):
            await forgetting
    except (*BUS_ERRORS, nats.js.errors.Error) as err:
        log.warning("records not all deleted; the next start reconciles them", extra={"error": repr(err)})
    finally:
        await cancel_and_wait(forgetting)
