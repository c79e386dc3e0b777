"""Answering claims: the oldest warm sandbox of the profile, moved warm -> claimed once, whoever races for it."""

from __future__ import annotations

import time

from nats.aio.msg import Msg

from nbpool import logs
from nbpool.metrics import CLAIMS
from nbpool.models import BadMessage, ClaimReply, ClaimRequest, State, decode, encode
from nbpool.records import transition
from nbpool.spawner.starting import Starter
from nbpool.spawner.state import BUS_ERRORS, SpawnerState

__all__ = ["CLAIM_BUS_BUDGET", "ClaimDesk"]

#: Seconds a claim's compare-and-set is retried through a bus election (they take seconds); the
#: gateway waits this long and more for the answer (nbpool.gateway.claims.ASK_SLACK).
CLAIM_BUS_BUDGET = 8.0

log = logs.get("nbpool.spawner")


class ClaimDesk:
    """Answers ``<instance>.claim.<spawner id>`` requests (see the module docstring)."""

    def __init__(self, state: SpawnerState, starter: Starter) -> None:
        self.state = state
        self.starter = starter

    async def on_request(self, msg: Msg) -> None:
        # Callbacks of one subscription run one at a time: answer each claim in its own task.
        self.state.background.start(self._answer(msg))

    async def _answer(self, msg: Msg) -> None:
        try:
            req = decode(ClaimRequest, msg.data)
        except BadMessage as err:
            log.warning("bad claim request", extra={"error": str(err)})
            await msg.respond(encode(ClaimReply(ok=False, reason=str(err))))
            return
        try:
            reply = await self.claim(req)
        except BUS_ERRORS as err:
            reply = ClaimReply(ok=False, reason=f"bus error: {err!r}")
        await msg.respond(encode(reply))

    async def claim(self, req: ClaimRequest) -> ClaimReply:
        """Hand out the oldest warm sandbox of the profile, waiting up to ``req.wait`` in line."""
        s = self.state
        if req.profile not in s.settings.profiles:
            return ClaimReply(ok=False, reason=f"unknown profile {req.profile!r}")
        if not s.healthy:
            return ClaimReply(ok=False, reason=s.reason)
        if s.draining:
            return ClaimReply(ok=False, reason="draining")
        deadline = time.monotonic() + req.wait
        kv = await s.sandboxes()
        while True:
            if not s.pool.warm(req.profile) and not self.starter.could_warm(req.profile):
                return ClaimReply(ok=False, reason=s.reason or "full")
            wait = deadline - time.monotonic()
            if wait > 0 and not s.pool.warm(req.profile):
                s.wake.set()  # a waiting claim raises the pool's want
            sid = await s.pool.take(req.profile, max(0.0, wait))
            if sid is None:
                CLAIMS.labels(s.id, "none").inc()
                return ClaimReply(ok=False, reason=s.reason or "full")
            # The mirror's copy, if it already shows warm; else (it may lag behind our own write
            # of "warm") transition reads the bucket itself.
            item = s.records.items.get(sid)
            known = item if item is not None and item[0].state == State.WARM else None
            try:
                moved = await transition(kv, sid, State.CLAIMED, from_={State.WARM}, known=known, attempts=3,
                                         budget=CLAIM_BUS_BUDGET, claimed_at=time.time(), owner=req.owner)
            except BaseException:
                # The bus stayed away: back in the pool. If the write was applied after all, the
                # next claim of it finds it claimed (compare-and-set) and takes another.
                s.pool.put(req.profile, sid)
                raise
            if moved is not None:
                self.starter.refills.claimed(time.monotonic())
                s.changed()
                s.event("sandbox.claimed", sid, data={"profile": req.profile})
                CLAIMS.labels(s.id, "claimed").inc()
                return ClaimReply(ok=True, record=moved.record)
