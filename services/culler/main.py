"""``nbpool-culler``: wires settings and bus into a :class:`Culler`."""

from __future__ import annotations

import asyncio

from nbpool.bus import Bus
from nbpool.culler.culler import Culler
from nbpool.service import run
from nbpool.settings import CullerSettings


async def _body(settings: CullerSettings, bus: Bus, stop: asyncio.Event) -> None:
    await Culler(settings, bus).serve(stop)


def main() -> None:
    run("culler", CullerSettings, _body)


if __name__ == "__main__":
    main()
