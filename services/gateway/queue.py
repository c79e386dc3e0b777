"""Visitors waiting for a server, first come, first served, each with a ticket they can watch.

A launch that cannot be served at once joins the line of its profile. One worker per profile
claims for the visitor at the head of the line only, so nobody overtakes anybody; the others see
their position and a wait estimate measured from how fast the line has been moving. A sandbox
goes only to a visitor whose page is watching (it touched the ticket within ``watch_window``
seconds: the live page does every few seconds); a ``GET /spawn`` that nobody follows up (a
crawler, a link preview, curl) keeps its place but gets nothing, and a visitor whose page stops
watching for ``abandon_after`` seconds leaves the line.

Each gateway replica keeps its own lines; behind them, each spawner serves waiting claims in
arrival order as well.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nbpool import logs
from nbpool.aio import cancel_and_wait, wait_event
from nbpool.gateway.claims import Claimer, NoCapacity
from nbpool.models import SandboxRecord

__all__ = ["LaunchQueue", "Ticket"]

log = logs.get("nbpool.gateway.queue")


@dataclass(eq=False)
class Ticket:
    """One visitor's place in line. ``state``: queued, starting, full, ready, failed.

    ``prepare``, if any, is awaited with the claimed sandbox before the ticket turns ready (a remix
    puts its notebook in); if it raises, the ticket fails with the error as its message.
    """

    id: str
    profile: str
    page: str
    owner: str
    state: str = "queued"
    position: int = 0
    message: str = ""
    url: str | None = None
    estimate_s: float | None = None
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)
    prepare: Callable[[SandboxRecord], Awaitable[None]] | None = None
    #: The sandbox, once the ticket is ready.
    record: SandboxRecord | None = None
    #: The visitor went away (:meth:`LaunchQueue.leave`).
    left: bool = False
    #: Counts the changes: a watcher that read the ticket at one version waits for a later one.
    version: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def snapshot(self) -> dict[str, Any]:
        """What the visitor's page shows."""
        return {
            "state": self.state,
            "position": self.position,
            "message": self.message,
            "estimate_s": _rounded(self.estimate_s),
            "url": self.url,
        }

    def touch(self) -> None:
        """The visitor's page is still watching."""
        self.seen = time.monotonic()

    def notify(self) -> None:
        self.version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changed(self, timeout: float, since: int) -> bool:
        """Wait until the ticket is past version ``since`` (True: at once if it already is; a change
        between reading the ticket and waiting is never missed) or ``timeout`` passes (False)."""
        if self.version != since:
            return True
        return await wait_event(self._changed, timeout)


async def _keep(record: SandboxRecord) -> None:
    """No way to end a sandbox given: it stays claimed and is culled as never opened."""


def _rounded(seconds: float | None) -> int | None:
    """Whole seconds under a minute, tens of seconds above: enough for people, and steady."""
    if seconds is None:
        return None
    return round(seconds) if seconds < 60 else round(seconds / 10) * 10


class LaunchQueue:
    """The lines of visitors, one per profile (see the module docstring)."""

    def __init__(
        self,
        claimer: Claimer,
        make_url: Callable[[SandboxRecord, str], str],
        estimate_full: Callable[[str, int], float | None] = lambda profile, position: None,
        discard: Callable[[SandboxRecord], Awaitable[object]] | None = None,
        abandon_after: float = 30.0,
        keep_done: float = 120.0,
        watch_window: float = 8.0,
    ) -> None:
        self._claimer = claimer
        self._make_url = make_url
        self._estimate_full = estimate_full
        self._abandon_after = abandon_after
        self._keep_done = keep_done
        self._watch_window = watch_window
        self._lines: dict[str, deque[Ticket]] = {}
        self._tickets: dict[str, Ticket] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._serving: dict[str, Ticket] = {}  # profile -> the ticket whose claim is under way
        self._discard = discard or _keep
        self._discarding: set[asyncio.Future[object]] = set()
        #: Seconds per visitor served from the line (moving average); None until measured.
        #: While every sandbox is in use, estimates come from when sessions will end instead.
        self.pace: dict[str, float] = {}

    def join(self, profile: str, page: str, owner: str,
             prepare: Callable[[SandboxRecord], Awaitable[None]] | None = None,
             arrived: float | None = None) -> Ticket:
        """Put a visitor in the line of ``profile`` (``prepare``: see :class:`Ticket`), at its end,
        or, given ``arrived`` (``time.monotonic()`` when the launch came in), behind everybody who
        came in before it: a launch that first tried for a warm sandbox, and found none, keeps the
        place it had when it came, ahead of those who joined while it tried."""
        self._forget_old()
        ticket = Ticket(id=secrets.token_urlsafe(12), profile=profile, page=page, owner=owner, prepare=prepare)
        if arrived is not None:
            ticket.created = arrived
        # The launch request itself watches for a moment (a sandbox about to turn warm needs no
        # waiting page); after that, only the visitor's page keeps the ticket watched.
        ticket.seen -= max(0.0, self._watch_window - 1.0)
        self._tickets[ticket.id] = ticket
        line = self._lines.setdefault(profile, deque())
        place = len(line)
        while place > 0 and line[place - 1].created > ticket.created and self._serving.get(profile) is not line[place - 1]:
            place -= 1
        line.insert(place, ticket)
        self._reposition(profile)
        worker = self._workers.get(profile)
        if worker is None or worker.done():
            self._workers[profile] = asyncio.ensure_future(self._work(profile))
        return ticket

    def get(self, ticket_id: str) -> Ticket | None:
        return self._tickets.get(ticket_id)

    def leave(self, ticket: Ticket) -> None:
        """The visitor went away: their place goes at once. (A ticket already served is kept, and
        one whose claim is under way is served: its sandbox, never opened, is culled as such.)"""
        ticket.left = True
        line = self._lines.get(ticket.profile, deque())
        if ticket in line and self._serving.get(ticket.profile) is not ticket:
            line.remove(ticket)
            self._tickets.pop(ticket.id, None)
            log.info("visitor left the line", extra={"ticket": ticket.id, "profile": ticket.profile})
            self._reposition(ticket.profile)

    def waiting(self, profile: str | None = None) -> int:
        lines = [self._lines.get(profile, deque())] if profile else list(self._lines.values())
        return sum(len(line) for line in lines)

    async def close(self) -> None:
        await cancel_and_wait(*self._workers.values(), *self._discarding)

    def _reposition(self, profile: str, full: bool = False) -> None:
        pace = self.pace.get(profile)
        for i, ticket in enumerate(self._lines.get(profile, ())):
            if full:
                # Nobody gets in until someone leaves: when will the n-th session end at the latest?
                estimate = self._estimate_full(profile, i + 1)
            else:
                estimate = None if pace is None else pace * (i + 1)
            if ticket.position != i + 1 or ticket.estimate_s != estimate:
                ticket.position, ticket.estimate_s = i + 1, estimate
                ticket.notify()

    def _next_watched(self, line: deque[Ticket]) -> Ticket | None:
        """The first visitor in ``line`` whose page is watching and who has not left."""
        now = time.monotonic()
        return next((t for t in line if not t.left and now - t.seen <= self._watch_window), None)

    def _discard_later(self, record: SandboxRecord) -> None:
        task = asyncio.ensure_future(self._discard(record))
        self._discarding.add(task)
        task.add_done_callback(self._discarding.discard)

    def _drop_abandoned(self, profile: str) -> None:
        line = self._lines.get(profile, deque())
        now = time.monotonic()
        gone = [t for t in line if t.left or now - t.seen > self._abandon_after]
        for ticket in gone:
            line.remove(ticket)
            self._tickets.pop(ticket.id, None)
            log.info("visitor left the line", extra={"ticket": ticket.id, "profile": profile})
        if gone:
            self._reposition(profile)

    def _forget_old(self) -> None:
        now = time.monotonic()
        for tid, ticket in list(self._tickets.items()):
            if ticket.state in ("ready", "failed") and now - ticket.seen > self._keep_done:
                del self._tickets[tid]

    async def _work(self, profile: str) -> None:
        line = self._lines[profile]
        last_served = time.monotonic()
        while True:
            self._drop_abandoned(profile)
            if not line:
                return
            head = self._next_watched(line)
            if head is None:  # nobody in line is watching: no sandbox for a page nobody looks at
                await asyncio.sleep(0.5)
                continue
            self._serving[profile] = head
            try:
                record = await self._claimer.claim(profile, head.owner, wait=5.0)
            except NoCapacity as exc:
                self._serving.pop(profile, None)
                if head.left:
                    self.leave(head)
                    continue
                state = "full" if exc.full else "starting"
                if (head.state, head.message) != (state, exc.reason):
                    head.state, head.message = state, exc.reason
                    head.notify()
                self._reposition(profile, full=exc.full)
                await asyncio.sleep(1.0 if not exc.full else 2.0)
                continue
            except Exception as err:  # the bus hiccuped: the visitor keeps the place
                self._serving.pop(profile, None)
                log.warning("claim for the line failed", extra={"ticket": head.id, "error": repr(err)})
                await asyncio.sleep(1.0)
                continue
            finally:
                self._serving.pop(profile, None)
            if head.left:
                # The visitor went away while their claim was under way: the sandbox is the next
                # watching visitor's; with nobody, it is ended (it was never opened).
                line.remove(head)
                self._tickets.pop(head.id, None)
                successor = self._next_watched(line)
                if successor is None:
                    log.info("claimed for a visitor who left: ended", extra={"ticket": head.id, "sandbox": record.id})
                    self._discard_later(record)
                    self._reposition(profile)
                    continue
                head = successor
            line.remove(head)
            if head.prepare is not None:
                try:
                    await head.prepare(record)
                except Exception as err:
                    head.state, head.message, head.position = "failed", f"{err}; please try again", 0
                    head.notify()
                    log.warning("launch from the line failed", extra={"ticket": head.id, "sandbox": record.id,
                                                                      "error": repr(err)})
                    self._reposition(profile)
                    continue
            now = time.monotonic()
            took = now - last_served
            last_served = now
            old = self.pace.get(profile)
            self.pace[profile] = took if old is None else 0.7 * old + 0.3 * took
            head.state, head.message, head.position = "ready", "", 0
            head.record = record
            head.url = self._make_url(record, head.page)
            head.notify()
            log.info("served from the line", extra={"ticket": head.id, "sandbox": record.id,
                                                    "waited_s": round(now - head.created, 2)})
            self._reposition(profile)
