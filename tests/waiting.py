"""Test deadlines: ask again until the answer is there, or fail saying what never came.

A wait is a bound on how long the test is willing to wait, never a claim about speed (that is
``make bench``'s): each bound is generous, and a test that waits out its bound fails with a
message naming what it waited for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["poll_until", "poll_until_async"]

T = TypeVar("T")

Describe = str | Callable[[], str]


class _Poll:
    """The deadline of one wait, and what to say when it passes."""

    def __init__(self, timeout: float, what: Describe, interval: float) -> None:
        self.timeout, self.what, self.interval = timeout, what, interval
        self.deadline = time.monotonic() + timeout

    def settle(self, last: object, error: BaseException | None) -> float:
        """After a try that brought nothing: the pause before the next, or AssertionError once past the deadline."""
        if time.monotonic() >= self.deadline:
            text = self.what if isinstance(self.what, str) else self.what()
            answer = error if error is not None else last
            raise AssertionError(f"not within {self.timeout:g} s: {text} (last answer: {answer!r})") from error
        return self.interval


def _attempt(check: Callable[[], T], errors: tuple[type[BaseException], ...]) -> tuple[T | None, BaseException | None]:
    try:
        return check(), None
    except errors as err:
        return None, err


def poll_until(check: Callable[[], T], timeout: float, what: Describe, interval: float = 0.2,
               errors: tuple[type[BaseException], ...] = ()) -> T:
    """``check()`` every ``interval`` s until it returns something true, which is returned.

    Raises AssertionError naming ``what`` (a text, or a function that makes one then, e.g. with
    the logs) after ``timeout`` s. Exceptions of the types in ``errors`` count as "not yet".
    """
    poll = _Poll(timeout, what, interval)
    while not (outcome := _attempt(check, errors))[0]:
        time.sleep(poll.settle(*outcome))
    return outcome[0]  # type: ignore[return-value]


async def poll_until_async(check: Callable[[], Awaitable[T]], timeout: float, what: Describe, interval: float = 0.2,
                           errors: tuple[type[BaseException], ...] = ()) -> T:
    """:func:`poll_until` for a coroutine function ``check``, sleeping without blocking the loop."""
    poll = _Poll(timeout, what, interval)
    while True:
        error: BaseException | None = None
        try:
            value = await check()
        except errors as err:
            value, error = None, err  # type: ignore[assignment]
        if value:
            return value
        await asyncio.sleep(poll.settle(value, error))
