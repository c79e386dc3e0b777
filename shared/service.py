"""The life of a service process: settings, logs, bus, signals, clean exit.

A service's ``main`` calls :func:`run` with its body; the body gets the bus and a ``stop`` event
that SIGINT/SIGTERM set, stops taking work when it is set, and returns. The bus is then drained.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import uvloop

from nbpool import logs, metrics
from nbpool.aio import cancel_and_wait
from nbpool.bus import Bus
from nbpool.names import Names
from nbpool.settings import CommonSettings, SettingsError, load

__all__ = ["configure", "run"]

_S = TypeVar("_S", bound=CommonSettings)

log = logs.get("nbpool.service")


def configure(name: str, settings_cls: type[_S]) -> _S:
    """The service's settings from the environment, with logging set up; exit 2 on bad settings."""
    try:
        settings = load(settings_cls)
        settings.bus_credentials(name)  # readable now, or exit 2 here rather than at connect
    except SettingsError as err:
        print(f"nbpool-{name}: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.setup(name, settings.log_level, settings.log_format)
    try:
        metrics.serve(settings.metrics_port, settings.metrics_host)
    except OSError as err:
        print(f"nbpool-{name}: NBPOOL_METRICS_PORT {settings.metrics_port}: {err.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    return settings


def run(name: str, settings_cls: type[_S], body: Callable[[_S, Bus, asyncio.Event], Awaitable[None]]) -> None:
    """Run a service until SIGINT/SIGTERM; exit 0 on a clean stop, 2 on bad settings."""
    uvloop.run(_main(name, configure(name, settings_cls), body))


async def _main(name: str, settings: _S, body: Callable[[_S, Bus, asyncio.Event], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bus = await Bus.connect(settings.nats_url, Names(settings.instance), name, stop, settings.bus_credentials(name))
    await bus.ensure(name, settings.bus_replicas)
    log.info("started", extra={"nats": settings.nats_url, "instance": settings.instance})
    presence = asyncio.ensure_future(bus.presence(name))
    try:
        await body(settings, bus, stop)
    finally:
        await cancel_and_wait(presence)
        await bus.close()
        log.info("stopped")
