"""Small asyncio helpers: owned background tasks, waiting with backoff, waits that stop when told.

Python 3.11's ``asyncio.wait_for`` can swallow a cancellation when the awaited thing finishes at
the same moment (fixed in 3.12): a loop built on it may then never stop. Code here is built on
``asyncio.wait``, which never swallows one; elsewhere, bound a wait with ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from nbpool import logs

__all__ = ["Background", "cancel_and_wait", "poll_ready", "wait_event"]

log = logs.get("nbpool.aio")

T = TypeVar("T")


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set (True) or ``timeout`` seconds pass (False)."""
    if event.is_set():
        return True
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=timeout)
        return bool(done)
    finally:
        waiter.cancel()


async def cancel_and_wait(*tasks: asyncio.Future[Any], again_after: float | None = None) -> None:
    """Cancel ``tasks`` and wait until every one has finished; what they raise on the way out is dropped.

    With ``again_after``, a task still running that many seconds later is cancelled again: a
    cancellation can be swallowed by a ``wait_for`` inside a library (see the module docstring;
    nats-py has them), and a loop that lost it would run on and hold its owner's shutdown forever.
    Only for tasks with nothing to finish once cancelled: a second cancellation would cut that short.
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=again_after)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not report it as never retrieved


class Background:
    """The tasks one owner runs beside its work: :meth:`start` them, :meth:`close` cancels and awaits all.

    A task that fails is logged as it ends, so no error is lost with it.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception(), extra={"owner": self.owner})

    async def close(self) -> None:
        await cancel_and_wait(*self._tasks)


async def poll_ready(
    check: Callable[[], Awaitable[T | None]],
    deadline: float | None = None,
    first: float = 0.05,
    most: float = 0.5,
    factor: float = 1.5,
) -> T:
    """``await check()`` until it returns something other than None, which is returned.

    Between tries it sleeps ``first`` seconds, then ``factor`` times longer each time up to
    ``most``. Past ``deadline`` (``time.monotonic()``), TimeoutError. What ``check`` raises is
    not caught: a try that should count as "not yet" returns None.
    """
    delay = first
    while True:
        found = await check()
        if found is not None:
            return found
        pause = delay
        if deadline is not None:
            pause = min(delay, deadline - time.monotonic())
            if pause <= 0:
                raise TimeoutError
        await asyncio.sleep(pause)
        delay = min(delay * factor, most)
