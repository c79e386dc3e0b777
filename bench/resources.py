"""Sockets and memory: what an open notebook costs in connections, and what nbpool itself costs in memory.

What it measures:

- **sockets per open kernel websocket**: ``count`` visitors each claim a sandbox and open a
  websocket to its kernel through Traefik. The established TCP connections are counted from
  ``/proc`` (psutil) before and after, on each side: client↔proxy (Traefik's accepted
  connections on its entry point), proxy↔sandbox (Traefik's connections to the sandboxes'
  own addresses), the sandbox servers' connections from the proxy (counted in each
  container's network namespace), and any ``docker-proxy`` process (a published port's
  extra hop, which nbpool does not use). tmpnb needed about five sockets per websocket, with
  docker-proxy in the path.
- **control-plane memory**: RSS and PSS (shared pages divided among the processes that share
  them) of NATS, Traefik, each service and ``nbpool up`` itself.
- **idle sandbox memory**: each warm sandbox's memory as its container's cgroup counts it
  (usage less inactive file cache, as ``docker stats`` shows), or the process tree's RSS under
  the process runtime.

Floor: none is needed for counts, which are exact; memory is reported per process beside the
target.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import websockets
from common import (
    BenchCluster,
    docker_client,
    end_sessions,
    is_jupyter_server,
    kernel_channels,
    memory,
    sandbox_base,
)
from first_output import visit

__all__ = ["ResourceResults", "control_plane_memory", "idle_sandbox_memory", "sockets_per_websocket"]


@dataclass
class ResourceResults:
    """Connections per websocket, memory per control-plane process (MiB), memory per idle sandbox (MiB)."""

    sockets: dict[str, float] = field(default_factory=dict)
    websockets_open: int = 0
    control_plane: dict[str, dict[str, float]] = field(default_factory=dict)
    sandbox_mib: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class _Conn:
    lport: int
    rip: str
    rport: int


def _hex_addr(text: str) -> tuple[str, int]:
    addr, port = text.split(":")
    if len(addr) == 8:  # IPv4, little-endian
        ip = ".".join(str(b) for b in reversed(bytes.fromhex(addr)))
    else:  # IPv6: four little-endian words
        words = bytes.fromhex(addr)
        raw = b"".join(words[i:i + 4][::-1] for i in range(0, 16, 4))
        ip = ipaddress.ip_address(raw).compressed
        if ip.startswith("::ffff:"):
            ip = ip.removeprefix("::ffff:")
    return ip, int(port, 16)


def _established(pid: int) -> list[_Conn]:
    """The process's established TCP connections, read from /proc in *its* network namespace.

    (psutil reads the caller's namespace, so it finds nothing for a process in a container.)
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
                    _, lport = _hex_addr(fields[1])
                    rip, rport = _hex_addr(fields[2])
                    found.append(_Conn(lport, rip, rport))
    return found


def _jupyter_servers(client: Any, cluster: BenchCluster, ids: set[str]) -> list[psutil.Process]:
    """The Jupyter server processes of the given sandboxes (containers: the child of tini)."""
    found = []
    if cluster.runtime == "docker":
        for container in client.containers.list(filters={"label": f"nbpool.instance={cluster.instance}"}):
            if container.labels.get("nbpool.sandbox") not in ids:
                continue
            init = psutil.Process(container.attrs["State"]["Pid"])
            found += [proc for proc in [init, *init.children(recursive=True)] if is_jupyter_server(proc)][:1]
    else:
        found += [proc for sid, proc in cluster.server_processes().items() if sid in ids]
    return found


async def sockets_per_websocket(cluster: BenchCluster, count: int = 10) -> ResourceResults:
    """Connections per open kernel websocket, on each side (see the module docstring)."""
    results = ResourceResults(websockets_open=count)
    client = docker_client() if cluster.runtime == "docker" else None
    traefik = psutil.Process(cluster.children()["traefik"])
    visits = [await visit(cluster.url, run_code=False) for _ in range(count)]
    sessions = [v.session for v in visits if v.session]
    if len(sessions) < count:
        raise RuntimeError(f"only {len(sessions)} of {count} sessions for the socket count")
    targets = {await asyncio.to_thread(cluster.target_of, s["id"]) for s in sessions}
    addresses = {(t.removeprefix("http://").split(":")[0], int(t.rsplit(":", 1)[1])) for t in targets}
    servers = _jupyter_servers(client, cluster, {s["id"] for s in sessions})
    ports = {port for _, port in addresses}

    def held(client_ports: set[int]) -> dict[str, int]:
        conns = _established(traefik.pid)
        inbound = [c for p in servers for c in _established(p.pid) if c.lport in ports]
        return {
            # Only the websockets' own connections: other clients (the bench polling /api/stats,
            # say) come and go on the same entry point.
            "client↔proxy (Traefik, entry point)": sum(
                1 for c in conns if c.lport == cluster.proxy_port and c.rport in client_ports),
            "proxy↔sandbox (Traefik, upstream)": sum(1 for c in conns if (c.rip, c.rport) in addresses),
            # Under the process runtime the proxy's connections come from loopback too.
            "proxy↔sandbox (sandbox servers, inbound)": len(inbound),
        }

    await asyncio.sleep(1.0)
    before = held(set())
    sockets: list[Any] = []
    try:
        for s in sessions:
            url = kernel_channels(sandbox_base(s), s["kernel_id"], s["token"])
            sockets.append(await websockets.connect(url, open_timeout=30, close_timeout=2, proxy=None))
        await asyncio.sleep(1.0)
        after = held({ws.local_address[1] for ws in sockets})
    finally:
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()
    results.sockets = {k: (after[k] - before[k]) / count for k in after}
    if not servers:
        results.sockets.pop("proxy↔sandbox (sandbox servers, inbound)")
    results.sockets["docker-proxy processes on the host"] = float(
        sum(1 for p in psutil.process_iter(["name"]) if p.info["name"] == "docker-proxy")
    )
    await end_sessions(cluster.url, [v.session for v in visits if v.session])
    return results


def control_plane_memory(cluster: BenchCluster) -> dict[str, dict[str, float]]:
    """RSS and PSS (MiB) of each of nbpool's own processes."""
    return {name: memory(pid) for name, pid in cluster.pids().items()}


def _cgroup_mib(container_id: str) -> float | None:
    """A container's memory as ``docker stats`` counts it, read from its cgroup (v1 or v2)."""
    candidates = [
        (Path(f"/sys/fs/cgroup/memory/docker/{container_id}"), "memory.usage_in_bytes", "total_inactive_file"),
        (Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope"), "memory.current", "inactive_file"),
        (Path(f"/sys/fs/cgroup/docker/{container_id}"), "memory.current", "inactive_file"),
    ]
    for folder, usage_file, inactive_key in candidates:
        try:
            usage = int((folder / usage_file).read_text())
            stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
            return (usage - int(stat.get(inactive_key, 0))) / 2**20
        except (OSError, ValueError):
            continue
    return None


def idle_sandbox_memory(cluster: BenchCluster, profile: str | None = None) -> list[float]:
    """MiB per warm, idle sandbox (see the module docstring); with ``profile``, of that profile's only."""
    warm = {r["id"] for r in cluster.status()["sandboxes"]
            if r["state"] == "warm" and (profile is None or r["pool"] == profile)}
    values = []
    if cluster.runtime == "docker":
        client = docker_client()
        for container in client.containers.list(filters={"label": f"nbpool.instance={cluster.instance}"}):
            if container.labels.get("nbpool.sandbox") not in warm:
                continue
            mib = _cgroup_mib(container.id)
            if mib is None:
                stats = container.stats(stream=False)["memory_stats"]
                mib = (stats["usage"] - stats.get("stats", {}).get("inactive_file", 0)) / 2**20
            values.append(mib)
        return values
    for sid, proc in cluster.server_processes().items():
        if sid in warm:
            with contextlib.suppress(psutil.Error):
                values.append(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20)
    return values
