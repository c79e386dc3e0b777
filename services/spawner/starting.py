"""Keeping the pool full: what to start (pool.spawn_plan), and bringing each start to warm.

A start creates the sandbox in the runtime, writes its record (``starting``), waits until the
server answers, prestarts a kernel if asked, waits until the router says its route works, then
moves the record to ``warm`` and puts it in the pool. A start that fails marks the record
``failed``, removes the sandbox and backs off that profile.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import httpx

from nbpool import logs
from nbpool.aio import poll_ready, wait_event
from nbpool.metrics import START_FAILURES, START_SECONDS
from nbpool.models import Route, SandboxRecord, State
from nbpool.records import create_record, transition
from nbpool.runtime import RuntimeUnavailable, SandboxSpec, SpawnFailed
from nbpool.runtime.base import StartsInBackground
from nbpool.spawner.kernel import prestart_kernel
from nbpool.spawner.pool import RefillGate, spawn_plan
from nbpool.spawner.removal import discard, remove
from nbpool.spawner.state import BUS_ERRORS, SpawnerState

__all__ = ["Backoff", "Starter"]

log = logs.get("nbpool.spawner")


class Backoff:
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


class Starter:
    """Starts sandboxes until each profile's pool is at its target (see the module docstring)."""

    def __init__(self, state: SpawnerState) -> None:
        self.state = state
        self.backoff = {name: Backoff() for name in state.settings.profiles}
        self.refills = RefillGate(state.settings.refill_delay)
        self._routed: dict[str, asyncio.Event] = {}

    def route_changed(self, key: str, route: Route | None) -> None:
        if route is not None and route.ready_at is not None and key in self._routed:
            self._routed[key].set()

    def could_warm(self, profile: str) -> bool:
        """Could a sandbox of ``profile`` turn warm here soon (one is starting, or there is room)?"""
        s = self.state
        if profile in s.starting.values():
            return True
        room = s.settings.max_sandboxes - s.total()
        return s.healthy and room > 0 and not self.backoff[profile].blocked() and profile not in s.problems

    async def run(self) -> None:
        """Start what the plan says, whenever something changes (and every second)."""
        s = self.state
        while True:
            s.wake.clear()
            look_again = 1.0  # and when woken by any change; re-checks backoffs and runtime health
            if s.healthy and not s.draining:
                counts = {n: c for n, c in s.counts().items() if not self.backoff[n].blocked() and n not in s.problems}
                waiting = s.waiting()
                plan = spawn_plan(
                    counts,
                    waiting,
                    capacity=s.settings.max_sandboxes,
                    total=s.total(),
                    starting=len(s.starting),
                    concurrency=s.settings.spawn_concurrency,
                )
                plan, held = self.refills.split(plan, counts, waiting, time.monotonic())
                if held is not None:
                    look_again = min(look_again, held)
                for profile, n in plan.items():
                    for _ in range(n):
                        sid = secrets.token_hex(6)
                        s.starting[sid] = profile
                        s.background.start(self.start(sid, profile))
                if plan:
                    s.beat_soon.set()
            await wait_event(s.wake, timeout=look_again)

    async def start(self, sid: str, profile: str) -> None:
        """Start one sandbox and bring it to warm, or fail it and back off."""
        s = self.state
        began = time.monotonic()
        rev = 0
        rec: SandboxRecord | None = None
        path = s.settings.origins.base_path(sid)
        self._routed[sid] = asyncio.Event()
        try:
            spec = SandboxSpec(
                id=sid,
                token=secrets.token_urlsafe(24),
                base_path=path,
                profile=profile,
                image=s.settings.profiles[profile].image_of(profile),
                runtime=s.settings.profiles[profile].runtime,
                share_url=f"{s.settings.public_url}/sessions/{sid}/snapshots" if s.settings.origins.snapshot_url else None,
                embed_origins=s.settings.embed_origins,
                ui=s.settings.profiles[profile].ui,
            )
            sandbox = await self._create(spec)
            ends: dict[str, float] = {}  # each phase's end (see the sandbox.warm event below)

            def ended(phase: str) -> None:
                ends[phase] = time.monotonic()

            ended("created")
            s.known.add(sid)
            rec = SandboxRecord(
                id=sid, host=s.id, pool=profile, state=State.STARTING, target=sandbox.target, path=path,
                token=spec.token, created_at=time.time(),
            )
            kv = await s.sandboxes()
            rev = await create_record(kv, rec)
            s.event("sandbox.starting", sid, data={"profile": profile})
            deadline = began + s.settings.start_timeout
            await self._wait_answering(rec, deadline)
            ended("answered")
            notebook = s.settings.profiles[profile].prestart_of(s.settings.prestart_notebook)
            if s.settings.prestart_kernel and notebook is not None:
                remaining = max(1.0, deadline - time.monotonic())
                async with asyncio.timeout(remaining):
                    kernel_id = await prestart_kernel(s.http, rec, notebook, remaining, ended)
                rec = rec.model_copy(update={"kernel_id": kernel_id})
            ended("warmed")
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                await self._routed[sid].wait()
            ended("routed")
            if isinstance(s.runtime, StartsInBackground):
                await s.runtime.promote(sid)  # started at a low CPU priority; from now on it serves
            moved = await transition(kv, sid, State.WARM, from_={State.STARTING}, known=(rec, rev),
                                     warm_at=time.time(), kernel_id=rec.kernel_id)
            if moved is None:
                raise SpawnFailed("its record was changed or deleted while it started")
            self.backoff[profile].succeeded()
            if s.draining:  # the drain began while it was starting
                await remove(s, moved.record, "drained")
                return
            s.pool.put(profile, sid)
            took = round(time.monotonic() - began, 3)
            START_SECONDS.labels(s.id).observe(took)
            log.info("warm", **s.log(sid, startup_s=took))
            # Where the start's time went: each phase's end, in seconds from its beginning (created,
            # answered, the kernel's session and first answer, warmed, routed).
            s.event("sandbox.warm", sid, data={"profile": profile, "startup_s": took,
                                               **{f"{phase}_s": round(at - began, 3) for phase, at in ends.items()}})
        except asyncio.CancelledError:
            raise
        except RuntimeUnavailable as err:
            s.set_health(False, f"runtime unavailable: {err}")
            await self._fail(sid, rec, rev, f"runtime unavailable: {err}", profile)
        except Exception as err:
            cause = "did not answer or was not routed in time" if isinstance(err, TimeoutError) else str(err)
            await self._fail(sid, rec, rev, cause or repr(err), profile)
        finally:
            s.starting.pop(sid, None)
            self._routed.pop(sid, None)
            s.changed()

    async def _create(self, spec: SandboxSpec) -> Any:
        """runtime.create, but a cancelled start does not leave behind what the runtime still makes."""
        create = asyncio.ensure_future(self.state.runtime.create(spec))
        try:
            return await asyncio.shield(create)
        except asyncio.CancelledError:
            try:
                async with asyncio.timeout(60):
                    await create
                await self.state.runtime.remove(spec.id)
            except Exception:  # it failed after all: nothing to remove
                pass
            raise

    async def _wait_answering(self, rec: SandboxRecord, deadline: float) -> None:
        url = f"{rec.target}{rec.path}api"
        runtime = self.state.runtime
        looked = time.monotonic()

        async def answers() -> bool | None:
            nonlocal looked
            try:
                if (await self.state.http.get(url, timeout=2.0)).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            # Has it died? Asking the runtime costs the spawner and the engine far more than a
            # refused connection: once a second, not at every try.
            if time.monotonic() - looked < 1.0:
                return None
            looked = time.monotonic()
            sandbox = await runtime.inspect(rec.id)
            if sandbox is None or not sandbox.alive:
                last = (await runtime.logs(rec.id, lines=3)).strip().splitlines()
                raise SpawnFailed("the server exited during start-up" + (f": {last[-1]}" if last else ""))
            return None

        await poll_ready(answers, deadline=deadline)

    async def _fail(self, sid: str, rec: SandboxRecord | None, rev: int, cause: str, profile: str) -> None:
        s = self.state
        delay = self.backoff[profile].failed()
        START_FAILURES.labels(s.id).inc()
        log.warning("start failed", **s.log(sid, cause=cause, retry_in_s=delay))
        await s.bus.event("sandbox.failed", sid, host=s.id, cause=cause, data={"profile": profile, "retry_in_s": delay})
        if rec is not None and rev:
            try:
                await transition(await s.sandboxes(), sid, State.FAILED, from_={State.STARTING}, known=(rec, rev),
                                 ending_reason=cause)
            except BUS_ERRORS as err:
                log.warning("failed state not written", **s.log(sid, error=repr(err)))
        await discard(s, sid, record_exists=rec is not None)
