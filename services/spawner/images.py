"""The images the profiles run: present on this host or not, and warm sandboxes of a replaced one.

A profile whose image is not on this host is not pooled here (no start would succeed): the
heartbeat says why (``PoolCounts.problem``, shown by ``nbpool status`` and in the gateway's
503), and the profile is pooled as soon as the image appears. A profile's image name can be
moved to a new image (``nbpool profile build`` moves ``nbpool/profile-<name>:latest``): warm
sandboxes of the old image are then removed, and the pool refills with the new one. Claimed
sandboxes are never touched; their sessions run on the image they started with.
"""

from __future__ import annotations

from nbpool import logs
from nbpool.models import State
from nbpool.runtime import RuntimeSandbox
from nbpool.runtime.base import HasImages
from nbpool.spawner.removal import remove
from nbpool.spawner.state import SpawnerState

__all__ = ["check_images"]

log = logs.get("nbpool.spawner")


async def check_images(s: SpawnerState, found: dict[str, RuntimeSandbox]) -> None:
    """One look at every profile's image, and at the images of the warm sandboxes in ``found``."""
    runtime = s.runtime
    if not isinstance(runtime, HasImages):
        return
    current: dict[str, str] = {}
    for name, profile in s.settings.profiles.items():
        image = profile.image_of(name)
        image_id = await runtime.image_id(image)
        if image_id is None:
            build = f"nbpool profile build {name}" if profile.content is not None else "deploy/images/build.sh"
            problem = f"the image {image or 'of the notebook'} is not on this host; build it ({build}) or load it"
            if s.problems.get(name) != problem:
                log.warning("profile not pooled here: its image is missing", extra={"profile": name, "image": image})
                s.event("spawner.image", cause=problem, data={"profile": name, "present": False})
                s.problems[name] = problem
                s.changed()
            continue
        if name in s.problems:
            log.info("profile's image is here: pooling it", extra={"profile": name, "image": image})
            s.event("spawner.image", data={"profile": name, "present": True})
            del s.problems[name]
            s.changed()
        current[name] = image_id
    for rec, _ in s.mine():
        sandbox = found.get(rec.id)
        if (rec.state != State.WARM or sandbox is None or not sandbox.image or rec.pool not in current
                or sandbox.image == current[rec.pool]):
            continue
        if s.pool.discard(rec.id):  # only if it is still in the pool: it may have been claimed meanwhile
            log.info("recycling a warm sandbox of a replaced image", **s.log(rec.id, profile=rec.pool))
            await remove(s, rec, "image replaced")
