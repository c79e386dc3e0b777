"""What one spawner knows, shared by its parts: the sandboxes it accounts for, its health, its wake-ups.

The parts (``starting``, ``removal``, ``claims``, ``health``, ``beats``) each do one job on this
state; :class:`nbpool.spawner.spawner.Spawner` wires them together.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import nats.errors
from nats.js.kv import KeyValue

from nbpool import logs
from nbpool.aio import Background
from nbpool.bus import Bus, KVMirror
from nbpool.clients import sandbox_client
from nbpool.models import Drain, PoolCounts, Route, SandboxRecord, State
from nbpool.runtime import Runtime
from nbpool.settings import SpawnerSettings
from nbpool.spawner.pool import WarmPool

__all__ = ["BUS_ERRORS", "SpawnerState"]

log = logs.get("nbpool.spawner")

#: What a write to the bus raises when the bus is away or slow.
BUS_ERRORS = (nats.errors.Error, asyncio.TimeoutError)


class SpawnerState:
    """One spawner's bookkeeping (see the module docstring)."""

    def __init__(self, settings: SpawnerSettings, bus: Bus, runtime: Runtime) -> None:
        self.settings = settings
        self.id = settings.spawner_id
        self.bus = bus
        self.runtime = runtime
        names = bus.names
        self.records: KVMirror[SandboxRecord] = KVMirror(bus, names.sandboxes, SandboxRecord)
        self.routes: KVMirror[Route] = KVMirror(bus, names.routes, Route)
        self.control: KVMirror[Drain] = KVMirror(bus, names.control, Drain)
        self.pool = WarmPool()
        #: Sandboxes that exist in the runtime because of this spawner (what counts against capacity).
        self.known: set[str] = set()
        #: Starts in flight: id -> profile.
        self.starting: dict[str, str] = {}
        self.removing: set[str] = set()
        #: Sandboxes the runtime could not remove (it was away): tried again until it confirms.
        self.stuck: dict[str, str] = {}  # id -> why it is being removed
        self.healthy = True
        self.reason = ""
        #: Profiles this spawner cannot start sandboxes of, and why (their image is not on this host).
        self.problems: dict[str, str] = {}
        #: Set once the spawner is on its way out: the runtime's reports of sandboxes ending are ours.
        self.stopping = False
        #: Set on every change the pool loop and the heartbeat should look at.
        self.wake = asyncio.Event()
        self.beat_soon = asyncio.Event()
        self.background = Background("spawner")
        self.http = sandbox_client(timeout=httpx.Timeout(5.0, connect=2.0))

    # ---- what is ours ----------------------------------------------------------------------

    def mine(self) -> list[tuple[SandboxRecord, int]]:
        """This spawner's records, with their revisions."""
        return [(rec, rev) for rec, rev in self.records.items.values() if rec.host == self.id]

    def ours(self) -> set[str]:
        """Ids this spawner accounts for: its records, and sandboxes starting or being removed."""
        return {rec.id for rec, _ in self.mine()} | set(self.starting) | self.removing

    def total(self) -> int:
        """Sandboxes that count against capacity: those in the runtime and those starting."""
        return len(self.known | set(self.starting))

    @property
    def draining(self) -> bool:
        drain = self.control.get("drain")
        return drain is not None and drain.draining

    def counts(self) -> dict[str, PoolCounts]:
        counts = {name: PoolCounts(target=self.settings.pool_target(name)) for name in self.settings.profiles}
        for name in counts:
            counts[name].warm = self.pool.warm(name)
            counts[name].problem = self.problems.get(name, "")
        for profile in self.starting.values():
            if profile in counts:
                counts[profile].starting += 1
        for rec, _ in self.mine():
            if rec.state == State.CLAIMED and rec.pool in counts:
                counts[rec.pool].claimed += 1
        return counts

    def waiting(self) -> dict[str, int]:
        return {name: self.pool.waiting(name) for name in self.settings.profiles}

    # ---- changes ---------------------------------------------------------------------------

    def changed(self) -> None:
        """Something changed: the pool loop looks again, and the next heartbeat comes soon."""
        self.wake.set()
        self.beat_soon.set()

    def set_health(self, healthy: bool, reason: str) -> None:
        if healthy != self.healthy:
            log.warning("health changed", extra={"healthy": healthy, "reason": reason})
            self.event("spawner.health", cause=reason, data={"healthy": healthy})
        self.healthy, self.reason = healthy, reason
        self.beat_soon.set()

    def event(self, event_type: str, sandbox_id: str | None = None, **fields: Any) -> None:
        """Publish a lifecycle event of this spawner in the background."""
        self.background.start(self.bus.event(event_type, sandbox_id, host=self.id, **fields))

    async def sandboxes(self) -> KeyValue:
        return await self.bus.kv(self.bus.names.sandboxes)

    @staticmethod
    def log(sandbox_id: str, **fields: Any) -> dict[str, Any]:
        """Logging keywords for a line about one sandbox."""
        return {"extra": {"sandbox": sandbox_id, **fields}}
