"""Visitors waiting for a server, first come, first served, each with a ticket they can watch.

A launch that cannot be served at once joins the line of its profile, in the order the launches
came in. One worker per profile claims one sandbox at a time and gives it to whoever is first in
line when it comes (not necessarily the visitor it was asked for: an earlier arrival may have
joined meanwhile, or that one left), so nobody overtakes anybody; the others see their position and
a wait estimate measured from how fast the line has been moving. A sandbox goes only to a visitor
whose page is watching (it touched the ticket within ``watch_window`` seconds: the live page does
every few seconds). A new ticket's page has ``grace`` seconds to start watching, and the line waits
for it that long rather than pass it over (on a busy machine a page takes a while to connect); a
``GET /spawn`` that nobody follows up (a crawler, a link preview, curl) then keeps its place but gets
nothing, and a visitor whose page stops watching for ``abandon_after`` seconds leaves the line.

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
    #: When the launch came in (``time.monotonic()``): the line's order.
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)
    #: A page (or the waiting launch request) has touched the ticket; until then it has a grace.
    watched: bool = False
    #: When it joined the line (``time.monotonic()``).
    joined: float = field(default_factory=time.monotonic)
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
        self.watched = True

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


async def _as_is(record: SandboxRecord, owner: str) -> SandboxRecord:
    """No way to change a claim's owner given: the record keeps the one it was claimed for."""
    return record


def _rounded(seconds: float | None) -> int | None:
    """Whole seconds under a minute, tens of seconds above: enough for people, and steady."""
    if seconds is None:
        return None
    return round(seconds) if seconds < 60 else round(seconds / 10) * 10


class LaunchQueue:
    """The lines of visitors, one per profile (see the module docstring).

    ``discard`` ends a sandbox claimed for a line that nobody is left in; ``reown`` gives a claimed
    sandbox to another owner (the visitor first in line when it came) and returns its record, or
    None if it is no longer claimed.
    """

    def __init__(
        self,
        claimer: Claimer,
        make_url: Callable[[SandboxRecord, str], str],
        estimate_full: Callable[[str, int], float | None] = lambda profile, position: None,
        discard: Callable[[SandboxRecord], Awaitable[object]] | None = None,
        reown: Callable[[SandboxRecord, str], Awaitable[SandboxRecord | None]] = _as_is,
        abandon_after: float = 30.0,
        keep_done: float = 120.0,
        watch_window: float = 8.0,
        grace: float = 3.0,
    ) -> None:
        self._claimer = claimer
        self._make_url = make_url
        self._estimate_full = estimate_full
        self._reown = reown
        self._abandon_after = abandon_after
        self._keep_done = keep_done
        self._watch_window = watch_window
        self._grace = grace
        self._lines: dict[str, deque[Ticket]] = {}
        self._tickets: dict[str, Ticket] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}
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
        self._tickets[ticket.id] = ticket
        line = self._lines.setdefault(profile, deque())
        place = len(line)
        while place > 0 and line[place - 1].created > ticket.created:
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
        """The visitor went away: their place goes at once (a sandbox being claimed goes to whoever
        is first in line when it comes). A ticket already served is kept."""
        ticket.left = True
        line = self._lines.get(ticket.profile, deque())
        if ticket in line:
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

    def _may_be_served(self, ticket: Ticket, now: float) -> bool:
        """Still here, and its page watching, or new and within its grace to start watching."""
        if ticket.left:
            return False
        if ticket.watched:
            return now - ticket.seen <= self._watch_window
        return now - ticket.joined <= self._grace

    def _first(self, line: deque[Ticket]) -> Ticket | None:
        """The first visitor in ``line`` who may be served (see :meth:`_may_be_served`)."""
        now = time.monotonic()
        return next((t for t in line if self._may_be_served(t, now)), None)

    async def _taker(self, line: deque[Ticket]) -> Ticket | None:
        """Whoever is first in line for a sandbox that has just come: the first who may be served,
        waited for while their page is still connecting (within its grace), not passed over."""
        while True:
            first = self._first(line)
            if first is None or first.watched:
                return first
            await asyncio.sleep(0.05)

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
            head = self._first(line)
            if head is None:  # nobody in line is watching: no sandbox for a page nobody looks at
                await asyncio.sleep(0.5)
                continue
            try:
                record = await self._claimer.claim(profile, head.owner, wait=5.0)
            except NoCapacity as exc:
                state = "full" if exc.full else "starting"
                if head in line and (head.state, head.message) != (state, exc.reason):
                    head.state, head.message = state, exc.reason
                    head.notify()
                self._reposition(profile, full=exc.full)
                await asyncio.sleep(1.0 if not exc.full else 2.0)
                continue
            except Exception as err:  # the bus hiccuped: the visitor keeps the place
                log.warning("claim for the line failed", extra={"ticket": head.id, "error": repr(err)})
                await asyncio.sleep(1.0)
                continue
            handed = await self._hand_to_first(line, record)
            if handed is None:
                self._reposition(profile)
                continue
            taker, record = handed
            if not await self._prepared(taker, record):
                self._reposition(profile)
                continue
            now = time.monotonic()
            took = now - last_served
            last_served = now
            old = self.pace.get(profile)
            self.pace[profile] = took if old is None else 0.7 * old + 0.3 * took
            taker.state, taker.message, taker.position = "ready", "", 0
            taker.record = record
            taker.url = self._make_url(record, taker.page)
            taker.notify()
            log.info("served from the line", extra={"ticket": taker.id, "sandbox": record.id,
                                                    "waited_s": round(now - taker.created, 2)})
            self._reposition(profile)

    async def _hand_to_first(self, line: deque[Ticket], record: SandboxRecord) -> tuple[Ticket, SandboxRecord] | None:
        """Take whoever is first in line for a sandbox just claimed (see :meth:`_taker`) out of the
        line, with the record made theirs; None when nobody is left (the sandbox is ended) or it is
        no longer claimed. A visitor who leaves while the record changes hands passes it on."""
        while True:
            taker = await self._taker(line)
            if taker is None:
                log.info("claimed for a line nobody is left in: ended", extra={"sandbox": record.id})
                self._discard_later(record)
                return None
            if record.owner != taker.owner:
                given = await self._hand_over(record, taker)
                if given is None:
                    return None
                record = given
            if taker in line:
                line.remove(taker)
                return taker, record

    async def _hand_over(self, record: SandboxRecord, taker: Ticket) -> SandboxRecord | None:
        """The record of a sandbox claimed for one owner, now ``taker``'s; None if it is no longer claimed."""
        try:
            given = await self._reown(record, taker.owner)
        except Exception as err:  # the bus failed: the visitor still gets it, under the first owner
            log.warning("claim could not change hands", extra={"sandbox": record.id, "error": repr(err)})
            return record
        if given is None:
            log.warning("claimed sandbox ended before it was handed out", extra={"sandbox": record.id})
        return given

    async def _prepared(self, ticket: Ticket, record: SandboxRecord) -> bool:
        """Run the ticket's ``prepare``; False (and the ticket failed) if it raised."""
        if ticket.prepare is None:
            return True
        try:
            await ticket.prepare(record)
        except Exception as err:
            ticket.state, ticket.message, ticket.position = "failed", f"{err}; please try again", 0
            ticket.notify()
            log.warning("launch from the line failed", extra={"ticket": ticket.id, "sandbox": record.id,
                                                             "error": repr(err)})
            return False
        return True
