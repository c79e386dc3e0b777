"""``nbpool-spawner``: wires settings, bus and runtime into a :class:`Spawner`."""

from __future__ import annotations

import asyncio

from nbpool.bus import Bus
from nbpool.runtime import Runtime
from nbpool.runtime.process import ProcessRuntime
from nbpool.service import run
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
            cpus=settings.docker_cpus,
            pids=settings.docker_pids,
            workers=settings.docker_workers,
            timeout=settings.docker_timeout,
        )
    return ProcessRuntime(settings.state_dir, settings.instance, settings.spawner_id, settings.jupyter_command)


async def _body(settings: SpawnerSettings, bus: Bus, stop: asyncio.Event) -> None:
    await Spawner(settings, bus, make_runtime(settings)).serve(stop)


def main() -> None:
    run("spawner", SpawnerSettings, _body)


if __name__ == "__main__":
    main()
