"""Which sandbox hosts are alive: judged by when each spawner's heartbeat last arrived here.

Every spawner (one per sandbox host, with a stable id) writes a heartbeat to the spawners bucket
every ``NBPOOL_HEARTBEAT_INTERVAL`` (2 s). A host whose heartbeat has not changed for
``NBPOOL_HOST_TIMEOUT`` seconds (8 s) is *silent*: gateways send it no claims and its warm
sandboxes leave the pool count at once; the culler then declares it lost (``nbpool.culler.hosts``).

Arrival is timed with this process's own monotonic clock, never by the ``at`` the spawner wrote:
machines' clocks differ. Only a heartbeat seen for the first time (at start-up, when the bucket is
first read) is dated by its ``at``, so that a host that died just before is not taken for alive.
"""

from __future__ import annotations

import time

from nbpool.bus import Bus, KVMirror
from nbpool.models import SpawnerBeat

__all__ = ["HostWatch"]


class HostWatch:
    """The spawners' heartbeats, and when each last changed (run :attr:`beats` as a mirror)."""

    def __init__(self, bus: Bus, timeout: float) -> None:
        self.timeout = timeout
        self.beats: KVMirror[SpawnerBeat] = KVMirror(bus, bus.names.spawners, SpawnerBeat, self._changed)
        self._seen: dict[str, float] = {}  # spawner id -> time.monotonic() of its last heartbeat
        self._since = time.monotonic()

    def _changed(self, key: str, beat: SpawnerBeat | None) -> None:
        if beat is None:
            return  # deleted: silent since its last heartbeat
        now = time.monotonic()
        if key in self._seen:
            self._seen[key] = now
        else:
            self._seen[key] = now - min(self.timeout, max(0.0, time.time() - beat.at))

    def revision(self, host: str) -> int | None:
        """The revision of ``host``'s heartbeat in the mirror, if it has one."""
        item = self.beats.items.get(host)
        return item[1] if item else None

    def heard(self, host: str) -> None:
        """Count ``host`` as heard from now (its heartbeat was read from the bucket directly)."""
        self._seen[host] = time.monotonic()

    def silent_for(self, host: str) -> float:
        """Seconds since ``host``'s last heartbeat arrived; for a host never heard from (say, its
        records outlived its heartbeat's key), since this watch began."""
        return time.monotonic() - self._seen.get(host, self._since)

    def live(self) -> list[SpawnerBeat]:
        """The heartbeats of hosts that are not silent."""
        now = time.monotonic()
        return [beat for key, (beat, _) in self.beats.items.items() if now - self._seen.get(key, -1e18) < self.timeout]
