"""The proxy: what Traefik adds, per request and in throughput, against going straight to the sandbox.

What it measures, each through Traefik and straight to the server, on the same machine:

- **small request latency**: ``GET /api`` with the token, one at a time over one keep-alive
  connection, in alternating blocks (direct, proxied, direct, …) so drift in the machine's
  load hits both alike. *Added* is the difference of the medians.
- **throughput**: ``wrk`` (Debian's package; a Python load generator when it cannot be had)
  with many connections for a few seconds, alternating direct and proxied.
- **kernel websocket round trip**: ``1+1`` executed again and again over one open websocket,
  straight to the sandbox and through Traefik, in alternating blocks.

Two servers sit behind the proxy. A real sandbox (a Jupyter server in its container, limited
to one CPU) is what visitors use, but it serves fewer requests a second than Traefik can pass,
so it caps the throughput either way. A stub server (``bench/stub.py``), routed by a
synthetic sandbox record on the bus exactly as the router routes sandboxes, answers faster
than the proxy: through it, the proxy's own capacity shows.

Through Traefik, every request goes where a visitor's would: the sandbox's own origin,
``http://<id>.sb.localhost:<port>/api`` (the name resolves to loopback), routed by ``Host``.

Floor: the same request straight to the same server (``http://<its address>/api``), measured
in the same blocks. It is the least any proxy could cost: zero hops.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import websockets
from common import (
    BenchCluster,
    Figure,
    HTTPConnection,
    Stub,
    connect_bus,
    end_sessions,
    kernel_channels,
    progress,
    sandbox_base,
    synthetic_host_beating,
    synthetic_id,
    synthetic_record,
)
from kernel import execute_on

from nbpool.models import encode

__all__ = ["ProxyResults", "measure"]


@dataclass
class ProxyResults:
    """Latency (ms), throughput (requests/s) and websocket round trips (ms), direct and proxied."""

    latency: dict[str, Figure] = field(default_factory=dict)
    throughput: dict[str, Figure] = field(default_factory=dict)
    websocket: dict[str, Figure] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    tool: str = ""


async def _latency(url: str, headers: dict[str, str], count: int) -> list[float]:
    conn = HTTPConnection.to(url)
    path = urlsplit(url).path
    try:
        await conn.request("GET", path, headers)
        out = []
        for _ in range(count):
            began = time.perf_counter()
            resp = await conn.request("GET", path, headers)
            out.append((time.perf_counter() - began) * 1000)
            if resp.status != 200:
                raise RuntimeError(f"GET {url}: {resp.status}")
        return out
    finally:
        await conn.close()


def _wrk(wrk: str, url: str, headers: dict[str, str], seconds: float, connections: int) -> tuple[float, int]:
    """Requests/s and non-2xx answers from one bounded ``wrk`` run."""
    args = [wrk, "-t2", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, timeout=seconds + 30, check=False).stdout
    rate = re.search(r"Requests/sec:\s*([0-9.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s*([0-9]+)", out)
    errors = re.search(r"Socket errors:.*?timeout ([0-9]+)", out)
    if rate is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    return float(rate.group(1)), int(bad.group(1) if bad else 0) + int(errors.group(1) if errors else 0)


async def _python_load(url: str, headers: dict[str, str], seconds: float, connections: int) -> tuple[float, int]:
    """Requests/s from ``connections`` keep-alive clients for ``seconds`` (when wrk is missing)."""
    path = urlsplit(url).path
    deadline = time.perf_counter() + seconds
    done = bad = 0

    async def client() -> None:
        nonlocal done, bad
        conn = HTTPConnection.to(url)
        try:
            while time.perf_counter() < deadline:
                resp = await conn.request("GET", path, headers)
                done += 1
                bad += resp.status != 200
        finally:
            await conn.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return done / (time.perf_counter() - began), bad


async def _ws_round_trips(ws_url: str, count: int) -> list[float]:
    async with websockets.connect(ws_url, open_timeout=30, close_timeout=2, proxy=None) as ws:
        await execute_on(ws, "1+1")
        out = []
        for _ in range(count):
            began = time.perf_counter()
            assert await execute_on(ws, "1+1") == "2"
            out.append((time.perf_counter() - began) * 1000)
        return out


async def measure(
    cluster: BenchCluster,
    wrk: str | None,
    blocks: int = 6,
    per_block: int = 100,
    load_seconds: float = 3.0,
    load_reps: int = 3,
    connections: int = 64,
    ws_blocks: int = 4,
    ws_per_block: int = 50,
) -> ProxyResults:
    """All the proxy figures, against a claimed sandbox of ``cluster`` and a stub (module docstring)."""
    results = ProxyResults(tool=f"wrk -t2 -c{connections} -d{load_seconds:g}s" if wrk else
                           f"Python, {connections} keep-alive connections, {load_seconds:g} s")
    await asyncio.to_thread(cluster.wait_quiet, 1)
    session = cluster.new_session()
    sid, token = session["id"], session["token"]
    auth = {"Authorization": f"token {token}"}
    direct = await asyncio.to_thread(cluster.target_of, sid)
    async with contextlib.AsyncExitStack() as stack:
        bus = await connect_bus(cluster)
        stack.push_async_callback(bus.close)
        # The stub's record has no spawner: its host beats for it, else the culler takes it for
        # a lost host and ends the record (and its route) within NBPOOL_HOST_TIMEOUT.
        await stack.enter_async_context(synthetic_host_beating(bus))
        stub = stack.enter_context(Stub())
        stub_id = synthetic_id()
        kv = await bus.kv(bus.names.sandboxes)
        await kv.create(stub_id, encode(synthetic_record(cluster.origins, stub_id, stub.url)))
        try:
            stub_base = cluster.origins.sandbox_url(stub_id)
            await _wait_routed(stub_base)
            # Each server's base path is / (host routing): the same request, straight or at its origin.
            servers: dict[str, tuple[str, str, dict[str, str]]] = {
                # name: (URL straight to the server, URL through Traefik, headers)
                "sandbox (Jupyter)": (f"{direct}/api", f"{sandbox_base(session)}api", auth),
                "stub server": (f"{stub.url}/api", f"{stub_base}api", {}),
            }
            for name, (straight, proxied, headers) in servers.items():
                d = results.latency.setdefault(f"{name}, direct", Figure(f"{name}, direct"))
                p = results.latency.setdefault(f"{name}, through Traefik", Figure(f"{name}, through Traefik"))
                for _ in range(blocks):
                    d.add_run(await _latency(straight, headers, per_block))
                    p.add_run(await _latency(proxied, headers, per_block))
                progress(f"proxy latency, {name}: direct p50 {d.pooled.p50:.2f} ms, through Traefik {p.pooled.p50:.2f} ms")
                d_rate = results.throughput.setdefault(f"{name}, direct", Figure(f"{name}, direct", unit="req/s"))
                p_rate = results.throughput.setdefault(f"{name}, through Traefik", Figure(f"{name}, through Traefik", unit="req/s"))
                for _ in range(load_reps):
                    for fig, url in ((d_rate, straight), (p_rate, proxied)):
                        if wrk:
                            rate, bad = await asyncio.to_thread(_wrk, wrk, url, headers, load_seconds, connections)
                        else:
                            rate, bad = await _python_load(url, headers, load_seconds, connections)
                        fig.add_run([rate])
                        results.errors[fig.name] = results.errors.get(fig.name, 0) + bad
                progress(f"proxy throughput, {name}: direct {d_rate.pooled.p50:.0f}/s, through Traefik {p_rate.pooled.p50:.0f}/s")
            kernel = session["kernel_id"]
            ws_direct = kernel_channels(direct + "/", kernel, token)
            ws_proxied = kernel_channels(sandbox_base(session), kernel, token)
            wd = results.websocket.setdefault("direct", Figure("kernel websocket 1+1, direct"))
            wp = results.websocket.setdefault("through Traefik", Figure("kernel websocket 1+1, through Traefik"))
            for _ in range(ws_blocks):
                wd.add_run(await _ws_round_trips(ws_direct, ws_per_block))
                wp.add_run(await _ws_round_trips(ws_proxied, ws_per_block))
            progress(f"websocket 1+1: direct p50 {wd.pooled.p50:.2f} ms, through Traefik {wp.pooled.p50:.2f} ms")
        finally:
            await kv.delete(stub_id)
            await end_sessions(cluster.url, [session])
    return results


async def _wait_routed(base: str, timeout: float = 30.0) -> float:
    """Seconds until ``GET <base>api`` reaches the stub (the gateway answers 404 until then)."""
    conn = HTTPConnection.to(base)
    began = time.perf_counter()
    try:
        while time.perf_counter() - began < timeout:
            resp = await conn.request("GET", "/api")
            if resp.status == 200 and b'"stub"' in resp.body:
                return time.perf_counter() - began
            await asyncio.sleep(0.005)
    finally:
        await conn.close()
    raise TimeoutError(f"{base}api not routed through Traefik within {timeout:g} s")
