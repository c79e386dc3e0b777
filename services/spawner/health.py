"""Keeping the sandboxes honest: replace the ones whose server died or stopped answering, remove
servers without a record, retry removals the runtime could not do, and follow the runtime's health."""

from __future__ import annotations

import asyncio

import httpx

from nbpool import logs
from nbpool.models import SandboxRecord, State
from nbpool.records import read_record
from nbpool.runtime import RuntimeUnavailable
from nbpool.spawner.images import check_images
from nbpool.spawner.removal import remove, retry_stuck
from nbpool.spawner.state import SpawnerState

__all__ = ["HealthWatch"]

log = logs.get("nbpool.spawner")


class HealthWatch:
    """The spawner's health loop and the runtime's reports (see the module docstring)."""

    def __init__(self, state: SpawnerState) -> None:
        self.state = state
        self._unanswered: dict[str, int] = {}

    async def run(self) -> None:
        """A round every heartbeat interval; a round that fails is logged, and the next one comes."""
        rounds = 0
        while True:
            await asyncio.sleep(self.state.settings.heartbeat_interval)
            rounds += 1
            try:
                await self._round(rounds)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("health round failed; the next one comes in a heartbeat interval")

    async def _round(self, rounds: int) -> None:
        s = self.state
        # The listing can take a while under load: it is judged against what this spawner
        # knew when it began, so nothing that changed meanwhile looks dead or orphaned.
        serving_before = {rec.id for rec, _ in s.mine() if rec.state in (State.WARM, State.CLAIMED)}
        ours_before = s.ours()
        try:
            found = {sb.id: sb for sb in await s.runtime.list()}
        except RuntimeUnavailable as err:
            s.set_health(False, f"runtime unavailable: {err}")
            return
        if not s.healthy:
            s.set_health(True, "")
            s.changed()
        await retry_stuck(s)
        for rec, _ in s.mine():
            if rec.id not in serving_before or rec.id in s.starting or rec.id in s.removing:
                continue
            sandbox = found.get(rec.id)
            if rec.state in (State.WARM, State.CLAIMED) and (sandbox is None or not sandbox.alive):
                log.warning("sandbox died", **s.log(rec.id, state=rec.state))
                await remove(s, rec, "died")
        kv = await s.sandboxes()
        for sid in found.keys() - ours_before - s.ours():
            # A server with no record (its record was deleted behind our back). The mirror can lag
            # or be reading afresh (after a bus node died): only the bucket itself may say so.
            if await read_record(kv, sid) is not None:
                continue
            log.warning("removing sandbox without record", **s.log(sid))
            await s.runtime.remove(sid)
            s.known.discard(sid)
            s.changed()
        await check_images(s, found)
        if rounds % 5 == 0:
            await self._check_pool()

    async def _check_pool(self) -> None:
        """Ask each warm sandbox's server if it answers; one that fails twice in a row is replaced."""
        s = self.state
        limit = asyncio.Semaphore(32)

        async def answers(rec: SandboxRecord) -> bool:
            async with limit:
                try:
                    return (await s.http.get(f"{rec.target}{rec.path}api", timeout=3.0)).status_code == 200
                except httpx.HTTPError:
                    return False

        warm = [rec for rec, _ in s.mine() if rec.state == State.WARM and rec.id in s.pool.ids()]
        results = await asyncio.gather(*(answers(rec) for rec in warm))
        for rec, ok in zip(warm, results, strict=True):
            if ok:
                self._unanswered.pop(rec.id, None)
                continue
            self._unanswered[rec.id] = self._unanswered.get(rec.id, 0) + 1
            # Only if it is still in the pool: it may have been claimed while we asked.
            if self._unanswered[rec.id] >= 2 and s.pool.discard(rec.id):
                self._unanswered.pop(rec.id, None)
                log.warning("pooled sandbox stopped answering", **s.log(rec.id))
                await remove(s, rec, "unresponsive")

    def runtime_event(self, sandbox_id: str, kind: str) -> None:
        """A report from the runtime (``oom``, ``died``) about one of this spawner's sandboxes."""
        s = self.state
        if s.stopping:
            return  # the spawner is ending its sandboxes itself (remove_all)
        if kind == "oom":
            # The OOM killer hit a process in the sandbox (usually the kernel, which Jupyter
            # restarts): say so; if the server itself died, the "died" event follows.
            log.warning("sandbox hit its memory limit", **s.log(sandbox_id))
            s.event("sandbox.oom", sandbox_id, cause="memory limit")
        elif kind == "died":
            # Out of the pool at once, so no claim gets it; removed and replaced right after.
            s.pool.discard(sandbox_id)
            rec = s.records.get(sandbox_id)
            if (rec is not None and rec.state in (State.WARM, State.CLAIMED) and sandbox_id not in s.starting
                    and sandbox_id not in s.removing):  # (one this spawner is removing is not news)
                log.warning("sandbox died", **s.log(sandbox_id, state=rec.state))
                s.background.start(remove(s, rec, "died"))
