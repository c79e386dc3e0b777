"""gVisor beside runc: what running a sandbox under ``runsc`` costs, both measured in one cluster.

One nbpool with two profiles of ``pool`` warm sandboxes each: ``default`` (the engine's default
runtime, runc) and ``gvisor`` (``"runtime": "runsc"``). Everything else is the same: image, user,
read-only root, tmpfs home, memory limit (``NBPOOL_DOCKER_MEMORY`` + ``NBPOOL_DOCKER_DISK``), CPU
and pid limits. The spawner's capacity is exactly the two pools, so while visitors hold their
sandboxes no refill starts behind them.

What it measures, per runtime:

- **start time**: for each sandbox of the first fill, the seconds from the spawner beginning its
  start to warm (``startup_s`` of its ``sandbox.warm`` event: container created and started,
  Jupyter answering, kernel pre-started, routed), and to its server first answering
  (``answered_s``). Both pools fill at once, the spawner alternating between them
  (``NBPOOL_SPAWN_CONCURRENCY`` starts in flight), all at the normal CPU share, so starts share
  the CPU alike.
- **time to first output**: ``pool - 1`` visitors per runtime, one at a time, alternating between
  the runtimes, each exactly a visitor of ``first_output`` (``POST /sessions`` with
  ``{"profile": …}``, then ``1+1`` on the pre-started kernel through the proxy). One untimed
  visitor per runtime goes first: the first requests through a fresh gateway and proxy are
  slower, whichever runtime they are for.
- **idle memory**: each warm sandbox's container memory as its cgroup counts it, as the
  ``resources`` group measures it. Under gVisor that includes the Sentry (gVisor's kernel, in
  user space) and its gofer besides the Jupyter server and kernel.

Floor: runc, in the same cluster at the same time; the report gives runsc / runc ratios.

Needs the Docker runtime and an engine with a runtime named ``runsc`` (``deploy/docker-engine.sh
ensure``, as root, registers Debian's); without one the results say why and nothing is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

from common import BenchCluster, Figure, docker_client, progress
from first_output import Visit, visit
from resources import idle_sandbox_memory

__all__ = ["PROFILES", "GVisorResults", "cluster", "describe_runsc", "measure", "start", "unavailable"]

#: Docker runtime -> the profile whose sandboxes run under it.
PROFILES = {"runc": "default", "runsc": "gvisor"}
#: Failed starts of one runtime during the fill after which the group gives up (its cause is reported).
MAX_START_FAILURES = 3
#: The parts of a visit (``first_output.Visit`` attributes), reported beside the whole.
_PARTS = {"claim": "claim_ms", "websocket open": "connect_ms", "execute 1+1": "execute_ms"}


@dataclass
class GVisorResults:
    """Per runtime (``runc``, ``runsc``): start times (s), first output (ms), idle memory (MiB)."""

    pool: int
    #: Why figures are missing (no runsc, no Docker, a failure); empty when all were measured.
    missing: str = ""
    #: What the engine runs as ``runsc``: binary, version, arguments.
    runsc: str = ""
    fill_s: float = float("nan")
    start_s: dict[str, Figure] = field(default_factory=dict)
    answered_s: dict[str, Figure] = field(default_factory=dict)
    start_failures: dict[str, list[str]] = field(default_factory=dict)
    first_output: dict[str, Figure] = field(default_factory=dict)
    parts: dict[str, dict[str, Figure]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    memory_mib: dict[str, list[float]] = field(default_factory=dict)


def unavailable(image: str | None) -> str:
    """Why sandboxes cannot run under runsc here; empty when they can."""
    if image is None:
        return "sandboxes are processes in this run (no Docker engine), and gVisor is a Docker runtime"
    client = docker_client()
    if client is None:
        return "no Docker engine answers"
    runtimes = client.info().get("Runtimes") or {}
    if "runsc" not in runtimes:
        return (f"the Docker engine has no runtime named runsc (it has {', '.join(sorted(runtimes)) or 'none'}); "
                "`deploy/docker-engine.sh ensure`, run as root, registers Debian's")
    return ""


def describe_runsc() -> str:
    """What the engine runs as ``runsc``: its binary, version and arguments, for the report."""
    client = docker_client()
    spec = (client.info().get("Runtimes") or {}).get("runsc", {}) if client is not None else {}
    path = str(spec.get("path") or "runsc")
    args = " ".join(spec.get("runtimeArgs") or [])
    version = ""
    binary = shutil.which(path)
    if binary:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
            version = next((line.strip() for line in out.splitlines() if "version" in line), "")
    return ", ".join(part for part in (f"`{path}`", version, f"arguments `{args}`" if args else "") if part)


def cluster(image: str, pool: int, concurrency: int) -> BenchCluster:
    """Notebook containers of ``image``: a pool of ``pool`` under each runtime, and room for no more."""
    profiles = {"default": {"pool_size": pool}, "gvisor": {"pool_size": pool, "runtime": "runsc"}}
    return BenchCluster("gvisor", {
        "NBPOOL_RUNTIME": "docker",
        "NBPOOL_DOCKER_IMAGE": image,
        "NBPOOL_PROFILES": json.dumps(profiles),
        "NBPOOL_MAX_SANDBOXES": str(2 * pool),
        "NBPOOL_SPAWN_CONCURRENCY": str(concurrency),
        # runsc cannot change a running container's CPU share, so gVisor sandboxes start at the
        # normal one; runc ones would start lower (then be raised). The same for both here.
        "NBPOOL_DOCKER_START_CPU_SHARES": "1024",
    })


def _start_failures(cluster: BenchCluster) -> dict[str, list[str]]:
    """The causes of failed starts so far, per runtime (from ``sandbox.failed`` events)."""
    runtime_of = {profile: runtime for runtime, profile in PROFILES.items()}
    failed: dict[str, list[str]] = {runtime: [] for runtime in PROFILES}
    for event in cluster.events():
        runtime = runtime_of.get(event.get("data", {}).get("profile", ""))
        if event.get("type") == "sandbox.failed" and runtime:
            # Docker's errors can quote a whole usage text: the first line says what failed.
            failed[runtime].append((event.get("cause") or "no cause given").splitlines()[0][:300])
    return failed


def start(cluster: BenchCluster, pool: int, timeout: float = 300.0) -> float:
    """Start ``nbpool up`` and wait until both pools are full with nothing starting; the seconds it took.

    Gives up early when one runtime's sandboxes fail to start ``MAX_START_FAILURES`` times (a
    runtime the engine has but cannot run, say), naming the cause the spawner reported.
    """
    began = time.monotonic()
    deadline = began + timeout
    cluster.start(warm=1, timeout=timeout)
    look_again = 0.0
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        assert cluster.proc is not None and cluster.proc.poll() is None, f"nbpool up exited:\n{cluster.logs()}"
        with contextlib.suppress(Exception):
            stats = cluster.stats()
            counts = stats.get("profiles", {})
            if stats["starting"] == 0 and all(counts.get(p, {}).get("available", 0) >= pool for p in PROFILES.values()):
                return time.monotonic() - began
        if time.monotonic() >= look_again:  # `nbpool events` is a process of its own: now and then
            for runtime, causes in _start_failures(cluster).items():
                if len(causes) >= MAX_START_FAILURES:
                    raise RuntimeError(f"{runtime} sandboxes failed to start {len(causes)} times; the last: {causes[-1]}")
            look_again = time.monotonic() + 5
        time.sleep(0.5)
    raise TimeoutError(f"gvisor: the two pools of {pool} not warm within {timeout:.0f} s: {stats}")


def _check_runtimes(cluster: BenchCluster) -> None:
    """Each profile's containers run under the runtime they stand for, or the comparison means nothing."""
    client = docker_client()
    seen: dict[str, set[str]] = {}
    for container in client.containers.list(filters={"label": f"nbpool.instance={cluster.instance}"}):
        profile = container.labels.get("nbpool.profile", "")
        seen.setdefault(profile, set()).add(container.attrs["HostConfig"].get("Runtime") or "runc")
    for runtime, profile in PROFILES.items():
        if seen.get(profile, set()) != {runtime}:
            raise RuntimeError(f"the {profile} profile's containers run under {sorted(seen.get(profile, set()))}, "
                               f"not {runtime}")


async def measure(cluster: BenchCluster, pool: int, results: GVisorResults) -> None:
    """Start times, idle memory, then first output (see the module docstring), into ``results``.

    ``cluster`` has been started with :func:`start`; its pools are full and nothing is starting.
    """
    if pool < 2:
        raise ValueError(f"gvisor: a pool of {pool} leaves no timed visitor (the first is untimed); use 2 or more")
    runtime_of = {profile: runtime for runtime, profile in PROFILES.items()}
    await asyncio.to_thread(_check_runtimes, cluster)
    events = await asyncio.to_thread(cluster.events)
    for runtime in PROFILES:
        results.start_s[runtime] = Figure(f"start to warm, {runtime}", unit="s")
        results.answered_s[runtime] = Figure(f"start to the server answering, {runtime}", unit="s")
    warm = [e for e in events if e.get("type") == "sandbox.warm" and e.get("data", {}).get("profile") in runtime_of]
    for runtime in PROFILES:
        mine = [e["data"] for e in warm if runtime_of[e["data"]["profile"]] == runtime]
        results.start_s[runtime].add_run([float(d["startup_s"]) for d in mine])
        results.answered_s[runtime].add_run([float(d["answered_s"]) for d in mine])
    results.start_failures = await asyncio.to_thread(_start_failures, cluster)

    await asyncio.sleep(3)  # let the last starts settle
    for runtime, profile in PROFILES.items():
        results.memory_mib[runtime] = await asyncio.to_thread(idle_sandbox_memory, cluster, profile)

    visits: dict[str, list[Visit]] = {runtime: [] for runtime in PROFILES}
    order = list(PROFILES)
    for runtime in order:
        untimed = await visit(cluster.url, profile=PROFILES[runtime])
        if not untimed.ok:
            results.errors.append(f"{runtime}, untimed first visitor: {untimed.error}")
    for i in range(pool - 1):
        # Alternate which runtime goes first, so neither always follows the other.
        for runtime in order if i % 2 == 0 else order[::-1]:
            v = await visit(cluster.url, profile=PROFILES[runtime])
            if v.ok and v.session and v.session.get("profile") != PROFILES[runtime]:
                v.error = f"asked for profile {PROFILES[runtime]!r}, got {v.session.get('profile')!r}"
            visits[runtime].append(v)
    for runtime, done in visits.items():
        good = [v for v in done if v.ok]
        results.failures[runtime] = len(done) - len(good)
        results.errors += [f"{runtime}: {v.error}" for v in done if not v.ok]
        results.first_output[runtime] = Figure(f"time to first output, {runtime}")
        results.first_output[runtime].add_run([v.total_ms for v in good])
        results.parts[runtime] = {name: Figure(f"{name}, {runtime}") for name in _PARTS}
        for name, attr in _PARTS.items():
            results.parts[runtime][name].add_run([getattr(v, attr) for v in good])
    for runtime in PROFILES:
        start_s, ttfo, mib = results.start_s[runtime], results.first_output[runtime], results.memory_mib[runtime]
        progress(f"gvisor: {runtime}: start p50 {start_s.pooled.p50:.2f} s, first output p50 {ttfo.pooled.p50:.0f} ms, "
                 f"idle memory {statistics.median(mib) if mib else float('nan'):.0f} MiB, "
                 f"{results.failures[runtime]} visitors failed")
