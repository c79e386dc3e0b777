"""Lost hosts: a sandbox host whose spawner has been silent for ``NBPOOL_HOST_TIMEOUT`` is lost.

Every second the culler looks at the spawners' heartbeats (:class:`nbpool.hosts.HostWatch`). Once
a host with sandboxes has been silent for the timeout, each of its starting, warm and claimed
sandboxes is moved to ``ending`` (reason ``host.lost``; compare-and-set, so of several culler
replicas one moves each), its route goes, and a visitor who comes back finds the ended page with a
button for a new server. ``host.lost`` is said once per loss: the culler that creates the host's
entry in the hosts bucket says it. When the host's heartbeat comes back, its spawner removes the
sandboxes whose records ended (its reconcile after a restart, its mirror after a partition), and
the culler that deletes the entry says ``host.returned``. Nothing of a lost host is handed out
again: claims go only to hosts whose heartbeat is fresh, and a claim is a compare-and-set from
``warm``, which an ended record is not.

A silent heartbeat is only believed while the bus itself is answering: during an election
nobody's heartbeat arrives, and that must not end every session. So a host is judged lost only
once the bus has answered for a whole timeout (the host had that long to be heard), and only
when a direct read of the host's heartbeat finds nothing newer than what the culler's mirror saw
(a mirror whose watcher stalled with a dead bus node must not end live sessions).
"""

from __future__ import annotations

import asyncio
import time

import nats.errors
import nats.js.errors

from nbpool import logs
from nbpool.bus import Bus, KVMirror
from nbpool.hosts import HostWatch
from nbpool.metrics import CULLS, HOSTS_LOST
from nbpool.models import ROUTED_STATES, HostLoss, SandboxRecord, State, encode
from nbpool.records import transition
from nbpool.transient import transient

__all__ = ["LOST", "LostHosts"]

log = logs.get("nbpool.culler")

#: The ending reason of a lost host's sandboxes.
LOST = "host.lost"


class LostHosts:
    """Finds lost hosts and ends their sandboxes (see the module docstring)."""

    def __init__(self, bus: Bus, records: KVMirror[SandboxRecord], timeout: float) -> None:
        self.bus = bus
        self.records = records
        self.timeout = timeout
        self.watch = HostWatch(bus, timeout)
        self.lost: KVMirror[HostLoss] = KVMirror(bus, bus.names.hosts, HostLoss)
        self._bus_ok_since: float | None = None
        self._read: dict[str, int] = {}  # host -> revision of the last heartbeat read directly

    async def probe(self) -> bool:
        """Whether the bus answers now (the heartbeats' stream, within a second)."""
        try:
            async with asyncio.timeout(1.0):
                await self.bus.js.stream_info(f"KV_{self.bus.names.spawners}")
            ok = True
        except (TimeoutError, nats.errors.Error) as err:
            if not transient(err) and not isinstance(err, TimeoutError):
                log.warning("bus probe failed", extra={"error": repr(err)})
            ok = False
        if not ok:
            self._bus_ok_since = None
        elif self._bus_ok_since is None:
            self._bus_ok_since = time.monotonic()
        return ok

    def bus_trusted(self) -> bool:
        return self._bus_ok_since is not None and time.monotonic() - self._bus_ok_since >= self.timeout

    async def sweep(self) -> int:
        """End the sandboxes of lost hosts, note returns; how many sandboxes were ended."""
        if not await self.probe() or not self.bus_trusted():
            return 0
        by_host: dict[str, list[tuple[SandboxRecord, int]]] = {}
        for rec, rev in list(self.records.items.values()):
            if rec.state in ROUTED_STATES:
                by_host.setdefault(rec.host, []).append((rec, rev))
        ended = 0
        for host, records in by_host.items():
            silent = self.watch.silent_for(host)
            if silent >= self.timeout and not await self._heard_directly(host):
                ended += await self._end(host, records, silent)
        await self._returned()
        return ended

    async def _heard_directly(self, host: str) -> bool:
        """Whether the spawners bucket itself holds a heartbeat of ``host`` newer than any this
        culler has seen: then the mirror of heartbeats is behind (its watcher stalled when a bus
        node died), not the host, and the host counts as heard from now. A failed read
        ends nothing either."""
        try:
            kv = await self.bus.kv(self.bus.names.spawners)
            entry = await kv.get(host)
        except nats.js.errors.KeyNotFoundError:
            return False
        except (TimeoutError, nats.errors.Error) as err:
            log.warning("heartbeat not read", extra={"host": host, "error": repr(err)})
            return True
        revision = entry.revision or 0
        if revision <= self._read.get(host, 0) or revision <= (self.watch.revision(host) or 0):
            return False
        self._read[host] = revision
        log.warning("heartbeat newer than the mirror's: host taken as live", extra={"host": host})
        self.watch.heard(host)
        return True

    async def _end(self, host: str, records: list[tuple[SandboxRecord, int]], silent: float) -> int:
        kv = await self.bus.kv(self.bus.names.sandboxes)
        ended = claimed = 0
        for rec, rev in records:
            moved = await transition(kv, rec.id, State.ENDING, from_={rec.state}, known=(rec, rev), attempts=1,
                                     ending_reason=LOST)
            if moved is None:
                continue
            ended += 1
            CULLS.labels(LOST).inc()
            claimed += rec.state == State.CLAIMED
            await self.bus.event("cull.decision", rec.id, host=host, cause=LOST, data={"state": rec.state})
        if ended:
            log.warning("host lost: its sandboxes ended", extra={"host": host, "ended": ended, "claimed": claimed,
                                                                  "silent_s": round(silent, 1)})
            await self._report(host, ended, claimed, silent)
        return ended

    async def _report(self, host: str, ended: int, claimed: int, silent: float) -> None:
        """Say ``host.lost`` once per loss: only the culler that creates the host's entry says it."""
        kv = await self.bus.kv(self.bus.names.hosts)
        try:
            await kv.create(host, encode(HostLoss(host=host, silent_s=round(silent, 1))))
        except nats.js.errors.KeyWrongLastSequenceError:
            return  # another culler replica said it
        HOSTS_LOST.inc()
        await self.bus.event("host.lost", host=host, cause=f"no heartbeat for {silent:.1f} s",
                             data={"ended": ended, "claimed": claimed, "timeout_s": self.timeout})

    async def _returned(self) -> None:
        """Hosts declared lost whose heartbeat is back: delete their entry (once) and say so."""
        kv = await self.bus.kv(self.bus.names.hosts)
        for host, (loss, rev) in list(self.lost.items.items()):
            if self.watch.silent_for(host) >= self.timeout:
                continue
            try:
                await kv.delete(host, last=rev)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another culler replica got there first
            away = round(time.time() - loss.at + loss.silent_s, 1)
            log.info("host returned", extra={"host": host, "away_s": away})
            await self.bus.event("host.returned", host=host, data={"away_s": away})
