"""Pool fill rate: sandboxes per second from an empty pool to ``pool`` warm, against starting the same
sandboxes by hand.

nbpool: ``nbpool up`` with a pool of ``pool``, starting as many at once as it does by default
(``NBPOOL_SPAWN_CONCURRENCY``: the cores). Once it is full and quiet, ``pool`` programs claim every
warm sandbox at once (the sessions stay open, idle), and the spawner refills the pool from empty:
what a stream of visitors meets. The fill is the spawner's own account of the refill: from the
first new start's beginning (``sandbox.warm`` time minus its ``startup_s``) to the last new
sandbox turning warm, each one created, its Jupyter answering, the Welcome notebook's kernel
pre-started with its warm-up execution, and routed. Rate = ``pool`` / that time. (The first fill
after ``nbpool up`` would also count the services' own start.)

Floor: the same containers by hand: nbpool's own Docker runtime (the same image, user,
capabilities, read-only root, tmpfs home, limits, network and start-up CPU share), the same
number at once, each until its server answers and the same kernel pre-start is done
(``nbpool.spawner.kernel.prestart_kernel``), then given the normal CPU share, as the spawner does.
No bus, records, routes or events: what nbpool adds to a start is the difference.

Both: the host's CPU (all processes, ``/proc/stat``) over the fill, per sandbox, and the CPU in
the sandbox's own container (its cgroup) at warm; with the cores, the fastest fill the CPU
allows. And each start's phases (:data:`PHASES`): nbpool's from the times in its ``sandbox.warm``
event, the floor's timed here with the CPU its container used in each (its cgroup, read at each
phase's end). And whether the kernel lets this machine checkpoint and restore processes (``criu
check``): restoring pre-started servers is the one way past the CPU a fresh start costs.

Runs alternate floor and nbpool, each from nothing (the cluster is stopped between runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import statistics
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from common import Figure, docker_client, progress
from first_output import CPU
from first_output import cluster as ttfo_cluster

__all__ = ["PHASES", "FillResults", "checkpoint_restore", "measure", "start_by_hand"]


@dataclass
class FillResults:
    pool: int
    concurrency: int = 0
    cores: int = os.cpu_count() or 1
    #: sandboxes per second, one sample per run
    rate: dict[str, Figure] = field(default_factory=dict)
    #: seconds from nothing to ``pool`` warm, one sample per run
    fill_s: dict[str, Figure] = field(default_factory=dict)
    #: the host's CPU seconds per sandbox over the fill, one sample per run
    host_cpu_s: dict[str, Figure] = field(default_factory=dict)
    #: CPU seconds in each sandbox's container at warm, all sandboxes of all runs
    sandbox_cpu_s: dict[str, Figure] = field(default_factory=dict)
    #: nbpool's refills: CPU seconds per new sandbox by where it was spent (processes, sandboxes), per run
    nbpool_cpu: list[dict[str, float]] = field(default_factory=list)
    #: each phase of a start (:data:`PHASES`), seconds, every sandbox of every run: way -> phase -> figure
    phase_s: dict[str, dict[str, Figure]] = field(default_factory=dict)
    #: the CPU seconds in the sandbox's container in each phase, started by hand: phase -> figure
    phase_cpu_s: dict[str, Figure] = field(default_factory=dict)
    #: ``criu check``'s verdict
    criu: str = ""
    errors: list[str] = field(default_factory=list)


class HostCPU:
    """Samples the host's busy CPU seconds (all cores, /proc/stat) every 0.1 s while running, so a
    window known only afterwards (from event times) can be measured."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HostCPU:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), _busy_seconds()))
            self._stop.wait(0.1)

    def between(self, start: float, end: float) -> float:
        """Busy CPU seconds between two wall-clock times (the samples nearest to each)."""
        def at(t: float) -> float:
            return min(self.samples, key=lambda s: abs(s[0] - t))[1]
        return at(end) - at(start)


def _busy_seconds() -> float:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(v) for v in fields]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _container_cpu_s(container_id: str) -> float | None:
    for path in (f"/sys/fs/cgroup/cpuacct/docker/{container_id}/cpuacct.usage",
                 f"/sys/fs/cgroup/cpu,cpuacct/docker/{container_id}/cpuacct.usage"):
        with contextlib.suppress(OSError, ValueError):
            return int(Path(path).read_text()) / 1e9
    with contextlib.suppress(OSError, ValueError, IndexError):
        stat = Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope/cpu.stat").read_text()
        return int(stat.split()[1]) / 1e6
    return None


def _containers_cpu_s(label: str, only: set[str] | None = None) -> list[float]:
    """CPU seconds of each running container with ``label`` (and, given ``only``, one of those sandbox ids)."""
    from nbpool.runtime.docker import LABEL

    found = []
    for container in docker_client().containers.list(filters={"label": label}):
        if only is not None and container.labels.get(f"{LABEL}.sandbox") not in only:
            continue
        used = _container_cpu_s(container.id)
        if used is not None:
            found.append(used)
    return found


def checkpoint_restore() -> str:
    """``criu check``'s verdict on this machine, in a line."""
    criu = shutil.which("criu") or next((p for p in ("/usr/sbin/criu", "/sbin/criu") if os.path.exists(p)), None)
    if criu is None:
        return "criu is not installed (Debian's package `criu`)"
    try:
        done = subprocess.run([criu, "check"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.SubprocessError) as err:
        return f"`criu check` could not run: {err}"
    version = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    version = f"criu {version.split()[-1]}" if version.split() else "criu"  # it says "Version: 3.17.1"
    if done.returncode == 0:
        return f"{version}: `criu check` passes"
    errors = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return f"{version}: `criu check` fails on this kernel ({os.uname().release}): " + " / ".join(errors[:2])


#: A start's phases, each ending when the spawner's (and the floor's) start reaches it: the keys of
#: ``sandbox.warm``'s data without ``_s``, and what each phase does.
PHASES = {
    "created": "the container created and started (the Docker engine)",
    "answered": "Jupyter's server imported, started and answering",
    "session": "the notebook's session made, its kernel's process launched (the server)",
    "kernel": "the kernel imported, started and answering its first request",
    "warmed": "the warm-up execution",
    "routed": "the route through the proxy ready (nbpool only; it is probed while the kernel starts)",
}


async def start_by_hand(runtime: Any, http: Any, image: str,
                        phases: dict[str, tuple[float, float | None]] | None = None) -> tuple[str, str, str]:
    """A sandbox through nbpool's Docker ``runtime`` as the spawner starts one, without nbpool: created,
    answering, its Welcome notebook's kernel pre-started, given the normal CPU share; (id, URL, token).

    Given ``phases``, it is filled with each phase's (seconds, CPU seconds in the container), phases
    as in :data:`PHASES`."""
    from nbpool.aio import poll_ready
    from nbpool.models import SandboxRecord, State
    from nbpool.runtime.base import SandboxSpec
    from nbpool.runtime.docker import LABEL
    from nbpool.spawner.kernel import prestart_kernel

    sid = secrets.token_hex(6)
    spec = SandboxSpec(id=sid, token=secrets.token_urlsafe(24), base_path="/", profile="default", image=image)
    began = time.monotonic()
    sandbox = await runtime.create(spec)
    container_id = ""
    if phases is not None:
        found = await asyncio.to_thread(docker_client().containers.list, filters={"label": f"{LABEL}.sandbox={sid}"})
        container_id = found[0].id if found else ""
    last = [began, 0.0]

    def mark(phase: str) -> None:
        if phases is None:
            return
        now, used = time.monotonic(), _container_cpu_s(container_id)
        phases[phase] = (now - last[0], None if used is None else used - last[1])
        last[:] = [now, used or 0.0]

    mark("created")

    async def answers() -> bool | None:
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get(f"{sandbox.target}/api", timeout=2)).status_code == 200:
                return True
        return None

    await poll_ready(answers, deadline=time.monotonic() + 120)  # paced as the spawner polls a start
    mark("answered")
    rec = SandboxRecord(id=sid, host="floor", pool="default", state=State.STARTING, target=sandbox.target,
                        path="/", token=spec.token, created_at=time.time())
    await prestart_kernel(http, rec, "Welcome.ipynb", 120, mark)
    mark("warmed")
    await runtime.promote(sid)
    return sid, sandbox.target, spec.token


async def _floor_run(image: str, pool: int, concurrency: int, cpu: HostCPU,
                     phases: list[dict[str, tuple[float, float | None]]]) -> tuple[float, float, list[float]]:
    """One fill by hand; (seconds, host CPU seconds, CPU seconds of each container); each start's
    phases appended to ``phases``."""
    from cluster import end_docker_leftovers

    from nbpool.runtime.docker import LABEL, DockerRuntime

    instance = f"benchfill{uuid.uuid4().hex[:8]}"
    network = f"{instance}-sandboxes"
    runtime = DockerRuntime(instance, "floor", image, network)
    gate = asyncio.Semaphore(concurrency)
    used: list[float] = []

    async def one(http: httpx.AsyncClient) -> None:
        async with gate:
            phases.append({})
            await start_by_hand(runtime, http, image, phases[-1])

    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            began = time.time()
            await asyncio.gather(*(one(http) for _ in range(pool)))
            ended = time.time()
        used = await asyncio.to_thread(_containers_cpu_s, f"{LABEL}.instance={instance}")
    finally:
        await asyncio.to_thread(end_docker_leftovers, instance, network)
    return ended - began, cpu.between(began, ended), used


def _nbpool_run(image: str, pool: int, concurrency: int, cpu: HostCPU, split: list[dict[str, float]],
                phases: list[dict[str, tuple[float, float | None]]]) -> tuple[float, float, list[float]]:
    """One refill of an emptied pool by ``nbpool up``; (seconds, host CPU seconds, CPU seconds of
    each new container); each start's phases (from its ``sandbox.warm`` event) appended to ``phases``."""
    import httpx
    from waiting import poll_until

    from nbpool.runtime.docker import LABEL

    with ttfo_cluster("fill", image, pool, 2 * pool, concurrency) as cluster:
        cluster.env["NBPOOL_UNOPENED_TIMEOUT"] = "3600"  # the claimed sessions stay while the pool refills
        cluster.start(warm=1, timeout=300)
        cluster.wait_quiet(pool, timeout=600)
        time.sleep(3)  # the last starts settle
        first = {e.get("sandbox_id") for e in cluster.events() if e.get("type") == "sandbox.warm"}
        meter = CPU(cluster)
        before = meter.read(starting=True)
        with httpx.Client(timeout=60, trust_env=False) as http:
            for _ in range(pool):
                resp = http.post(f"{cluster.url}/sessions", json={"wait": 60})
                if resp.status_code != 201:
                    raise RuntimeError(f"claiming the pool: {resp.status_code} {resp.text[:200]}")
        # The gateway's counts follow the bus a moment later: until they show the claims, the pool
        # still looks full and quiet.
        poll_until(lambda: (s := cluster.stats())["available"] < pool or s["starting"] > 0, 30, "the claims in /api/stats",
                   interval=0.05)
        cluster.wait_quiet(pool, timeout=600)
        after = meter.read(starting=False)
        warm = [e for e in cluster.events() if e.get("type") == "sandbox.warm" and e.get("sandbox_id") not in first]
        new = {str(e.get("sandbox_id")) for e in warm}
        # Where the CPU of the refill went, per new sandbox: each process, the new sandboxes, the others.
        spent = {name: (used - before[0].get(name, 0.0)) / 1000 / pool for name, used in after[0].items()}
        spent["the new sandboxes"] = sum(ms for sid, ms in after[1].items() if sid in new) / 1000 / pool
        spent["the claimed sandboxes (idle)"] = sum(
            ms - before[1].get(sid, 0.0) for sid, ms in after[1].items() if sid not in new) / 1000 / pool
        split.append(spent)
        used = _containers_cpu_s(f"{LABEL}.instance={cluster.instance}", {str(e.get("sandbox_id")) for e in warm})
    if len(warm) < pool:
        raise RuntimeError(f"{len(warm)} new sandbox.warm events after claiming a pool of {pool}")
    for e in warm:
        ends = [float(e["data"].get(f"{phase}_s", "nan")) for phase in PHASES]
        phases.append({phase: (end - before, None) for phase, end, before in zip(PHASES, ends, [0.0, *ends[:-1]], strict=True)})
    began = min(float(e["time"]) - float(e["data"]["startup_s"]) for e in warm)
    ended = max(float(e["time"]) for e in warm)
    return ended - began, cpu.between(began, ended), used


async def measure(image: str, pool: int, runs: int, results: FillResults) -> None:
    """``runs`` fills of ``pool`` each way, alternating, into ``results``."""
    results.concurrency = max(2, os.cpu_count() or 2)  # nbpool's default NBPOOL_SPAWN_CONCURRENCY
    results.criu = await asyncio.to_thread(checkpoint_restore)
    for way in ("floor", "nbpool"):
        results.rate[way] = Figure(f"fill rate, {way}", unit="/s")
        results.fill_s[way] = Figure(f"empty to {pool} warm, {way}", unit="s")
        results.host_cpu_s[way] = Figure(f"host CPU per sandbox, {way}", unit="s")
        results.sandbox_cpu_s[way] = Figure(f"CPU in the sandbox at warm, {way}", unit="s")
        results.phase_s[way] = {phase: Figure(f"{phase}, {way}", unit="s") for phase in PHASES}
    results.phase_cpu_s = {phase: Figure(f"CPU in the sandbox, {phase}, by hand", unit="s") for phase in PHASES}
    for run in range(runs):
        for way in ("floor", "nbpool"):
            await asyncio.sleep(3)  # the previous run's removals settle
            phases: list[dict[str, tuple[float, float | None]]] = []
            with HostCPU() as cpu:
                if way == "floor":
                    took, busy, used = await _floor_run(image, pool, results.concurrency, cpu, phases)
                else:
                    took, busy, used = await asyncio.to_thread(_nbpool_run, image, pool, results.concurrency, cpu,
                                                               results.nbpool_cpu, phases)
            for phase in PHASES:
                took_in = [p[phase][0] for p in phases if phase in p and not math.isnan(p[phase][0])]
                used_in = [cpu_s for p in phases if phase in p and (cpu_s := p[phase][1]) is not None]
                if took_in:
                    results.phase_s[way][phase].add_run(took_in)
                if used_in:
                    results.phase_cpu_s[phase].add_run(used_in)
            results.rate[way].add_run([pool / took])
            results.fill_s[way].add_run([took])
            results.host_cpu_s[way].add_run([busy / pool])
            results.sandbox_cpu_s[way].add_run(used)
            progress(f"fill, run {run + 1}, {way}: {pool} warm in {took:.1f} s ({pool / took:.2f}/s), host CPU "
                     f"{busy / pool:.2f} s per sandbox, in the sandbox {statistics.median(used) if used else float('nan'):.2f} s")


def summary(results: FillResults) -> dict[str, Any]:
    """The figures as plain numbers, for a quick look (``python bench/fill.py``)."""
    return {way: {"rate_per_s": f.pooled.p50, "fill_s": results.fill_s[way].pooled.p50,
                  "host_cpu_s": results.host_cpu_s[way].pooled.p50, "sandbox_cpu_s": results.sandbox_cpu_s[way].pooled.p50}
            for way, f in results.rate.items()}


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="the fill group alone, printed as JSON")
    parser.add_argument("--pool", type=int, default=20)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    client = docker_client()
    if client is None:
        sys.exit("no Docker engine answers")
    found = FillResults(pool=args.pool)
    asyncio.run(measure("nbpool/notebook:latest", args.pool, args.runs, found))
    print(json.dumps({"criu": found.criu, **summary(found), "nbpool_cpu": found.nbpool_cpu}, indent=1))
