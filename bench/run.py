"""``make bench``: starts a real nbpool and measures what visitors feel. Writes docs/benchmarks.md.

Every figure is a median over repeated runs with its spread, next to a floor measured in the same
run (the machines are noisy; ratios travel better than milliseconds). All traffic is to loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster import Cluster  # noqa: E402
from kernel import execute, start_kernel  # noqa: E402


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "p50": statistics.median(ms),
        "p95": pct(ms, 95),
        "p99": pct(ms, 99),
        "max": max(ms),
        "iqr": pct(ms, 75) - pct(ms, 25),
    }


async def claim_latency(cluster: Cluster, total: int, batch: int) -> tuple[dict[str, float], dict[str, float]]:
    """POST /sessions with a warm pool, one at a time, against GET /healthz through the same proxy."""
    claims: list[float] = []
    floor: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(5):  # warm the connection and both code paths
            await client.get(f"{cluster.url}/healthz")
        while len(claims) < total:
            cluster.wait_warm(batch, timeout=300)
            made = []
            for _ in range(min(batch, total - len(claims))):
                t = time.perf_counter()
                await client.get(f"{cluster.url}/healthz")
                floor.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                resp = await client.post(f"{cluster.url}/sessions")
                claims.append((time.perf_counter() - t) * 1000)
                assert resp.status_code == 201, resp.text
                made.append(resp.json())
            for s in made:
                await client.delete(f"{cluster.url}/sessions/{s['id']}", params={"token": s["token"]})
    return summary(claims), summary(floor)


async def first_output(cluster: Cluster, runs: int, fresh_kernel: bool) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """From POST /sessions to the result of 1+1 on a kernel, through the proxy.

    ``fresh_kernel``: start a new kernel (what a visitor picking another kernel waits for);
    otherwise use the pre-started one the API hands out.
    """
    total: list[float] = []
    parts: dict[str, list[float]] = {"claim": [], "kernel start": [], "execute 1+1": []}
    async with httpx.AsyncClient(timeout=60) as client:
        await client.get(f"{cluster.url}/healthz")
        for _ in range(runs):
            cluster.wait_warm(1, timeout=300)
            t0 = time.perf_counter()
            s = (await client.post(f"{cluster.url}/sessions")).json()
            t1 = time.perf_counter()
            base = cluster.base(s)
            kernel = await start_kernel(client, base, s["token"]) if fresh_kernel or not s.get("kernel_id") else s["kernel_id"]
            t2 = time.perf_counter()
            out = await execute(base, s["token"], kernel, "1+1")
            t3 = time.perf_counter()
            assert out == "2", out
            total.append((t3 - t0) * 1000)
            parts["claim"].append((t1 - t0) * 1000)
            parts["kernel start"].append((t2 - t1) * 1000)
            parts["execute 1+1"].append((t3 - t2) * 1000)
            await client.delete(f"{cluster.url}/sessions/{s['id']}", params={"token": s["token"]})
    return summary(total), {k: summary(v) for k, v in parts.items()}


async def refill_rate(cluster: Cluster, pool: int, rounds: int = 3) -> list[float]:
    """Sandboxes per second the pool refills at: claim the whole pool at once, time until it is full again."""
    rates = []
    async with httpx.AsyncClient(timeout=60) as client:
        for _ in range(rounds):
            cluster.wait_warm(pool, timeout=600)
            made = [(await client.post(f"{cluster.url}/sessions")).json() for _ in range(pool)]
            began = time.perf_counter()
            cluster.wait_warm(pool, timeout=600)
            rates.append(pool / (time.perf_counter() - began))
            for s in made:
                await client.delete(f"{cluster.url}/sessions/{s['id']}", params={"token": s["token"]})
    return rates


def idle_memory_mib(cluster: Cluster) -> list[float]:
    """Memory of each warm, idle sandbox: the container's cgroup usage, or the server's process tree RSS."""
    if cluster.env.get("NBPOOL_RUNTIME") == "docker":
        values = []
        for container in cluster.containers():
            stats = container.stats(stream=False)
            mem = stats["memory_stats"]
            cache = mem.get("stats", {}).get("inactive_file", 0)
            values.append((mem["usage"] - cache) / 2**20)
        return values
    values = []
    for proc in cluster.sandbox_processes():
        if "jupyter_server" in " ".join(proc.cmdline()):
            values.append(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20)
    return values


async def sockets_per_websocket(cluster: Cluster, count: int = 10) -> dict[str, float]:
    """TCP connections Traefik holds per open kernel websocket, on each side (and docker-proxy processes)."""
    import psutil
    import websockets

    traefik = psutil.Process(cluster.children()["traefik"])
    async with httpx.AsyncClient(timeout=60) as client:
        s = (await client.post(f"{cluster.url}/sessions")).json()
        base = cluster.base(s)
        kernels = [await start_kernel(client, base, s["token"]) for _ in range(count)]
    target = next(r["target"] for r in cluster.status()["sandboxes"] if r["id"] == s["id"])
    host, port = target.removeprefix("http://").split(":")

    def held() -> tuple[int, int]:
        conns = [c for c in traefik.net_connections(kind="tcp") if c.status == psutil.CONN_ESTABLISHED]
        client_side = sum(1 for c in conns if c.laddr.port == cluster.proxy_port)
        upstream = sum(1 for c in conns if c.raddr and (c.raddr.ip, c.raddr.port) == (host, int(port)))
        return client_side, upstream

    await asyncio.sleep(1)
    before = held()
    sockets = []
    for kernel in kernels:
        url = base.replace("http://", "ws://", 1) + f"api/kernels/{kernel}/channels?token={s['token']}"
        sockets.append(await websockets.connect(url))
    await asyncio.sleep(1)
    after = held()
    for ws in sockets:
        await ws.close()
    proxies = sum(1 for p in psutil.process_iter(["name"]) if p.info["name"] == "docker-proxy")
    return {
        "client side": (after[0] - before[0]) / count,
        "sandbox side": (after[1] - before[1]) / count,
        "docker-proxy processes": proxies,
    }


def _row(name: str, s: dict[str, float], floor: dict[str, float] | None = None) -> str:
    ratio = f"{s['p50'] / floor['p50']:.1f}×" if floor else ""
    return (f"| {name} | {s['n']:.0f} | {s['p50']:.1f} | {s['p95']:.1f} | {s['p99']:.1f} | {s['max']:.1f} "
            f"| {s['iqr']:.1f} | {ratio} |")


async def main(args: argparse.Namespace) -> None:
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nbpool-bench-") as tmp:
        runtime = {"NBPOOL_RUNTIME": args.runtime}
        if args.runtime == "docker":
            built = subprocess.run([str(ROOT / "deploy" / "images" / "build.sh")], stdout=subprocess.PIPE, text=True, check=True)
            runtime["NBPOOL_DOCKER_IMAGE"] = built.stdout.strip().splitlines()[-1]
        cluster = Cluster(Path(tmp), {
            **runtime,
            "NBPOOL_POOL_SIZE": str(args.pool), "NBPOOL_MAX_SANDBOXES": str(args.pool * 2),
            "NBPOOL_SPAWN_CONCURRENCY": "4", "NBPOOL_RATE_BURST": "100000", "NBPOOL_RATE_LIMIT": "100000",
            "NBPOOL_LOG_LEVEL": "INFO",
        })
        cluster.start(warm=args.pool, timeout=600)
        try:
            claims, healthz = await claim_latency(cluster, args.claims, args.pool)
            tfo, tfo_parts = await first_output(cluster, args.runs, fresh_kernel=False)
            fresh, fresh_parts = await first_output(cluster, args.runs, fresh_kernel=True)
            rates = await refill_rate(cluster, args.pool)
            cluster.wait_warm(args.pool, timeout=600)
            await asyncio.sleep(5)
            memory = idle_memory_mib(cluster)
            sockets = await sockets_per_websocket(cluster)
        finally:
            cluster.stop()
    took = time.monotonic() - began
    lines = [
        "# nbpool benchmarks",
        "",
        f"Made by `make bench` (`{' '.join(['python', 'bench/run.py', *sys.argv[1:]])}`) on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, in {took:.0f} s.",
        "",
        f"Machine: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} cores, "
        f"{_mem_gib():.0f} GiB. Runtime: {args.runtime}, warm pool {args.pool}. "
        "All traffic through Traefik on loopback.",
        "",
        "Milliseconds. p50 is the median; IQR the spread between the 25th and 75th percentiles; "
        "ratio = p50 / p50 of the floor measured in the same run.",
        "",
        "| figure | n | p50 | p95 | p99 | max | IQR | ratio to floor |",
        "|---|---|---|---|---|---|---|---|",
        _row("floor: `GET /healthz` round trip through the proxy", healthz),
        _row("claim: `POST /sessions`, warm pool, one client", claims, healthz),
        _row("time to first output: `POST /sessions` → `1+1` on the pre-started kernel (`kernel_id`)", tfo),
        *[_row(f"  of which {name}", s) for name, s in tfo_parts.items() if name != "kernel start"],
        _row("time to first output with a kernel started after the claim", fresh),
        *[_row(f"  of which {name}", s) for name, s in fresh_parts.items()],
        "",
        f"Pool refill: {statistics.median(rates):.2f} sandboxes/s (median of {len(rates)} refills of the whole pool; "
        f"spread {min(rates):.2f}–{max(rates):.2f}).",
        "",
        f"Idle sandbox memory: {statistics.median(memory):.0f} MiB median over {len(memory)} warm sandboxes "
        f"(spread {min(memory):.0f}–{max(memory):.0f}).",
        "",
        "Sockets per open kernel websocket, counted on Traefik's side from /proc with 10 open: "
        f"{sockets['client side']:.1f} client↔proxy, {sockets['sandbox side']:.1f} proxy↔sandbox; "
        f"{sockets['docker-proxy processes']:.0f} docker-proxy processes (tmpnb: about 5 sockets, through docker-proxy).",
        "",
    ]
    out = ROOT / "docs" / f"benchmarks-{args.runtime}.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def _mem_gib() -> float:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) / 1024 / 1024


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pool", type=int, default=20, help="warm pool size (default 20)")
    parser.add_argument("--claims", type=int, default=100, help="claims to time (default 100)")
    parser.add_argument("--runs", type=int, default=20, help="time-to-first-output runs (default 20)")
    parser.add_argument("--runtime", choices=["process", "docker"], default="docker" if _docker_answers() else "process")
    asyncio.run(main(parser.parse_args()))
