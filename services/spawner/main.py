"""``nbpool-spawner``: wires settings, bus and runtime into a :class:`Spawner`."""

from __future__ import annotations

import asyncio
import sys

from nbpool.bus import Bus
from nbpool.runtime import Runtime
from nbpool.runtime.process import ProcessRuntime
from nbpool.service import configure, run
from nbpool.settings import SpawnerSettings
from nbpool.spawner.spawner import Spawner


def make_runtime(settings: SpawnerSettings) -> Runtime:
    """The runtime named by ``NBPOOL_RUNTIME``."""
    if settings.runtime == "docker":
        from nbpool.runtime.docker import DockerRuntime  # the docker package is only needed here

        return DockerRuntime(
            instance=settings.instance,
            spawner_id=settings.spawner_id,
            image=settings.docker_image,
            network=settings.network,
            egress=settings.docker_egress,
            memory=settings.docker_memory,
            disk=settings.docker_disk,
            cpus=settings.docker_cpus,
            pids=settings.docker_pids,
            start_cpu_shares=settings.docker_start_cpu_shares,
            workers=settings.docker_workers,
            timeout=settings.docker_timeout,
            subnet=settings.docker_subnet,
            proxy_sources=settings.proxy_sources,
        )
    return ProcessRuntime(settings.state_dir, settings.instance, settings.spawner_id, settings.jupyter_command,
                          settings.process_address)


async def _body(settings: SpawnerSettings, bus: Bus, stop: asyncio.Event) -> None:
    await Spawner(settings, bus, make_runtime(settings)).serve(stop)


async def sweep(settings: SpawnerSettings) -> int:
    """Remove every sandbox of this spawner from the runtime; how many there were.

    ``nbpool up`` runs this (``nbpool-spawner --sweep``) when a spawner did not stop cleanly,
    e.g. when the stop came while it was still starting: its sandboxes must not outlive nbpool.
    Records on the bus are left to the next start's reconcile.
    """
    runtime = make_runtime(settings)
    try:
        found = await runtime.list()
        await asyncio.gather(*(runtime.remove(sb.id) for sb in found))
        return len(found)
    finally:
        await runtime.close()


def main() -> None:
    if sys.argv[1:] == ["--sweep"]:
        settings = configure("spawner", SpawnerSettings)
        print(f"removed {asyncio.run(sweep(settings))} sandboxes of spawner {settings.spawner_id}")
        return
    run("spawner", SpawnerSettings, _body)


if __name__ == "__main__":
    main()
