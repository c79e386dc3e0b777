"""The control plane at scale: 1000 sandboxes' records and heartbeats, without 1000 containers.

What it measures, on a running cluster:

1. A quiet baseline: CPU of each of nbpool's processes over a few 5-second slices, memory,
   and *route propagation*: the time from writing one new sandbox record to the bus until
   a request through Traefik reaches that sandbox's server.
2. ``records`` synthetic sandbox records are written to the instance's KV bucket, each
   claimed, owned by a spawner id that does not exist (``bench-synthetic``, so no spawner acts
   on them) and pointing at ``bench/stub.py``, which answers like a Jupyter server. The
   router routes every one of them and probes it through Traefik, as it would real ones.
   They are written in batches (100 by default), each batch once the one before is routed and
   reported ready, and the time each batch takes is recorded: how routing scales with the
   number of routes already there. (Spawners create records one at a time, never 1000 at
   once; ``--scale-batch 1000`` writes them all at once.)
3. With an activity heartbeat for every record every 5 seconds (as spawners publish them),
   CPU of each process is measured again over 5-second slices, then route propagation again,
   and memory.
4. The synthetic records and their activity are deleted, and the time until the router has
   removed their routes is recorded.

Floor: the baseline of the same cluster, a moment before, with only its own pool. CPU is
reported as a share of one core per process; the ratio to the baseline shows what 1000
sandboxes add. Route propagation at the baseline is the floor for route propagation at scale.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.js.errors
import profiling
from common import (
    SYNTHETIC_HOST,
    BenchCluster,
    Figure,
    HTTPConnection,
    Stub,
    connect_bus,
    cpu_seconds,
    memory,
    progress,
    synthetic_host_beating,
    synthetic_id,
    synthetic_record,
)

from nbpool.models import Activity, encode

__all__ = ["ScaleResults", "measure"]

SLICE_S = 5.0
HEARTBEAT_S = 5.0
#: Processes whose CPU is reported (names in children.json).
WATCHED = ("nats", "traefik", "router", "culler", "spawner", "gateway")


@dataclass
class ScaleResults:
    """CPU (% of one core per 5 s slice), memory (MiB), propagation (ms), and the bulk steps (s)."""

    records: int
    cpu_base: dict[str, Figure] = field(default_factory=dict)
    cpu_load: dict[str, Figure] = field(default_factory=dict)
    memory_base: dict[str, dict[str, float]] = field(default_factory=dict)
    memory_load: dict[str, dict[str, float]] = field(default_factory=dict)
    propagation_base: Figure = field(default_factory=lambda: Figure("route propagation, pool only"))
    propagation_load: Figure = field(default_factory=lambda: Figure("route propagation, 1000 records"))
    removal_load: Figure = field(default_factory=lambda: Figure("route removal, 1000 records"))
    heartbeat_burst: Figure = field(default_factory=lambda: Figure("1000 heartbeats written"))
    batch: int = 100
    #: Seconds for each batch to be routed and ready, in order (routes already there: i * batch).
    batch_s: list[float] = field(default_factory=list)
    all_routed_s: float = float("nan")
    routed: int = 0
    timeouts: int = 0
    cleanup_s: float = float("nan")
    window_s: float = 0.0
    #: The synthetic records' hosts (each with a heartbeat, as a spawner's).
    hosts: int = 1


async def _cpu_slices(pids: dict[str, int], slices: int, into: dict[str, Figure]) -> None:
    """CPU of each process per ``SLICE_S`` slice, as % of one core, one run per slice."""
    last = {name: cpu_seconds(pid) for name, pid in pids.items()}
    at = time.perf_counter()
    for _ in range(slices):
        await asyncio.sleep(SLICE_S)
        now = time.perf_counter()
        for name, pid in pids.items():
            used = cpu_seconds(pid)
            into.setdefault(name, Figure(f"CPU, {name}", unit="% of a core")).add_run([(used - last[name]) / (now - at) * 100])
            last[name] = used
        at = now


async def _until(conn: HTTPConnection, host: str, routed: bool, timeout: float, began: float) -> float | None:
    """Milliseconds from ``began`` until ``GET /api`` for the sandbox at ``host`` (its ``Host`` header)
    through Traefik reaches the stub (``routed``), or no longer does."""
    while time.perf_counter() - began < timeout:
        resp = await conn.request("GET", "/api", {"Host": host})
        if (resp.status == 200 and b'"stub"' in resp.body) == routed:
            return (time.perf_counter() - began) * 1000
        await asyncio.sleep(0.005)
    return None


async def _propagation(cluster: BenchCluster, kv: object, stub_url: str, count: int,
                       added: Figure, removed: Figure | None, timeout: float = 15.0) -> int:
    """``count`` times: write one record, time until Traefik routes it; delete it, time until it is gone.

    Each sample is a run of its own, so the spread shows; the number of timeouts is returned.
    The requests name the sandbox's origin (``Host: <id>.sb.localhost:<port>``) on one open
    connection to the proxy's address, as the router's own probe does: no name lookup or new
    connection lands in the figure.
    """
    conn = HTTPConnection.to(cluster.url, timeout=10)
    timeouts = 0
    try:
        for _ in range(count):
            sid = synthetic_id()
            host = cluster.origins.sandbox_netloc(sid)
            began = time.perf_counter()
            await kv.create(sid, encode(synthetic_record(cluster.origins, sid, stub_url)))  # type: ignore[attr-defined]
            ms = await _until(conn, host, True, timeout, began)
            if ms is None:
                timeouts += 1
            else:
                added.add_run([ms])
            began = time.perf_counter()
            await kv.delete(sid)  # type: ignore[attr-defined]
            ms = await _until(conn, host, False, timeout, began)
            if ms is None:
                timeouts += 1
            elif removed is not None:
                removed.add_run([ms])
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    return timeouts


async def _count_routes(bus: object, ids: set[str]) -> int:
    kv = await bus.kv(bus.names.routes)  # type: ignore[attr-defined]
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return 0
    return len(ids.intersection(keys))


async def measure(cluster: BenchCluster, pool: int, records: int = 1000, base_slices: int = 3, load_slices: int = 9,
                  propagation: int = 8, batch: int = 100, profile_dir: Path | None = None,
                  hosts: int = 1) -> ScaleResults:
    """The whole scale experiment on a cluster with a warm pool of ``pool`` (see the module docstring).

    With ``profile_dir``, the router is sampled (py-spy) while the records are routed, and the
    router, culler and spawner while the heartbeats run.
    """
    results = ScaleResults(records=records, window_s=load_slices * SLICE_S, batch=batch, hosts=hosts)
    results.propagation_load.name = f"route propagation, {records} records"
    results.removal_load.name = f"route removal, {records} records"
    results.heartbeat_burst.name = f"{records} heartbeats written"
    # A cluster of machines names its processes "nats b1", "spawner h2" ...
    pids = {name: pid for name, pid in cluster.pids().items() if name.split()[0] in WATCHED}
    bus = await connect_bus(cluster)
    records_kv = await bus.kv(bus.names.sandboxes)
    activity_kv = await bus.kv(bus.names.activity)
    ids = [synthetic_id() for _ in range(records)]
    owners = (SYNTHETIC_HOST,) if hosts == 1 else tuple(f"{SYNTHETIC_HOST}-{i + 1}" for i in range(hosts))
    # Each record on one of the synthetic hosts, in turn.
    host_of = {sid: owners[i % len(owners)] for i, sid in enumerate(ids)}
    try:
        async with synthetic_host_beating(bus, owners):
            return await _measure(cluster, pool, records, base_slices, load_slices, propagation, batch, profile_dir,
                                  results, pids, bus, records_kv, activity_kv, ids, host_of)
    finally:
        await bus.close()


async def _measure(cluster: BenchCluster, pool: int, records: int, base_slices: int, load_slices: int, propagation: int,
                   batch: int, profile_dir: Path | None, results: ScaleResults, pids: dict[str, int], bus: Any,
                   records_kv: Any, activity_kv: Any, ids: list[str], host_of: dict[str, str]) -> ScaleResults:
    with Stub() as stub:
        await asyncio.to_thread(cluster.wait_quiet, pool)  # the baseline is a full, idle pool
        results.timeouts += await _propagation(cluster, records_kv, stub.url, propagation, results.propagation_base, None)
        await _cpu_slices(pids, base_slices, results.cpu_base)
        results.memory_base = {name: memory(pid) for name, pid in cluster.pids().items()}
        progress(f"scale: baseline done; writing {records} synthetic records")

        began = time.perf_counter()
        wanted = set(ids)
        routing = profiling.sampling({"router": pids["router"]} if "router" in pids else {}, profile_dir or Path("."), "scale-routing",
                                     enabled=profile_dir is not None)
        routing.__enter__()
        for i in range(0, records, batch):
            chunk = ids[i:i + batch]
            started = time.perf_counter()
            for j in range(0, len(chunk), 100):
                await asyncio.gather(*(records_kv.put(sid, encode(synthetic_record(cluster.origins, sid, stub.url, host_of[sid])))
                                       for sid in chunk[j:j + 100]))
            # Bounded: a batch that is not routed within the limit is reported as such.
            while time.perf_counter() - started < 90:
                if await _count_routes(bus, set(chunk)) >= len(chunk):
                    break
                await asyncio.sleep(0.1)
            results.batch_s.append(time.perf_counter() - started)
        routing.__exit__(None, None, None)
        results.routed = await _count_routes(bus, wanted)
        if results.routed >= records:
            results.all_routed_s = time.perf_counter() - began
        progress(f"scale: {results.routed} of {records} routes ready after {time.perf_counter() - began:.1f} s")

        stop = asyncio.Event()

        async def heartbeats() -> None:
            while not stop.is_set():
                tick = time.perf_counter()
                now = time.time()
                for i in range(0, records, 100):
                    await asyncio.gather(*(
                        activity_kv.put(sid, encode(Activity(id=sid, last_activity=now, connections=1, kernels=1, at=now)))
                        for sid in ids[i:i + 100]
                    ))
                results.heartbeat_burst.add_run([(time.perf_counter() - tick) * 1000])
                try:
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, HEARTBEAT_S - (time.perf_counter() - tick)))
                except TimeoutError:
                    pass

        beating = asyncio.ensure_future(heartbeats())
        try:
            await asyncio.sleep(HEARTBEAT_S)  # one full heartbeat round before measuring
            watched = {k: v for k, v in pids.items() if k in ("router", "culler", "spawner")}
            with profiling.sampling(watched, profile_dir or Path("."), "scale-heartbeats", enabled=profile_dir is not None):
                await _cpu_slices(pids, load_slices, results.cpu_load)
            results.timeouts += await _propagation(cluster, records_kv, stub.url, propagation,
                                                   results.propagation_load, results.removal_load)
            results.memory_load = {name: memory(pid) for name, pid in cluster.pids().items()}
        finally:
            stop.set()
            await beating
        progress("scale: measured under load; removing the synthetic records")

        began = time.perf_counter()
        for i in range(0, records, 100):
            chunk = ids[i:i + 100]
            await asyncio.gather(*(records_kv.delete(sid) for sid in chunk), *(activity_kv.delete(sid) for sid in chunk))
        while time.perf_counter() - began < 120:
            if await _count_routes(bus, wanted) == 0:
                results.cleanup_s = time.perf_counter() - began
                break
            await asyncio.sleep(0.5)
    return results
