"""What a spawner tells the others: its heartbeat (pools, capacity, health) and its claimed sandboxes' activity."""

from __future__ import annotations

import asyncio

import httpx

from nbpool import logs
from nbpool.aio import wait_event
from nbpool.metrics import POOL, POOL_CAPACITY
from nbpool.models import SandboxRecord, SpawnerBeat, State, encode
from nbpool.spawner.activity import read_activity
from nbpool.spawner.state import BUS_ERRORS, SpawnerState

__all__ = ["beat", "beat_loop", "activity_loop", "send_beat"]

log = logs.get("nbpool.spawner")


def beat(s: SpawnerState) -> SpawnerBeat:
    """The heartbeat now (and the pool's gauges, which say the same)."""
    pools = s.counts()
    for profile, counts in pools.items():
        for state in ("warm", "starting", "claimed"):
            POOL.labels(s.id, profile, state).set(getattr(counts, state))
    POOL_CAPACITY.labels(s.id).set(s.settings.max_sandboxes)
    return SpawnerBeat(
        id=s.id,
        runtime=s.runtime.name,
        healthy=s.healthy,
        reason=s.reason,
        capacity=s.settings.max_sandboxes,
        total=s.total(),
        pools=pools,
        waiting=sum(s.waiting().values()),
        draining=s.draining,
    )


async def send_beat(s: SpawnerState) -> None:
    try:
        kv = await s.bus.kv(s.bus.names.spawners)
        await kv.put(s.id, encode(beat(s)))
    except BUS_ERRORS as err:
        log.debug("heartbeat not sent", extra={"error": repr(err)})


async def beat_loop(s: SpawnerState) -> None:
    while True:
        s.beat_soon.clear()
        await send_beat(s)
        if await wait_event(s.beat_soon, timeout=s.settings.heartbeat_interval):
            await asyncio.sleep(0.05)  # gather a burst of changes into one beat


async def activity_loop(s: SpawnerState) -> None:
    """Every ``NBPOOL_ACTIVITY_INTERVAL``, each claimed sandbox's activity, from its server, to the bus."""
    limit = asyncio.Semaphore(32)

    async def poll(rec: SandboxRecord) -> None:
        async with limit:
            try:
                activity = await read_activity(s.http, rec)
            except (httpx.HTTPError, ValueError) as err:
                log.debug("activity not read", **s.log(rec.id, error=repr(err)))
                return
            kv = await s.bus.kv(s.bus.names.activity)
            await kv.put(rec.id, encode(activity))

    while True:
        claimed = [rec for rec, _ in s.mine() if rec.state == State.CLAIMED and rec.id not in s.removing]
        results = await asyncio.gather(*(poll(rec) for rec in claimed), return_exceptions=True)
        for rec, result in zip(claimed, results, strict=True):
            if isinstance(result, Exception):
                log.debug("activity not published", **s.log(rec.id, error=repr(result)))
        await asyncio.sleep(s.settings.activity_interval)
