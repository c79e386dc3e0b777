"""Claiming a sandbox for a visitor: which spawner to ask, and what to do when none has one.

The gateway follows the spawners' heartbeats (:class:`nbpool.hosts.HostWatch`: a host silent for
``NBPOOL_HOST_TIMEOUT`` gets no claims) and asks the spawner with the most warm sandboxes first,
over NATS request/reply. If no spawner has one warm, it waits in line at the spawner most likely
to warm one soon, for at most ``claim_timeout`` seconds. A spawner retries its compare-and-set
through a bus election for up to :data:`nbpool.spawner.claims.CLAIM_BUS_BUDGET` seconds, so the
gateway waits for its answer that much longer than the request's own wait (:data:`ASK_SLACK`).
"""

from __future__ import annotations

import time

import nats.errors

from nbpool.bus import Bus
from nbpool.hosts import HostWatch
from nbpool.metrics import CLAIM_SECONDS, LAUNCHES
from nbpool.models import BadMessage, ClaimReply, ClaimRequest, SandboxRecord, SpawnerBeat, decode, encode

__all__ = ["ASK_SLACK", "Claimer", "NoCapacity"]

#: Seconds the gateway waits for a spawner's answer beyond the claim's own wait: a bus election
#: (seconds) plus a slow compare-and-set. A reply that comes later is lost, and the sandbox it
#: claimed is ended as unopened by the culler: never handed to anyone else.
ASK_SLACK = 10.0


class NoCapacity(Exception):
    """No sandbox can be had now. ``retry_after`` is a fair guess in seconds.

    ``full`` says every spawner is at capacity (a visitor waits for someone to leave), as
    opposed to sandboxes being on their way, or nbpool being unhealthy or draining. ``coming``
    says one will be free by itself (one is starting, or sessions will end): worth waiting in line
    for, as opposed to nbpool being unhealthy or draining.
    """

    def __init__(self, reason: str, retry_after: int, full: bool = False, coming: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.full = full
        self.coming = coming or full


class Claimer:
    """Turns a visitor's launch into a claimed sandbox record."""

    def __init__(self, bus: Bus, hosts: HostWatch, claim_timeout: float) -> None:
        self._bus = bus
        self._hosts = hosts
        self._claim_timeout = claim_timeout

    def live_spawners(self) -> list[SpawnerBeat]:
        """Spawners whose heartbeat is fresh."""
        return self._hosts.live()

    async def claim(self, profile: str, owner: str | None, wait: float | None = None) -> SandboxRecord:
        """A claimed sandbox of ``profile``, or :class:`NoCapacity`.

        With no warm sandbox anywhere, waits up to ``wait`` seconds (default: the claim timeout)
        in line for one that is starting.
        """
        began = time.perf_counter()
        try:
            rec = await self._claim(profile, owner, wait)
        except NoCapacity:
            LAUNCHES.labels("no_capacity").inc()
            raise
        CLAIM_SECONDS.observe(time.perf_counter() - began)
        LAUNCHES.labels("ok").inc()
        return rec

    async def _claim(self, profile: str, owner: str | None, wait: float | None) -> SandboxRecord:
        wait = self._claim_timeout if wait is None else wait
        live = self.live_spawners()
        if not live:
            raise NoCapacity("no spawner is running", retry_after=10)
        healthy = [b for b in live if b.healthy]
        if not healthy:
            unhealthy = sorted({b.reason or "unhealthy" for b in live})
            raise NoCapacity("no spawner can start sandboxes: " + "; ".join(unhealthy), retry_after=10)
        healthy = [b for b in healthy if not b.draining]
        if not healthy:
            raise NoCapacity("nbpool is draining for maintenance: no new sessions for now", retry_after=60)

        def pool(beat: SpawnerBeat) -> tuple[int, int, int]:
            counts = beat.pools.get(profile)
            return (counts.warm, counts.starting, beat.waiting) if counts else (0, 0, 0)

        def problem(beat: SpawnerBeat) -> str:
            counts = beat.pools.get(profile)
            return counts.problem if counts else ""

        reasons: list[str] = []
        for beat in sorted((b for b in healthy if pool(b)[0] > 0), key=lambda b: -pool(b)[0]):
            reply = await self._ask(beat.id, ClaimRequest(profile=profile, wait=0, owner=owner), timeout=ASK_SLACK)
            if reply.ok and reply.record is not None:
                return reply.record
            reasons.append(reply.reason)
        able = [b for b in healthy if not problem(b)]
        if not able and not reasons:
            raise NoCapacity(f"no spawner can start sandboxes of profile {profile}: "
                             + "; ".join(sorted({problem(b) for b in healthy})), retry_after=30)
        candidates = [b for b in able if pool(b)[1] > 0 or b.headroom() > 0]
        if not candidates:
            raise NoCapacity("all sandboxes are in use", retry_after=15, full=True)
        if wait <= 0:
            raise NoCapacity("no sandbox is ready yet; more are starting", retry_after=2, coming=True)
        # The spawner with the most starts in flight per claim already waiting there, then the most room.
        best = max(candidates, key=lambda b: (pool(b)[1] - pool(b)[2], b.headroom()))
        request = ClaimRequest(profile=profile, wait=wait, owner=owner)
        reply = await self._ask(best.id, request, timeout=wait + ASK_SLACK)
        if reply.ok and reply.record is not None:
            return reply.record
        raise NoCapacity(f"no sandbox became free within {wait:g} s ({reply.reason})", retry_after=5, coming=True)

    async def _ask(self, spawner_id: str, request: ClaimRequest, timeout: float) -> ClaimReply:
        subject = self._bus.names.claim_subject(spawner_id)
        try:
            msg = await self._bus.nc.request(subject, encode(request), timeout=timeout)
        except nats.errors.NoRespondersError:
            return ClaimReply(ok=False, reason=f"spawner {spawner_id} is not answering")
        except (nats.errors.TimeoutError, nats.errors.Error) as err:
            return ClaimReply(ok=False, reason=f"spawner {spawner_id}: {err.__class__.__name__}")
        try:
            return decode(ClaimReply, msg.data)
        except BadMessage as err:
            return ClaimReply(ok=False, reason=str(err))
