"""A burst: more visitors than the pool holds, arriving within seconds. None may be lost.

What it measures: ``visitors`` visitors arrive evenly over ``over_s`` seconds at a pool of
``pool`` warm sandboxes (with room for all of them), alternately a program and a browser. A
program does what a visitor of ``first_output`` does, asking to wait in line (``POST /sessions``
with ``{"wait": …}``; a ``503`` would still be honoured, bounded); a browser follows ``GET
/spawn``: a 302, or the waiting page's place in line until it is sent on. Each then runs ``1+1``
on its kernel through the proxy. Reported per visitor: how long until it had a sandbox (its
*wait*), how long until its first output, how many times it was told to come back, and whether
someone who arrived later was served first (*overtaken*), for programs and browsers alike. While the burst runs, ``/api/stats`` is sampled twice a second to show the pool
draining and refilling, and how long the gateway took to answer (a busy gateway takes up requests
late, and those that wait together in no particular order). Sessions stay open until every
visitor is done, as real visitors' would.

Floor: the visitors who find a warm sandbox are the floor for those who do not: the first
``pool`` visitors' time to first output, in the same burst, against everyone's. The cost of
each late visitor is one container start, which the raw Docker floor measures by itself.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from common import BenchCluster, HTTPConnection, progress
from first_output import PATIENCE_S, Visit, browser_visit, visit

__all__ = ["BurstResults", "measure"]


@dataclass
class BurstResults:
    """Every visitor of the burst, in order of arrival, and the pool over time."""

    pool: int
    visitors: int
    over_s: float
    visits: list[Visit] = field(default_factory=list)
    #: (seconds since the first arrival, available, starting, in_use, waiting, ms the answer took)
    pool_over_time: list[tuple[float, int, int, int, int, float]] = field(default_factory=list)
    took_s: float = 0.0
    #: How late each visitor (in order of arrival) was sent, against its even schedule (ms): the
    #: bench's own loop, busy, sends visitors late and, when late, several together.
    late_ms: list[float] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(1 for v in self.visits if not v.ok)


async def _sample_stats(url: str, began: float, into: list[tuple[float, int, int, int, int, float]],
                        stop: asyncio.Event) -> None:
    conn = HTTPConnection.to(url, timeout=5)
    try:
        while not stop.is_set():
            try:
                s = (await conn.request("GET", "/api/stats")).json()
                answered_ms = (time.perf_counter() - conn.sent) * 1000
                into.append((conn.sent - began, s["available"], s["starting"], s["in_use"], s["waiting"], answered_ms))
            except (TimeoutError, OSError, ValueError, KeyError):
                pass
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
    finally:
        await conn.close()


async def measure(cluster: BenchCluster, pool: int, visitors: int, over_s: float) -> BurstResults:
    """Run the burst against a cluster whose pool is warm (see the module docstring)."""
    results = BurstResults(pool=pool, visitors=visitors, over_s=over_s)
    await asyncio.to_thread(cluster.wait_quiet, pool)
    began = time.perf_counter()
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample_stats(cluster.url, began, results.pool_over_time, stop))

    async def arrive(i: int) -> Visit:
        await asyncio.sleep(max(0.0, began + i * over_s / visitors - time.perf_counter()))
        if i % 2:
            return await browser_visit(cluster.url)
        return await visit(cluster.url, wait=PATIENCE_S, connected=True)

    results.visits = list(await asyncio.gather(*(arrive(i) for i in range(visitors))))
    results.took_s = time.perf_counter() - began
    stop.set()
    await sampler
    for i, v in enumerate(results.visits):
        v.arrived -= began
        results.late_ms.append((v.arrived - i * over_s / visitors) * 1000)
    ok = [v for v in results.visits if v.ok]
    waits = sorted(v.claim_ms for v in ok)
    progress(f"burst: {len(ok)} of {visitors} served in {results.took_s:.0f} s, "
             f"longest wait {waits[-1] / 1000 if waits else float('nan'):.1f} s, {results.lost} lost")
    return results


def to_json(results: BurstResults) -> dict[str, Any]:
    return {
        "pool": results.pool, "visitors": results.visitors, "over_s": results.over_s, "took_s": results.took_s,
        "visits": [{"arrived_s": v.arrived, "kind": v.kind, "claim_ms": v.claim_ms, "total_ms": v.total_ms,
                    "refused": v.refused, "error": v.error} for v in results.visits],
        "pool_over_time": results.pool_over_time, "late_ms": results.late_ms,
    }
