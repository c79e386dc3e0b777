"""Several hosts: claims and first output with two sandbox hosts against one, failover, the
control plane and the cost of ``--sync always``, on real clusters.

The cluster, all on this machine's loopback, made exactly as the README's "Several machines"
says: ``nbpool cluster init``, three ``nbpool up --role bus`` (NATS JetStream, TLS, every bucket
with 3 replicas), ``nbpool up --role host`` per sandbox host and one ``nbpool up --role proxy``
(Traefik, router, gateway, culler). Sandboxes are ``bench/stub.py`` processes (as for the
one-machine claims) but in 6: the claim path never touches the sandbox, and failover is about the
bus and the heartbeats, not about Jupyter.

What it measures:

1. Claim latency, ``POST /sessions`` through Traefik at 1, 10 and 30 concurrent clients, with one
   sandbox host, then with a second one added (same bus, same proxy, the same run). The first is
   the floor of the second: the ratio is what a second host costs or saves. Each also has its own
   floor, ``GET /healthz`` through the same Traefik (see ``claims``).
2. Host death → no more claims sent to it: a host's spawner is killed (SIGKILL, its ``nbpool up``
   paused so nothing restarts it). Timed from the kill until the gateway no longer counts it
   (``/api/stats``: one spawner), which is when it stops sending it claims, and until its sessions
   are ended (``host.lost``, ``nbpool status``). The settings are the defaults: heartbeat every
   2 s, ``NBPOOL_HOST_TIMEOUT`` 8 s, so the floor is 8 s minus the time since the last beat.
3. Bus leader kill → first successful claim: the node leading the sessions' bucket is killed the
   same way; launches are tried every 100 ms (each with a 30 s timeout), and the time from the kill
   until one started after it succeeds is recorded. The floor is a launch with all nodes up.
4. The control plane with a third host and synthetic records (``scale``).
5. What ``cluster init --sync always`` costs: claims as in 1 (one host) on a second bus made with
   it, beside the default bus's one-host figures.
6. First output with real sandboxes (Docker containers of the notebook image; both hosts' spawners
   use this machine's one engine): as in the one-machine ``first_output`` group, with the same
   number of warm sandboxes and of starts at once on one host, then split over two hosts.

Each failover is repeated and given as a median; between runs the victim is revived and the
cluster waits until everything is back (pools full, the node current again).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import claims
import first_output
import httpx
import scale
from claims import ClaimResults
from common import BENCH, BIN, Figure, free_ports, progress

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from buscluster import BusCluster, sessions_leader, stop_all  # noqa: E402 - after the path is set
from cluster import end_docker_leftovers, local_client  # noqa: E402

__all__ = ["HostsResults", "measure"]


@dataclass
class HostsResults:
    """The figures of this group (see the module docstring)."""

    pool: int
    claims: dict[int, ClaimResults] = field(default_factory=dict)  # hosts -> claim results
    host_gone: Figure = field(default_factory=lambda: Figure("host killed → no claims sent to it", unit="s"))
    host_ended: Figure = field(default_factory=lambda: Figure("host killed → its sessions ended", unit="s"))
    leader_claim: Figure = field(default_factory=lambda: Figure("bus leader killed → first claim", unit="s"))
    launch_floor: Figure = field(default_factory=lambda: Figure("a launch, all nodes up", unit="s"))
    heartbeat_s: float = 2.0
    host_timeout_s: float = 8.0
    scale: scale.ScaleResults | None = None
    #: One host's claims on a bus made with ``--sync always`` (beside ``claims[1]``).
    sync_always: ClaimResults | None = None
    #: Hosts -> time to first output with real sandboxes, the same number warm in all.
    ttfo: dict[int, first_output.TTFOResults] = field(default_factory=dict)
    ttfo_pool: int = 0
    notes: list[str] = field(default_factory=list)


class HostsCluster:
    """The loopback cluster of the module docstring; quacks enough like a BenchCluster for ``claims``."""

    def __init__(self, root: Path, pool: int, instance: str = "nbpool", sync: str = "default",
                 image: str | None = None) -> None:
        self.root = root
        self.pool = pool
        #: Sandboxes: containers of ``image`` (real Jupyter), else stub processes.
        self.image = image
        self.runtime = "docker" if image else "process"
        self.instance = instance
        self.bus = BusCluster(root / "bus", instance=instance, sync=sync)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pools: dict[str, int] = {}
        port = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        self._stats_client = local_client(timeout=2)
        # What ``scale`` asks of a cluster.
        from nbpool.origins import Origins

        self.origins = Origins.from_settings("host", self.url)
        self.nats_url = self.bus.url
        self.env = {"NBPOOL_INSTANCE": instance}
        self.proxy_env = {
            "NBPOOL_PROXY_PORT": str(port), "NBPOOL_PROXY_PING_PORT": str(free_ports(1)),
            "NBPOOL_GATEWAY_PORT": str(free_ports(1)), "NBPOOL_METRICS_PORT": "0", "NBPOOL_PUBLIC_URL": self.url,
            "NBPOOL_RATE_LIMIT": "100000", "NBPOOL_RATE_BURST": "100000", "NBPOOL_MAX_SESSIONS_PER_CLIENT": "100000",
        }

    def _up(self, name: str, role: str, folder: str, env: dict[str, str]) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("NBPOOL_")}
        (self.root / name).mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{name}.out", "ab") as out:
            self.procs[name] = subprocess.Popen(
                [str(BIN / "nbpool"), "up", "--role", role, "--cluster", str(self.bus.secrets / folder)],
                env={**base, "NBPOOL_STATE_DIR": str(self.root / name), **env}, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)

    def start(self) -> None:
        self.bus.start()
        self._up("proxy", "proxy", "proxy", self.proxy_env)
        self.add_host("h1")

    def add_host(self, name: str, pool: int | None = None, starts: int = 4) -> None:
        """A sandbox host with a pool of ``pool`` (default: the cluster's). Stub sandboxes are at
        capacity once the pool is full (as in ``claims``); real ones may start 3 × the pool (as
        ``first_output``'s clusters may), ``starts`` at once, so a round of visitors refills while
        it runs."""
        pool = pool or self.pool
        self.pools[name] = pool
        if self.image:
            sandboxes = {"NBPOOL_RUNTIME": "docker", "NBPOOL_DOCKER_IMAGE": self.image,
                         "NBPOOL_MAX_SANDBOXES": str(3 * pool), "NBPOOL_SPAWN_CONCURRENCY": str(starts)}
        else:
            sandboxes = {"NBPOOL_RUNTIME": "process", "NBPOOL_JUPYTER_COMMAND": f"{sys.executable} {BENCH / 'stub.py'}",
                         "NBPOOL_PRESTART_KERNEL": "false", "NBPOOL_MAX_SANDBOXES": str(pool),
                         "NBPOOL_SPAWN_CONCURRENCY": "16"}
        self._up(name, "host", "host", {"NBPOOL_SPAWNER_ID": name, "NBPOOL_METRICS_PORT": "0",
                                        "NBPOOL_POOL_SIZE": str(pool), **sandboxes})

    def remove_host(self, name: str) -> None:
        """Stops a host as its operator would (Ctrl-C to its ``nbpool up``, which ends its sandboxes)."""
        stop_all([self.procs.pop(name)])
        self.pools.pop(name)

    def sandbox_processes(self) -> list[Any]:
        """For ``first_output``'s CPU count; only Docker clusters are measured that way."""
        return []

    def bus_credentials(self) -> Any:
        from nbpool.busauth import OPERATOR

        return self.bus.credentials(OPERATOR)

    def hosts(self) -> list[str]:
        return [name for name in self.procs if name.startswith("h")]

    def stats(self) -> dict[str, Any] | None:
        try:
            return self._stats_client.get(f"{self.url}/api/stats").json()  # type: ignore[no-any-return]
        except (httpx.HTTPError, ValueError):
            return None

    def wait_quiet(self, warm: int | None = None, timeout: float = 300.0) -> float:
        """Until every host's pool is full and nothing starts; the seconds it took."""
        began = time.monotonic()
        want = sum(self.pools.values())
        while time.monotonic() - began < timeout:
            s = self.stats()
            if s and s["spawners"] >= len(self.hosts()) and s["available"] >= want and s["starting"] == 0:
                return time.monotonic() - began
            time.sleep(0.2)
        raise AssertionError(f"pools not full within {timeout:g} s: {self.stats()}")

    def children(self, name: str) -> dict[str, int]:
        data = json.loads((self.root / name / "run" / "children.json").read_text())
        return {k: int(v) for k, v in data["children"].items()}

    def pids(self) -> dict[str, int]:
        pids = {name: pid for name, pid in self.children("proxy").items() if name in ("gateway", "traefik", "router", "culler")}
        for host in self.hosts():
            pids[f"spawner {host}"] = self.children(host)["spawner"]
        for node in self.bus.nodes:
            pids[f"nats {node}"] = self.bus.nats_pid(node)
        return pids

    def kill_host(self, name: str) -> None:
        """The host dies: its spawner gets SIGKILL, its ``nbpool up`` is paused (nothing restarts it)."""
        os.kill(self.procs[name].pid, signal.SIGSTOP)
        os.kill(self.children(name)["spawner"], signal.SIGKILL)

    def revive_host(self, name: str) -> None:
        os.kill(self.procs[name].pid, signal.SIGCONT)

    def ended(self, host: str) -> int:
        """Sessions of ``host`` still claimed (by ``nbpool status``, as the operator)."""
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("NBPOOL_")},
               "NBPOOL_NATS_URL": self.bus.url, "NBPOOL_NATS_CREDENTIALS": str(self.bus.folder("operator"))}
        done = subprocess.run([str(BIN / "nbpool"), "status", "--json"], env=env, capture_output=True, text=True, timeout=60)
        records = json.loads(done.stdout)["sandboxes"] if done.returncode == 0 else []
        return sum(1 for r in records if r["host"] == host and r["state"] == "claimed")

    def stop(self) -> None:
        stop_all(list(self.procs.values()))
        self.bus.stop()
        self._stats_client.close()
        if self.image:  # what a clean stop should have ended (nothing, normally)
            left = end_docker_leftovers(self.instance, f"{self.instance}-sandboxes")
            if left:
                progress(f"hosts: {len(left)} containers were left after the hosts stopped; ended them")


async def _launch(url: str) -> dict[str, Any] | None:
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            resp = await client.post(f"{url}/sessions", json={})
    except httpx.HTTPError:
        return None
    return resp.json() if resp.status_code == 201 else None  # type: ignore[no-any-return]


async def measure(results: HostsResults, root: Path, per_level: int, levels: list[int], runs: int, records: int,
                  slices: tuple[int, int, int], image: str | None, ttfo_plan: dict[int, int]) -> HostsResults:
    """Everything of the module docstring, in its order: ``records`` synthetic records for the
    control plane (``slices``: baseline, load, propagation samples); first output (with ``image``,
    if there is one) at ``ttfo_plan`` (visitors at once -> rounds) with ``results.ttfo_pool`` warm.
    Fills ``results`` as it goes, so what was measured stays when a later part fails."""
    pool = results.pool
    cluster = HostsCluster(root / "stub", pool)
    try:
        await asyncio.to_thread(cluster.start)
        await asyncio.to_thread(cluster.wait_quiet)
        results.claims[1] = await claims.measure(cluster, pool, per_level, levels)  # type: ignore[arg-type]
        cluster.add_host("h2")
        await asyncio.to_thread(cluster.wait_quiet)
        results.claims[2] = await claims.measure(cluster, pool, per_level, levels)  # type: ignore[arg-type]
        await _failover(results, cluster, runs)
        cluster.add_host("h3")
        await asyncio.to_thread(cluster.wait_quiet)
        base, load, propagation = slices
        results.scale = await scale.measure(cluster, pool, records, base, load, propagation, hosts=3)  # type: ignore[arg-type]
    finally:
        await asyncio.to_thread(cluster.stop)

    always = HostsCluster(root / "always", pool, sync="always")
    try:
        await asyncio.to_thread(always.start)
        await asyncio.to_thread(always.wait_quiet)
        results.sync_always = await claims.measure(always, pool, per_level, levels)  # type: ignore[arg-type]
    finally:
        await asyncio.to_thread(always.stop)

    if image is None:
        results.notes.append("No Docker engine: first output with real sandboxes on one host and two was not measured.")
        return results
    warm = results.ttfo_pool
    real = HostsCluster(root / "docker", warm, instance="nbbenchhosts", image=image)
    try:
        await asyncio.to_thread(real.start)
        await asyncio.to_thread(real.wait_quiet)
        results.ttfo[1] = first_output.TTFOResults()
        await first_output.measure(real, warm, ttfo_plan, results.ttfo[1])  # type: ignore[arg-type]
        await asyncio.to_thread(real.remove_host, "h1")
        # The same machine's cores in both: half the warm sandboxes and half the starts at once each.
        real.add_host("h1", warm // 2, starts=2)
        real.add_host("h2", warm - warm // 2, starts=2)
        await asyncio.to_thread(real.wait_quiet)
        results.ttfo[2] = first_output.TTFOResults()
        await first_output.measure(real, warm, ttfo_plan, results.ttfo[2])  # type: ignore[arg-type]
    finally:
        await asyncio.to_thread(real.stop)
    return results


async def _failover(results: HostsResults, cluster: HostsCluster, runs: int) -> None:
    """``runs`` host deaths (h2), then ``runs`` kills of the bus leader, each until claims go on."""
    for run in range(runs):
        await asyncio.to_thread(cluster.wait_quiet)
        sessions = [s for s in [await _launch(cluster.url) for _ in range(4)] if s]
        for _ in range(10):  # at least one session on the host that dies
            if await asyncio.to_thread(cluster.ended, "h2"):
                break
            if (extra := await _launch(cluster.url)) is not None:
                sessions.append(extra)
        killed = time.monotonic()
        cluster.kill_host("h2")
        gone = ended = None
        while time.monotonic() - killed < 60 and (gone is None or ended is None):
            s = await asyncio.to_thread(cluster.stats)
            if gone is None and s is not None and s["spawners"] == 1:
                gone = time.monotonic() - killed
            if gone is not None and ended is None and await asyncio.to_thread(cluster.ended, "h2") == 0:
                ended = time.monotonic() - killed
            await asyncio.sleep(0.05 if gone is None else 0.25)
        cluster.revive_host("h2")
        if gone is not None:
            results.host_gone.add_run([gone])
        if ended is not None:
            results.host_ended.add_run([ended])
        progress(f"hosts: host killed, run {run + 1}/{runs}: no claims after {gone} s, sessions ended after "
                 f"{ended} s ({len(sessions)} sessions on both hosts)")
        await _end_all(cluster.url, sessions)

    for run in range(runs):
        await asyncio.to_thread(cluster.wait_quiet)
        began = time.monotonic()
        floor = await _launch(cluster.url)
        results.launch_floor.add_run([time.monotonic() - began])
        leader = await _leader(cluster.bus)
        cluster.bus.kill(leader)
        killed = time.monotonic()
        first = None
        pending: set[asyncio.Task[Any]] = set()
        made: list[dict[str, Any]] = []
        while first is None and time.monotonic() - killed < 60:
            pending.add(asyncio.ensure_future(_launch(cluster.url)))
            done, pending = await asyncio.wait(pending, timeout=0.1)
            for task in done:
                got = task.result()
                if got is not None:
                    made.append(got)
                    first = first or time.monotonic() - killed
        for task in pending:
            got = await task
            if got is not None:
                made.append(got)
        cluster.bus.revive(leader)
        if first is not None:
            results.leader_claim.add_run([first])
        progress(f"hosts: bus leader {leader} killed, run {run + 1}/{runs}: first claim after {first} s")
        await _end_all(cluster.url, [*made, *([floor] if floor else [])])
        await asyncio.to_thread(_wait_current, cluster.bus, leader)


async def _end_all(url: str, sessions: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        for s in sessions:
            try:
                await client.delete(f"{url}/sessions/{s['id']}", headers={"Authorization": f"token {s['token']}"})
            except httpx.HTTPError:
                pass


async def _leader(bus: BusCluster) -> str:
    from nbpool.busauth import OPERATOR

    return await sessions_leader(bus.url, bus.credentials(OPERATOR))


def _wait_current(bus: BusCluster, node: str, timeout: float = 120) -> None:
    """Until ``node`` holds a current replica of the sessions' bucket again."""
    from nbpool.bus import Bus
    from nbpool.busauth import OPERATOR
    from nbpool.names import Names

    async def current() -> bool:
        client = await Bus.connect(bus.url, Names("nbpool"), "bench", credentials=bus.credentials(OPERATOR))
        try:
            info = await client.js.stream_info("KV_nbpool_sandboxes")
        finally:
            await client.close()
        if info.cluster is None:
            return False
        peers = {info.cluster.leader} | {p.name for p in info.cluster.replicas or [] if p.current and not p.offline}
        return node in peers

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(current()):
            return
        time.sleep(1.0)
    raise AssertionError(f"bus node {node} not current again within {timeout:g} s")
