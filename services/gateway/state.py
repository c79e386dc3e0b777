"""The gateway's live state and the operations its routes share.

A :class:`Gateway` is made with the app and started by its lifespan: it connects to the bus,
follows the spawners' heartbeats, the records, the activity and the drain switch, and keeps the
launch line and the admin's event tail. Routes get it by dependency injection
(:func:`the_gateway`), typed. It holds no state of its own that matters beyond a restart: records
and activity are read from the bus, claims go to the spawners over request/reply, and ending a
session is a compare-and-set on the record.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import nats.js.errors
from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from nbpool import logs
from nbpool.aio import cancel_and_wait, poll_ready
from nbpool.bus import Bus, KVMirror
from nbpool.culler.policy import CullPolicy, expires_at
from nbpool.gateway.admin_sessions import AdminSessions
from nbpool.gateway.claims import Claimer, NoCapacity
from nbpool.gateway.events import EventTail
from nbpool.gateway.links import spawn_link, tree_page, ui_page
from nbpool.gateway.pages import ended_page
from nbpool.gateway.queue import LaunchQueue, Ticket
from nbpool.gateway.ratelimit import RateLimiter
from nbpool.gateway.sandbox_files import SandboxFiles, SandboxUnreachable
from nbpool.hosts import HostWatch
from nbpool.metrics import HOSTS, SESSIONS, SNAPSHOTS
from nbpool.models import Activity, Drain, SandboxRecord, Snapshot, SpawnerBeat, State
from nbpool.names import Names
from nbpool.records import read_record, transition
from nbpool.settings import GatewaySettings
from nbpool.snapshots import SnapshotStore

__all__ = ["Gateway", "RenderedViews", "StillWaiting", "gateway_of", "the_gateway"]

log = logs.get("nbpool.gateway")


class StillWaiting(Exception):
    """A launch waited its ``wait`` seconds in line without a sandbox; where it was (it has left)."""

    def __init__(self, ticket: Ticket, waited: float) -> None:
        self.position = ticket.position
        self.estimate_s = ticket.snapshot()["estimate_s"]
        self.full = ticket.state == "full"
        about = f", about {self.estimate_s} s from a sandbox" if self.estimate_s is not None else ""
        why = f" ({ticket.message})" if ticket.message else ""
        super().__init__(f"no sandbox within the {waited:g} s waited{why}: {self.position} in line{about}; "
                         "ask again with a longer wait")

    @property
    def retry_after(self) -> int:
        return max(1, min(60, int(self.estimate_s or (15 if self.full else 2))))


class Gateway:
    """See the module docstring. Until :meth:`start` returns, only the settings-based helpers work."""

    def __init__(self, settings: GatewaySettings, bus: Bus | None = None) -> None:
        self.settings = settings
        self.origins = settings.origins
        self.limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
        self.policy = CullPolicy(settings.idle_timeout, settings.max_age, float("inf"))
        self.snapshot_limiter = RateLimiter(settings.snapshot_rate, max(1, round(settings.snapshot_rate / 2)))
        self.rendered = RenderedViews()
        #: Snapshot views being rendered, by snapshot id (one render however many ask).
        self.rendering: dict[str, asyncio.Future[bytes]] = {}
        self.files = SandboxFiles()
        self._given_bus = bus
        self._tasks: list[asyncio.Future[Any]] = []

    # ---- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        settings = self.settings
        self.bus = self._given_bus or await Bus.connect(
            settings.nats_url, Names(settings.instance), "gateway", credentials=settings.bus_credentials("gateway"))
        await self.bus.ensure("gateway", settings.bus_replicas)
        names = self.bus.names
        self.hosts = HostWatch(self.bus, settings.host_timeout)
        self.spawners: KVMirror[SpawnerBeat] = self.hosts.beats
        self.records: KVMirror[SandboxRecord] = KVMirror(self.bus, names.sandboxes, SandboxRecord)
        self.activity: KVMirror[Activity] = KVMirror(self.bus, names.activity, Activity)
        self.control: KVMirror[Drain] = KVMirror(self.bus, names.control, Drain)
        self.tail = EventTail(self.bus)
        self.claimer = Claimer(self.bus, self.hosts, settings.claim_timeout)
        self.queue = LaunchQueue(self.claimer, self.lab_url, self._estimate_full,
                                 discard=lambda rec: self.end_session(rec.id, "the visitor left the line"),
                                 reown=self._reown)
        self.admin_sessions = AdminSessions(self.bus, settings.admin_session_ttl)
        self.snapshots = SnapshotStore(self.bus, settings.snapshot_ttl, settings.snapshot_budget, settings.bus_replicas)
        if self.origins.snapshot_url:
            await self.snapshots.ensure()
        mirrors: list[KVMirror[Any]] = [self.spawners, self.records, self.activity, self.control]
        self._tasks = [asyncio.ensure_future(m.run()) for m in mirrors]
        self._tasks += [asyncio.ensure_future(self.bus.presence("gateway")), asyncio.ensure_future(self.tail.run())]
        await asyncio.gather(*(m.ready.wait() for m in mirrors))
        # Read when Prometheus scrapes (another thread: list() copies a dict in one step).
        SESSIONS.set_function(lambda: sum(1 for r in list(self.records.values()) if r.state == State.CLAIMED))
        HOSTS.labels("live").set_function(lambda: len(self.hosts.live()))
        HOSTS.labels("silent").set_function(lambda: len(self.spawners.items) - len(self.hosts.live()))
        self.started = True
        log.info("started", extra={"nats": settings.nats_url, "instance": settings.instance, "routing": settings.routing,
                                   "sandboxes": settings.sandbox_url, "admin": settings.admin_url})
        if not self.origins.by_host:
            log.warning("NBPOOL_ROUTING=path: every sandbox is served from the gateway's own origin, so a page in any "
                        "sandbox can read and drive every other sandbox and the admin in a visitor's browser; "
                        "only for people who trust each other")

    async def close(self) -> None:
        await self.queue.close()
        await cancel_and_wait(*self._tasks)
        await self.files.close()
        if self._given_bus is None:
            await self.bus.close()

    @property
    def connected(self) -> bool:
        return getattr(self, "started", False) and self.bus.nc.is_connected

    # ---- visitors --------------------------------------------------------------------------

    def client_of(self, request: Request) -> str:
        """The visitor's address: the peer's, or what a trusted proxy (Traefik) says it is."""
        peer = request.client.host if request.client else "unknown"
        if peer in self.settings.trusted_proxies:
            # Traefik sets X-Real-Ip and drops what an untrusted client sent.
            real = request.headers.get("x-real-ip")
            if real:
                return real.strip()
        return peer

    def lab_url(self, rec: SandboxRecord, page: str = "lab") -> str:
        """The URL that opens ``page`` (see :mod:`nbpool.gateway.links`) in the sandbox, with its token,
        in the profile's UI (JupyterLab, or Jupyter Notebook 7's pages).

        JupyterLab itself (``lab``) opens on the profile's ``start`` notebook when it has one.
        """
        profile = self.settings.profiles.get(rec.pool)
        if page == "lab" and profile is not None and profile.start is not None:
            page = tree_page(profile.start)
        page = ui_page(page, profile.ui if profile is not None else "lab")
        return f"{self.origins.sandbox_url(rec.id)}{page}?token={rec.token}"

    def snapshot_links(self, snapshot_id: str) -> dict[str, str]:
        """Where a snapshot is viewed (its own origin), remixed and downloaded."""
        public = self.settings.public_url
        return {"view_url": f"{self.origins.snapshot_url}/s/{snapshot_id}", "remix_url": f"{public}/remix/{snapshot_id}",
                "notebook_url": f"{public}/snapshots/{snapshot_id}/notebook"}

    async def remix_into(self, rec: SandboxRecord, snap: Snapshot, data: bytes) -> None:
        """Put the snapshot's notebook into a just-claimed session's home, before its visitor comes.

        If the sandbox does not take it, the session is ended (nobody has seen it) and
        :class:`SandboxUnreachable` raised: the visitor launches again.
        """
        try:
            await self.files.place(rec, snap.name, data)
        except SandboxUnreachable:
            log.warning("remix: the notebook could not be placed; ending the session",
                        extra={"sandbox": rec.id, "snapshot": snap.id})
            await self.end_session(rec.id, "remix.failed")
            raise
        SNAPSHOTS.labels("remixed").inc()
        await self.bus.event("snapshot.remixed", rec.id, host=rec.host, data={"snapshot": snap.id})

    def ended_answer(self, sandbox_id: str, rest: str, accept: str) -> Response:
        """404 for ``<a sandbox>/<rest>`` that has ended: a page (or JSON) that launches a fresh one there,
        saying why when the record still does (its machine was lost, say)."""
        again = self.settings.public_url + spawn_link(rest)
        rec = self.records.get(sandbox_id)
        reason = rec.ending_reason if rec is not None and rec.state == State.ENDING else None
        if "text/html" in accept:
            return HTMLResponse(ended_page(again, reason), 404, headers={"Cache-Control": "no-store"})
        body = {"detail": "this notebook server has ended or never existed", "spawn": again}
        return JSONResponse({**body, "reason": reason} if reason else body, 404)

    def admit(self, request: Request, profile: str | None) -> tuple[str, str]:
        """Check the profile, the client's live sessions and launch rate; the profile and the client."""
        settings = self.settings
        profile = settings.default_profile if profile is None else profile
        if profile not in settings.profiles:
            raise HTTPException(
                422, f"unknown profile {profile!r}; choose one of: {', '.join(sorted(settings.profiles))}"
            )
        client = self.client_of(request)
        live = sum(1 for rec in self.records.values() if rec.owner == client and rec.state == State.CLAIMED)
        if live >= settings.max_sessions_per_client:
            raise HTTPException(
                429,
                f"{client} already has {live} live sessions, the most one client may hold "
                f"(NBPOOL_MAX_SESSIONS_PER_CLIENT); end one (DELETE /sessions/<id>) or wait for one to end",
                headers={"Retry-After": "60"},
            )
        wait = self.limiter.take(client)
        if wait > 0:
            raise HTTPException(
                429,
                f"too many launches from {client}; try again in {wait:.0f} s",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        return profile, client

    async def launch(self, request: Request, profile: str | None, page: str = "lab",
                     wait: float | None = None) -> SandboxRecord:
        """Admit a program's launch and claim a sandbox for it.

        With nobody in line and a sandbox warm, at once. Otherwise it waits in the same line as
        browsers (:class:`LaunchQueue`: nobody overtakes anybody), held up to ``wait`` seconds,
        and leaves the line when the client goes away. Without a ``wait`` it waits up to the claim
        timeout for sandboxes that are starting, but not for sessions to end: with every sandbox
        in use it is answered at once. Raises :class:`NoCapacity` when nbpool cannot serve the
        profile now (unhealthy, draining; full, without a ``wait``), and :class:`StillWaiting` with
        its place when the wait ran out.
        """
        arrived = time.monotonic()
        profile, client = self.admit(request, profile)
        asked = wait is not None
        wait = self.settings.claim_timeout if wait is None else wait
        began = time.perf_counter()
        rec: SandboxRecord | None = None
        if not self.queue.waiting(profile):
            # Nobody in line. Without a wait asked for, as a launch always did: the spawners' own
            # line, up to the claim timeout. With one: at once, or into the line below.
            try:
                rec = await self.claimer.claim(profile, owner=client, wait=0 if asked else wait)
            except NoCapacity as exc:
                if not asked or not exc.coming or wait <= 0:
                    raise
        if rec is None:
            rec = await self._wait_in_line(request, profile, page, client, wait, arrived, asked=asked)
        # Debug: at INFO this line cost ~12% of the gateway's CPU per claim (the spawner's
        # sandbox.claimed event already records every claim).
        log.debug("claimed", extra={"sandbox": rec.id, "client": client, "ms": round((time.perf_counter() - began) * 1000, 2)})
        return rec

    async def claim_or_join(self, profile: str, client: str, page: str,
                            prepare: Callable[[SandboxRecord], Awaitable[None]] | None = None) -> SandboxRecord | Ticket:
        """A browser's launch: a warm sandbox at once when nobody is in line, else a place in the
        line (``prepare``: see :class:`Ticket`), the place it had when it came in even if its try
        for a warm sandbox took a while."""
        arrived = time.monotonic()
        if not self.queue.waiting(profile):
            try:
                return await self.claimer.claim(profile, owner=client, wait=0)
            except NoCapacity:
                pass
        return self.queue.join(profile, page, client, prepare=prepare, arrived=arrived)

    async def _wait_in_line(self, request: Request, profile: str, page: str, client: str, wait: float,
                            arrived: float, asked: bool) -> SandboxRecord:
        """Hold the launch in line (see :meth:`launch`). Without a ``wait`` asked for, it does not
        wait for sessions to end, and a wait that runs out answers as a launch always did (503
        "full"); with one, 503 "waiting" with its place."""
        ticket = self.queue.join(profile, page, client, arrived=arrived)
        deadline = arrived + wait
        try:
            while ticket.state not in ("ready", "failed"):
                seen = ticket.version
                remaining = deadline - time.monotonic()
                if remaining <= 0 or await request.is_disconnected() or (ticket.state == "full" and not asked):
                    break
                ticket.touch()  # the request itself is the page that watches
                await ticket.changed(timeout=min(1.0, remaining), since=seen)
        finally:
            if ticket.state not in ("ready", "failed"):
                self.queue.leave(ticket)
        if ticket.state == "ready" and ticket.record is not None:
            return ticket.record
        if ticket.state == "failed":
            raise NoCapacity(ticket.message or "the launch failed; please try again", retry_after=2)
        if ticket.state == "full" and not asked:
            raise NoCapacity(ticket.message or "all sandboxes are in use", retry_after=15, full=True)
        if not asked:
            why = f" ({ticket.message})" if ticket.message else ""
            raise NoCapacity(f"no sandbox became free within {wait:g} s{why}", retry_after=2, coming=True)
        raise StillWaiting(ticket, wait)

    async def end_session(self, session_id: str, reason: str) -> bool:
        """Move a live session to ending and wait (bounded) until its server is gone; False if none."""
        kv = await self.bus.kv(self.bus.names.sandboxes)
        moved = await transition(kv, session_id, State.ENDING, from_={State.CLAIMED}, ending_reason=reason)
        if moved is not None:
            await self.bus.event("sandbox.ending", session_id, host=moved.record.host, cause=reason)
        else:
            current = await read_record(kv, session_id)
            if current is None or current.record.state != State.ENDING:
                return False  # no live session (any more)

        # The owning spawner removes it; wait (bounded) so the caller can rely on it being gone.
        async def gone() -> bool | None:
            try:
                await kv.get(session_id)
                return None
            except nats.js.errors.KeyNotFoundError:
                return True

        try:
            await poll_ready(gone, deadline=time.monotonic() + 10.0, most=0.05)
        except TimeoutError:
            log.warning("session still ending after 10 s", extra={"sandbox": session_id})
        return True

    async def _reown(self, rec: SandboxRecord, owner: str) -> SandboxRecord | None:
        """A sandbox claimed for the line, not yet handed out, now ``owner``'s; None if it is no longer claimed."""
        kv = await self.bus.kv(self.bus.names.sandboxes)
        moved = await transition(kv, rec.id, State.CLAIMED, from_={State.CLAIMED}, owner=owner)
        return None if moved is None else moved.record

    def _estimate_full(self, profile: str, position: int) -> float | None:
        """Seconds until the ``position``-th claimed sandbox of ``profile`` ends if left idle (the line's estimate)."""
        ends = sorted(
            expires_at(rec, self.activity.get(rec.id), self.policy) or 0
            for rec in self.records.values()
            if rec.state == State.CLAIMED and rec.pool == profile
        )
        return None if len(ends) < position else max(0.0, ends[position - 1] - time.time()) + 3.0


class RenderedViews:
    """Rendered view pages (gzipped) by snapshot id, the most recently used kept up to ``budget`` bytes."""

    def __init__(self, budget: int = 64 * 1024 * 1024) -> None:
        self._budget = budget
        self._pages: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0

    def get(self, snapshot_id: str) -> bytes | None:
        page = self._pages.get(snapshot_id)
        if page is not None:
            self._pages.move_to_end(snapshot_id)
        return page

    def put(self, snapshot_id: str, page: bytes) -> None:
        self.drop(snapshot_id)
        if len(page) > self._budget:
            return
        self._pages[snapshot_id] = page
        self._size += len(page)
        while self._size > self._budget:
            _, old = self._pages.popitem(last=False)
            self._size -= len(old)

    def drop(self, snapshot_id: str) -> None:
        old = self._pages.pop(snapshot_id, None)
        if old is not None:
            self._size -= len(old)


def gateway_of(request: Request) -> Gateway:
    """The app's :class:`Gateway`."""
    gateway: Gateway = request.app.state.gateway
    return gateway


async def the_gateway(request: Request) -> Gateway:
    """The app's :class:`Gateway`, as a FastAPI dependency: async, so that FastAPI calls it inline
    rather than in its thread pool (a thread hop for every request: make bench, section 1)."""
    return gateway_of(request)
