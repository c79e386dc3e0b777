"""``nbpool-router``: wires settings and bus into a :class:`Router`."""

from __future__ import annotations

import asyncio

from nbpool.bus import Bus
from nbpool.router.router import Router
from nbpool.service import run
from nbpool.settings import RouterSettings


async def _body(settings: RouterSettings, bus: Bus, stop: asyncio.Event) -> None:
    await Router(settings, bus).serve(stop)


def main() -> None:
    run("router", RouterSettings, _body)


if __name__ == "__main__":
    main()
