"""Small asyncio helpers.

Python 3.11's ``asyncio.wait_for`` can swallow a cancellation when the awaited thing finishes at
the same moment (fixed in 3.12): a loop built on it may then never stop. Loops that must stop
when cancelled use these instead, built on ``asyncio.wait``, which never swallows one.
"""

from __future__ import annotations

import asyncio

__all__ = ["wait_event"]


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
