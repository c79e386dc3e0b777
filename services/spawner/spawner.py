"""The spawner service: warm pool, claims, activity heartbeats, removal, reconciliation.

It owns the sandboxes whose record says ``host == spawner_id``. Record writes are compare-and-set
on the KV revision, so a sandbox is handed out once, whoever races for it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Coroutine
from typing import Any

import httpx
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nbpool import logs
from nbpool.aio import wait_event
from nbpool.bus import Bus, KVMirror
from nbpool.models import (
    BadMessage,
    ClaimReply,
    ClaimRequest,
    Drain,
    PoolCounts,
    Route,
    SandboxRecord,
    SpawnerBeat,
    State,
    decode,
    encode,
)
from nbpool.runtime import Runtime, RuntimeUnavailable, SandboxSpec, SpawnFailed
from nbpool.runtime.base import ReportsEvents, StartsInBackground
from nbpool.settings import SpawnerSettings
from nbpool.spawner.activity import read_activity
from nbpool.spawner.kernel import prestart_kernel
from nbpool.spawner.pool import RefillGate, WarmPool, spawn_plan

__all__ = ["Spawner"]

log = logs.get("nbpool.spawner")

_BUS_ERRORS = (nats.errors.Error, asyncio.TimeoutError)


def _new_id() -> str:
    return secrets.token_hex(6)


class _Backoff:
    """Delay before the next start after failures: 1 s, 2 s, 4 s ... 60 s; reset by a success."""

    def __init__(self) -> None:
        self.failures = 0
        self.until = 0.0

    def failed(self) -> float:
        self.failures += 1
        delay = min(60.0, 2.0 ** (self.failures - 1))
        self.until = time.monotonic() + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.until = 0.0

    def blocked(self) -> bool:
        return time.monotonic() < self.until


class Spawner:
    """One spawner replica (see the module docstring)."""

    def __init__(self, settings: SpawnerSettings, bus: Bus, runtime: Runtime) -> None:
        self.settings = settings
        self.id = settings.spawner_id
        self.bus = bus
        self.runtime = runtime
        names = bus.names
        self.records: KVMirror[SandboxRecord] = KVMirror(bus, names.sandboxes, SandboxRecord, self._record_changed)
        self.routes: KVMirror[Route] = KVMirror(bus, names.routes, Route, self._route_changed)
        self.control: KVMirror[Drain] = KVMirror(bus, names.control, Drain, self._control_changed)
        self.pool = WarmPool()
        #: Sandboxes that exist in the runtime because of this spawner (what counts against capacity).
        self.known: set[str] = set()
        #: Starts in flight: id -> profile.
        self.starting: dict[str, str] = {}
        self.removing: set[str] = set()
        self.healthy = True
        self.reason = ""
        #: Set once the spawner is on its way out: the runtime's reports of sandboxes ending are ours.
        self.stopping = False
        self._backoff = {name: _Backoff() for name in settings.profiles}
        self._routed: dict[str, asyncio.Event] = {}
        self._unanswered: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._refills = RefillGate(settings.refill_delay)
        self._beat_soon = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(5.0, connect=2.0))

    # ---- helpers -------------------------------------------------------------------------

    def _spawn_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ours(self) -> set[str]:
        """Ids this spawner accounts for: its records, and sandboxes starting or being removed."""
        return {rec.id for rec, _ in self._mine()} | set(self.starting) | self.removing

    def _mine(self) -> list[tuple[SandboxRecord, int]]:
        return [(rec, rev) for rec, rev in self.records.items.values() if rec.host == self.id]

    def _log(self, sandbox_id: str, **fields: Any) -> dict[str, Any]:
        return {"extra": {"sandbox": sandbox_id, **fields}}

    async def _sandboxes(self) -> Any:
        return await self.bus.kv(self.bus.names.sandboxes)

    # ---- mirrors -------------------------------------------------------------------------

    def _record_changed(self, key: str, rec: SandboxRecord | None) -> None:
        if rec is None:
            if self.pool.discard(key):
                self._changed()
            return
        if rec.host != self.id:
            return
        if rec.state == State.ENDING:
            self.pool.discard(key)
            self._spawn_task(self._remove(rec, rec.ending_reason or "ended"))

    def _route_changed(self, key: str, route: Route | None) -> None:
        if route is not None and route.ready_at is not None and key in self._routed:
            self._routed[key].set()

    @property
    def draining(self) -> bool:
        drain = self.control.get("drain")
        return drain is not None and drain.draining

    def _control_changed(self, key: str, doc: Drain | None) -> None:
        if key != "drain":
            return
        if self.draining:
            log.info("draining: ending warm sandboxes, starting none")
            for rec, _ in self._mine():
                if rec.state == State.WARM and self.pool.discard(rec.id):
                    self._spawn_task(self._remove(rec, "drained"))
        else:
            log.info("drain over: refilling the pool")
        self._changed()

    def _changed(self) -> None:
        self._wake.set()
        self._beat_soon.set()

    # ---- life ----------------------------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        """Reconcile, then answer claims and keep the pool full until ``stop`` is set."""
        mirrors = [asyncio.ensure_future(m.run()) for m in (self.records, self.routes, self.control)]
        try:
            await asyncio.gather(self.records.ready.wait(), self.routes.ready.wait(), self.control.ready.wait())
            await self.reconcile()
            sub = await self.bus.nc.subscribe(self.bus.names.claim_subject(self.id), cb=self._on_claim)
            loops = [
                asyncio.ensure_future(self._pool_loop()),
                asyncio.ensure_future(self._beat_loop()),
                asyncio.ensure_future(self._activity_loop()),
                asyncio.ensure_future(self._health_loop()),
            ]
            if isinstance(self.runtime, ReportsEvents):
                loops.append(asyncio.ensure_future(self.runtime.watch_events(self._runtime_event)))
            log.info("serving", extra={"spawner": self.id, "runtime": self.runtime.name})
            try:
                await stop.wait()
            finally:
                self.stopping = True
                await sub.unsubscribe()
                for task in loops:
                    task.cancel()
                await asyncio.gather(*loops, return_exceptions=True)
                if self.settings.remove_on_stop:
                    await self.remove_all("shutdown")
        finally:
            for task in [*mirrors, *self._tasks]:
                task.cancel()
            await asyncio.gather(*mirrors, *self._tasks, return_exceptions=True)
            await self._http.aclose()
            await self.runtime.close()

    async def reconcile(self) -> None:
        """Make the records and the runtime agree after a (re)start.

        Claimed and warm sandboxes whose server still runs are adopted; everything else of this
        spawner (starting, failed, ending, records without a server, servers without a record) is
        removed.
        """
        while True:
            try:
                found = {sb.id: sb for sb in await self.runtime.list()}
                self._set_health(True, "")
                break
            except RuntimeUnavailable as err:
                self._set_health(False, f"runtime unavailable: {err}")
                await self._beat()
                await asyncio.sleep(2.0)
        adopted = removed = 0
        for rec, _ in self._mine():
            sandbox = found.pop(rec.id, None)
            alive = sandbox is not None and sandbox.alive
            if alive:
                self.known.add(rec.id)
            # A warm sandbox served under another routing (NBPOOL_ROUTING changed) would never be routed.
            routed_as_now = rec.path == self.settings.origins.base_path(rec.id)
            if alive and (rec.state == State.CLAIMED or (rec.state == State.WARM and routed_as_now and not self.draining)):
                if rec.state == State.WARM:
                    self.pool.put(rec.pool, rec.id)
                adopted += 1
                continue
            self.known.add(rec.id)
            reason = "lost" if not alive else f"reconcile:{rec.state}"
            await self._remove(rec, reason)
            removed += 1
        for orphan in found.values():
            log.info("removing orphan", **self._log(orphan.id))
            await self.runtime.remove(orphan.id)
            await self.bus.event("sandbox.removed", orphan.id, host=self.id, cause="orphan")
            removed += 1
        log.info("reconciled", extra={"adopted": adopted, "removed": removed})
        await self.bus.event("spawner.reconciled", host=self.id, data={"adopted": adopted, "removed": removed})
        self._changed()

    async def remove_all(self, reason: str) -> None:
        """End every sandbox of this spawner (``nbpool up`` does this on Ctrl-C).

        Servers are stopped first, all at once; records are then deleted if the bus is there
        (if not, the next reconcile deletes them).
        """
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        records = {rec.id: rec for rec, _ in self._mine()}
        ids = self.known | records.keys()
        try:
            ids |= {sb.id for sb in await self.runtime.list()}  # and any the bookkeeping missed
        except RuntimeUnavailable:
            pass
        await asyncio.gather(*(self.runtime.remove(sid) for sid in ids), return_exceptions=True)
        self.known.clear()
        log.info("removed all sandboxes", extra={"count": len(ids)})
        if not self.bus.nc.is_connected:
            return

        async def forget(sid: str) -> None:
            await (await self._sandboxes()).delete(sid)
            await (await self.bus.kv(self.bus.names.activity)).delete(sid)
            await self.bus.event("sandbox.ended", sid, host=self.id, cause=reason)

        try:
            await asyncio.wait_for(asyncio.gather(*(forget(sid) for sid in records)), timeout=10)
        except (*_BUS_ERRORS, nats.js.errors.Error) as err:
            log.warning("records not all deleted; the next start reconciles them", extra={"error": repr(err)})

    # ---- pool ----------------------------------------------------------------------------

    def counts(self) -> dict[str, PoolCounts]:
        counts = {name: PoolCounts(target=self.settings.pool_target(name)) for name in self.settings.profiles}
        for name in counts:
            counts[name].warm = self.pool.warm(name)
        for profile in self.starting.values():
            if profile in counts:
                counts[profile].starting += 1
        for rec, _ in self._mine():
            if rec.state == State.CLAIMED and rec.pool in counts:
                counts[rec.pool].claimed += 1
        return counts

    def _waiting(self) -> dict[str, int]:
        return {name: self.pool.waiting(name) for name in self.settings.profiles}

    async def _pool_loop(self) -> None:
        while True:
            self._wake.clear()
            look_again = 1.0  # and when woken by any change; re-checks backoffs and runtime health
            if self.healthy and not self.draining:
                counts = {n: c for n, c in self.counts().items() if not self._backoff[n].blocked()}
                waiting = self._waiting()
                plan = spawn_plan(
                    counts,
                    waiting,
                    capacity=self.settings.max_sandboxes,
                    total=len(self.known | set(self.starting)),
                    starting=len(self.starting),
                    concurrency=self.settings.spawn_concurrency,
                )
                plan, held = self._refills.split(plan, counts, waiting, time.monotonic())
                if held is not None:
                    look_again = min(look_again, held)
                for profile, n in plan.items():
                    for _ in range(n):
                        sid = _new_id()
                        self.starting[sid] = profile
                        self._spawn_task(self._start(sid, profile))
                if plan:
                    self._beat_soon.set()
            await wait_event(self._wake, timeout=look_again)

    async def _start(self, sid: str, profile: str) -> None:
        """Start one sandbox and bring it to warm, or fail it and back off."""
        began = time.monotonic()
        rev = 0
        rec: SandboxRecord | None = None
        path = self.settings.origins.base_path(sid)
        self._routed[sid] = asyncio.Event()
        try:
            spec = SandboxSpec(
                id=sid,
                token=secrets.token_urlsafe(24),
                base_path=path,
                profile=profile,
                image=self.settings.profiles[profile].image,
                runtime=self.settings.profiles[profile].runtime,
            )
            sandbox = await self._create(spec)
            self.known.add(sid)
            rec = SandboxRecord(
                id=sid,
                host=self.id,
                pool=profile,
                state=State.STARTING,
                target=sandbox.target,
                path=path,
                token=spec.token,
                created_at=time.time(),
            )
            kv = await self._sandboxes()
            rev = await kv.create(sid, encode(rec))
            self._spawn_task(self.bus.event("sandbox.starting", sid, host=self.id, data={"profile": profile}))
            deadline = began + self.settings.start_timeout
            await self._wait_answering(rec, deadline)
            answered = time.monotonic()
            if self.settings.prestart_kernel:
                remaining = max(1.0, deadline - time.monotonic())
                kernel_id = await asyncio.wait_for(
                    prestart_kernel(self._http, rec, self.settings.prestart_notebook, remaining), remaining
                )
                rec = rec.model_copy(update={"kernel_id": kernel_id})
            await asyncio.wait_for(self._routed[sid].wait(), timeout=max(0.1, deadline - time.monotonic()))
            if isinstance(self.runtime, StartsInBackground):
                await self.runtime.promote(sid)  # started at a low CPU priority; from now on it serves
            warm = rec.moved(State.WARM, warm_at=time.time())
            await kv.update(sid, encode(warm), last=rev)
            self._backoff[profile].succeeded()
            if self.draining:  # the drain began while it was starting
                await self._remove(warm, "drained")
                return
            self.pool.put(profile, sid)
            log.info("warm", **self._log(sid, startup_s=round(time.monotonic() - began, 3)))
            self._spawn_task(
                self.bus.event(
                    "sandbox.warm",
                    sid,
                    host=self.id,
                    data={
                        "profile": profile,
                        "startup_s": round(time.monotonic() - began, 3),
                        "answered_s": round(answered - began, 3),
                    },
                )
            )
        except asyncio.CancelledError:
            raise
        except RuntimeUnavailable as err:
            self._set_health(False, f"runtime unavailable: {err}")
            await self._fail(sid, rec, rev, f"runtime unavailable: {err}", profile)
        except Exception as err:
            cause = "did not answer or was not routed in time" if isinstance(err, asyncio.TimeoutError) else str(err)
            await self._fail(sid, rec, rev, cause or repr(err), profile)
        finally:
            self.starting.pop(sid, None)
            self._routed.pop(sid, None)
            self._changed()

    async def _create(self, spec: SandboxSpec) -> Any:
        """runtime.create, but a cancelled start does not leave behind what the runtime still makes."""
        create = asyncio.ensure_future(self.runtime.create(spec))
        try:
            return await asyncio.shield(create)
        except asyncio.CancelledError:
            try:
                await asyncio.wait_for(create, timeout=60)
                await self.runtime.remove(spec.id)
            except Exception:  # it failed after all: nothing to remove
                pass
            raise

    async def _wait_answering(self, rec: SandboxRecord, deadline: float) -> None:
        url = f"{rec.target}{rec.path}api"
        delay = 0.05
        while time.monotonic() < deadline:
            try:
                resp = await self._http.get(url, timeout=2.0)
                if resp.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            sandbox = await self.runtime.inspect(rec.id)
            if sandbox is None or not sandbox.alive:
                last = (await self.runtime.logs(rec.id, lines=3)).strip().splitlines()
                raise SpawnFailed("the server exited during start-up" + (f": {last[-1]}" if last else ""))
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)
        raise TimeoutError

    async def _fail(self, sid: str, rec: SandboxRecord | None, rev: int, cause: str, profile: str) -> None:
        delay = self._backoff[profile].failed()
        log.warning("start failed", **self._log(sid, cause=cause, retry_in_s=delay))
        await self.bus.event("sandbox.failed", sid, host=self.id, cause=cause, data={"profile": profile, "retry_in_s": delay})
        if rec is not None and rev:
            try:
                kv = await self._sandboxes()
                await kv.update(sid, encode(rec.moved(State.FAILED, ending_reason=cause)), last=rev)
            except (*_BUS_ERRORS, nats.js.errors.Error):
                pass
        await self._discard(sid, record_exists=rec is not None)

    async def _discard(self, sid: str, record_exists: bool = True) -> None:
        """Remove the runtime sandbox, then its record and activity (in that order: no orphan servers)."""
        try:
            await self.runtime.remove(sid)
        except RuntimeUnavailable:
            return  # reconcile removes it once the runtime is back
        self.known.discard(sid)
        if record_exists:
            kv = await self._sandboxes()
            await kv.delete(sid)
        activity = await self.bus.kv(self.bus.names.activity)
        try:
            await activity.delete(sid)
        except nats.js.errors.Error:
            pass

    async def _remove(self, rec: SandboxRecord, reason: str) -> None:
        """End a sandbox of this spawner: stop it, drop its record, say so."""
        if rec.id in self.removing:
            return
        self.removing.add(rec.id)
        try:
            self.pool.discard(rec.id)
            await self._discard(rec.id)
            log.info("removed", **self._log(rec.id, reason=reason))
            await self.bus.event("sandbox.ended", rec.id, host=self.id, cause=reason, data={"profile": rec.pool})
        except _BUS_ERRORS as err:
            log.warning("remove incomplete, will retry", **self._log(rec.id, error=repr(err)))
        finally:
            self.removing.discard(rec.id)
            self._changed()

    # ---- claims --------------------------------------------------------------------------

    async def _on_claim(self, msg: Msg) -> None:
        # Callbacks of one subscription run one at a time: answer each claim in its own task.
        self._spawn_task(self._answer_claim(msg))

    async def _answer_claim(self, msg: Msg) -> None:
        try:
            req = decode(ClaimRequest, msg.data)
        except BadMessage as err:
            log.warning("bad claim request", extra={"error": str(err)})
            await msg.respond(encode(ClaimReply(ok=False, reason=str(err))))
            return
        try:
            reply = await self.claim(req)
        except _BUS_ERRORS as err:
            reply = ClaimReply(ok=False, reason=f"bus error: {err!r}")
        await msg.respond(encode(reply))

    def _could_warm(self, profile: str) -> bool:
        """Could a sandbox of ``profile`` turn warm here soon (one is starting, or there is room)?"""
        if profile in self.starting.values():
            return True
        room = self.settings.max_sandboxes - len(self.known | set(self.starting))
        return self.healthy and room > 0 and not self._backoff[profile].blocked()

    async def claim(self, req: ClaimRequest) -> ClaimReply:
        """Hand out the oldest warm sandbox of the profile, waiting up to ``req.wait`` in line."""
        if req.profile not in self.settings.profiles:
            return ClaimReply(ok=False, reason=f"unknown profile {req.profile!r}")
        if not self.healthy:
            return ClaimReply(ok=False, reason=self.reason)
        if self.draining:
            return ClaimReply(ok=False, reason="draining")
        deadline = time.monotonic() + req.wait
        kv = await self._sandboxes()
        while True:
            if not self.pool.warm(req.profile) and not self._could_warm(req.profile):
                return ClaimReply(ok=False, reason=self.reason or "full")
            wait = deadline - time.monotonic()
            if wait > 0 and not self.pool.warm(req.profile):
                self._wake.set()  # a waiting claim raises the pool's want
            sid = await self.pool.take(req.profile, max(0.0, wait))
            if sid is None:
                return ClaimReply(ok=False, reason=self.reason or "full")
            claimed = await self._cas_claim(kv, sid, req.owner)
            if claimed is not None:
                self._refills.claimed(time.monotonic())
                self._changed()
                self._spawn_task(self.bus.event("sandbox.claimed", sid, host=self.id, data={"profile": req.profile}))
                return ClaimReply(ok=True, record=claimed)

    async def _cas_claim(self, kv: Any, sid: str, owner: str | None) -> SandboxRecord | None:
        """warm -> claimed by compare-and-set; None if the sandbox is no longer warm."""
        item = self.records.items.get(sid)
        for _ in range(3):
            if item is None or item[0].state != State.WARM:
                # The mirror may lag behind our own write of "warm": ask the bucket itself.
                try:
                    entry = await kv.get(sid)
                except nats.js.errors.KeyNotFoundError:
                    return None
                item = (decode(SandboxRecord, entry.value or b""), entry.revision or 0)
                if item[0].state != State.WARM:
                    return None
            rec, rev = item
            claimed = rec.moved(State.CLAIMED, claimed_at=time.time(), owner=owner)
            try:
                await kv.update(sid, encode(claimed), last=rev)
                return claimed
            except nats.js.errors.KeyWrongLastSequenceError:
                item = None
        return None

    def _runtime_event(self, sandbox_id: str, kind: str) -> None:
        if self.stopping:
            return  # the spawner is ending its sandboxes itself (remove_all)
        if kind == "oom":
            # The OOM killer hit a process in the sandbox (usually the kernel, which Jupyter
            # restarts): say so; if the server itself died, the "died" event follows.
            log.warning("sandbox hit its memory limit", **self._log(sandbox_id))
            self._spawn_task(self.bus.event("sandbox.oom", sandbox_id, host=self.id, cause="memory limit"))
        elif kind == "died":
            # Out of the pool at once, so no claim gets it; removed and replaced right after.
            self.pool.discard(sandbox_id)
            item = self.records.items.get(sandbox_id)
            if item is not None and item[0].state in (State.WARM, State.CLAIMED) and sandbox_id not in self.starting:
                log.warning("sandbox died", **self._log(sandbox_id, state=item[0].state))
                self._spawn_task(self._remove(item[0], "died"))

    # ---- heartbeats, activity, health ----------------------------------------------------

    def _set_health(self, healthy: bool, reason: str) -> None:
        if healthy != self.healthy:
            log.warning("health changed", extra={"healthy": healthy, "reason": reason})
            self._spawn_task(self.bus.event("spawner.health", host=self.id, cause=reason, data={"healthy": healthy}))
        self.healthy, self.reason = healthy, reason
        self._beat_soon.set()

    def beat(self) -> SpawnerBeat:
        return SpawnerBeat(
            id=self.id,
            runtime=self.runtime.name,
            healthy=self.healthy,
            reason=self.reason,
            capacity=self.settings.max_sandboxes,
            total=len(self.known | set(self.starting)),
            pools=self.counts(),
            waiting=sum(self._waiting().values()),
            draining=self.draining,
        )

    async def _beat(self) -> None:
        try:
            kv = await self.bus.kv(self.bus.names.spawners)
            await kv.put(self.id, encode(self.beat()))
        except _BUS_ERRORS as err:
            log.debug("heartbeat not sent", extra={"error": repr(err)})

    async def _beat_loop(self) -> None:
        while True:
            self._beat_soon.clear()
            await self._beat()
            if await wait_event(self._beat_soon, timeout=self.settings.heartbeat_interval):
                await asyncio.sleep(0.05)  # gather a burst of changes into one beat

    async def _activity_loop(self) -> None:
        limit = asyncio.Semaphore(32)

        async def poll(rec: SandboxRecord) -> None:
            async with limit:
                try:
                    activity = await read_activity(self._http, rec)
                except (httpx.HTTPError, ValueError) as err:
                    log.debug("activity not read", **self._log(rec.id, error=repr(err)))
                    return
                kv = await self.bus.kv(self.bus.names.activity)
                await kv.put(rec.id, encode(activity))

        while True:
            claimed = [rec for rec, _ in self._mine() if rec.state == State.CLAIMED and rec.id not in self.removing]
            results = await asyncio.gather(*(poll(rec) for rec in claimed), return_exceptions=True)
            for rec, result in zip(claimed, results, strict=True):
                if isinstance(result, Exception):
                    log.debug("activity not published", **self._log(rec.id, error=repr(result)))
            await asyncio.sleep(self.settings.activity_interval)

    async def _health_loop(self) -> None:
        """Replace sandboxes whose server died or stopped answering; follow the runtime's health."""
        rounds = 0
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            rounds += 1
            # The listing can take a while under load: it is judged against what this spawner
            # knew when it began, so nothing that changed meanwhile looks dead or orphaned.
            serving_before = {rec.id for rec, _ in self._mine() if rec.state in (State.WARM, State.CLAIMED)}
            ours_before = self._ours()
            try:
                found = {sb.id: sb for sb in await self.runtime.list()}
            except RuntimeUnavailable as err:
                self._set_health(False, f"runtime unavailable: {err}")
                continue
            if not self.healthy:
                self._set_health(True, "")
                self._changed()
            for rec, _ in self._mine():
                if rec.id not in serving_before or rec.id in self.starting or rec.id in self.removing:
                    continue
                sandbox = found.get(rec.id)
                if rec.state in (State.WARM, State.CLAIMED) and (sandbox is None or not sandbox.alive):
                    log.warning("sandbox died", **self._log(rec.id, state=rec.state))
                    await self._remove(rec, "died")
            for sid in found.keys() - ours_before - self._ours():
                # A server with no record (its record was deleted behind our back).
                log.warning("removing sandbox without record", **self._log(sid))
                await self.runtime.remove(sid)
                self.known.discard(sid)
                self._changed()
            if rounds % 5 == 0:
                await self._check_pool()

    async def _check_pool(self) -> None:
        """Ask each warm sandbox's server if it answers; one that fails twice in a row is replaced."""
        limit = asyncio.Semaphore(32)

        async def answers(rec: SandboxRecord) -> bool:
            async with limit:
                try:
                    return (await self._http.get(f"{rec.target}{rec.path}api", timeout=3.0)).status_code == 200
                except httpx.HTTPError:
                    return False

        warm = [rec for rec, _ in self._mine() if rec.state == State.WARM and rec.id in self.pool.ids()]
        results = await asyncio.gather(*(answers(rec) for rec in warm))
        for rec, ok in zip(warm, results, strict=True):
            if ok:
                self._unanswered.pop(rec.id, None)
                continue
            self._unanswered[rec.id] = self._unanswered.get(rec.id, 0) + 1
            # Only if it is still in the pool: it may have been claimed while we asked.
            if self._unanswered[rec.id] >= 2 and self.pool.discard(rec.id):
                self._unanswered.pop(rec.id, None)
                log.warning("pooled sandbox stopped answering", **self._log(rec.id))
                await self._remove(rec, "unresponsive")
