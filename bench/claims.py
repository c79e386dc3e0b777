"""Claim latency: ``POST /sessions`` with a warm pool, at 1, 10 and 50 concurrent clients.

What it measures: the time from sending ``POST /sessions`` to reading the 201 answer, through
Traefik, while warm sandboxes are waiting. That is the gateway (HTTP, rate limit, choice of
spawner), one NATS request/reply to the spawner, its compare-and-set of the record on the KV
bucket, and the answer back.

The sandboxes here are ``bench/stub.py`` processes (process runtime, no pre-started kernel).
Every claim uses up a sandbox, so 600 timed claims with real containers would need 600
container starts, about ten minutes on 2 cores. The claim path never touches the sandbox
itself, so the stubs change nothing on it, and they refill the pool in seconds. The spawner's
capacity equals the pool size, so the claims of a round start no refill: on 2 cores, starting
sandboxes takes all the CPU there is, and that is measured where it belongs (time to first
output, the burst). The pool is refilled, and the machine quiet, before each round. The claim
under the Docker runtime, with real containers around, appears again as the first part of
*time to first output*.

Floor: ``GET /healthz`` answered by the same gateway through the same Traefik, at the same
concurrency, over the same kind of connection, in rounds interleaved with the claims. It is
everything a claim costs except the claim itself, so the ratio shows what the claim adds.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import profiling
from common import BenchCluster, Figure, HTTPConnection, Response, cpu_seconds, end_sessions, progress

__all__ = ["ClaimResults", "measure", "stub_cluster"]


@dataclass
class ClaimResults:
    """Claim and floor figures per concurrency, and how the rounds went."""

    pool: int
    claims: dict[int, Figure] = field(default_factory=dict)
    healthz: dict[int, Figure] = field(default_factory=dict)
    failures: dict[int, int] = field(default_factory=dict)
    refill_s: list[float] = field(default_factory=list)
    #: CPU milliseconds per request, per process (and the bench's own client), per concurrency.
    cpu_per_claim: dict[int, dict[str, float]] = field(default_factory=dict)
    cpu_per_healthz: dict[int, dict[str, float]] = field(default_factory=dict)


def stub_cluster(pool: int) -> BenchCluster:
    """A cluster whose sandboxes are stub servers (see the module docstring)."""
    from common import BENCH

    return BenchCluster("claims", {
        "NBPOOL_RUNTIME": "process",
        "NBPOOL_JUPYTER_COMMAND": f"{sys.executable} {BENCH / 'stub.py'}",
        "NBPOOL_PRESTART_KERNEL": "false",
        "NBPOOL_POOL_SIZE": str(pool),
        # At capacity once the pool is full: a round's claims start no refill, which would
        # compete for the 2 cores with the very path being timed (the refill runs between rounds).
        "NBPOOL_MAX_SANDBOXES": str(pool),
        "NBPOOL_SPAWN_CONCURRENCY": "16",
    })


async def _timed_round(url: str, method: str, path: str, count: int, concurrency: int) -> list[tuple[float, Response]]:
    """``count`` requests from ``concurrency`` clients, each on its own warmed keep-alive connection."""
    conns = [HTTPConnection.to(url) for _ in range(concurrency)]
    for conn in conns:
        await conn.request("GET", "/healthz")  # connected and warm: TCP set-up is not what is timed
    left = count
    out: list[tuple[float, Response]] = []

    async def client(conn: HTTPConnection) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            began = time.perf_counter()
            resp = await conn.request(method, path)
            out.append(((time.perf_counter() - began) * 1000, resp))

    try:
        await asyncio.gather(*(client(c) for c in conns))
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return out


class _CPU:
    """CPU milliseconds used by each process between two readings, summed over several spans."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.used: dict[str, float] = {name: 0.0 for name in pids}
        self.requests = 0
        self._at: dict[str, float] = {}

    def __enter__(self) -> Self:
        self._at = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc: object) -> None:
        for name, pid in self.pids.items():
            self.used[name] += (cpu_seconds(pid) - self._at[name]) * 1000

    def per_request(self) -> dict[str, float]:
        return {name: ms / max(1, self.requests) for name, ms in self.used.items()}


async def measure(cluster: BenchCluster, pool: int, per_level: int, levels: list[int],
                  profile_dir: Path | None = None) -> ClaimResults:
    """``per_level`` timed claims at each concurrency in ``levels``, in rounds of at most ``pool``.

    With ``profile_dir``, the gateway and the spawner are sampled (py-spy) during the claims at
    the highest concurrency.
    """
    results = ClaimResults(pool=pool)
    rounds = max(1, -(-per_level // pool))
    pids = dict(cluster.pids())
    pids["bench client"] = os.getpid()
    for level in levels:
        claims = results.claims.setdefault(level, Figure(f"claim, {level} concurrent"))
        floor = results.healthz.setdefault(level, Figure(f"GET /healthz, {level} concurrent"))
        results.failures[level] = 0
        claim_cpu, health_cpu = _CPU(pids), _CPU(pids)
        sampled = {k: v for k, v in pids.items() if k in ("gateway", "spawner")}
        for r in range(rounds):
            size = min(pool, per_level - r * pool)
            results.refill_s.append(await asyncio.to_thread(cluster.wait_quiet, pool))
            with health_cpu:
                health = await _timed_round(cluster.url, "GET", "/healthz", size, level)
            health_cpu.requests += len(health)
            floor.add_run([ms for ms, _ in health])
            profiler = profiling.sampling(sampled, profile_dir or Path("."), f"claims-{level}-concurrent",
                                          enabled=profile_dir is not None and level == max(levels))
            with profiler, claim_cpu:
                made = await _timed_round(cluster.url, "POST", "/sessions", size, level)
            claim_cpu.requests += len(made)
            ok = [(ms, resp) for ms, resp in made if resp.status == 201]
            results.failures[level] += len(made) - len(ok)
            claims.add_run([ms for ms, _ in ok])
            progress(f"claims: {level} concurrent, round {r + 1}/{rounds}: p50 {claims.run_medians[-1]:.1f} ms "
                     f"(healthz {floor.run_medians[-1]:.1f} ms), {len(made) - len(ok)} failed")
            await end_sessions(cluster.url, [resp.json() for _, resp in ok])
        results.cpu_per_claim[level] = claim_cpu.per_request()
        results.cpu_per_healthz[level] = health_cpu.per_request()
    return results
