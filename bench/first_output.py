"""Time to first output: from ``POST /sessions`` to the result of ``1+1``, through the proxy.

What it measures: a visitor (or a program) asks for a server and runs code at once. The clock
starts when ``POST /sessions`` is sent and stops when the kernel's ``execute_result`` ("2")
arrives over the websocket, which is opened through Traefik to the kernel the API hands out
(``kernel_id``, the pre-started Welcome notebook kernel), at the sandbox's own origin as the
answer gives it (``ws://<id>.sb.localhost:<port>/api/kernels/…``). Each visitor uses its own new TCP
connection, as a browser would. When nbpool answers 503 with ``Retry-After`` (nothing free
within ``NBPOOL_CLAIM_TIMEOUT``), the visitor waits that long and asks again, up to a bound;
the time spent waiting is part of its time to first output, and a visitor that runs out of
patience is a failure. Visitors of one round arrive together; sessions are ended and the pool
refilled, with the machine quiet, between rounds.

Floor: the same thing by hand with raw Docker, which is what a visitor would wait for without
a pool: ``docker run`` of the same notebook image with the same limits (user, capabilities,
memory, CPU, pids) on a bridge network made for the bench (internal, no traffic between
containers), poll its ``/api`` every 10 ms until it answers, start a kernel (``POST
/api/kernels``), open its websocket and run ``1+1``, straight to the container's address. It
is the best case for raw Docker: one container at a time on a quiet machine, nothing routed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import websockets
from common import (
    BenchCluster,
    Figure,
    HTTPConnection,
    cpu_seconds,
    docker_client,
    end_sessions,
    kernel_channels,
    progress,
    sandbox_base,
    sandbox_of,
    summarize,
)
from kernel import execute_on

__all__ = ["CPU", "FloorResults", "TTFOResults", "Visit", "browser_visit", "cluster", "docker_floor", "first_output_on", "measure",
           "process_floor", "visit"]

#: A visitor gives up after this long, or this many 503/429 answers.
PATIENCE_S = 180.0
MAX_RETRIES = 40
#: The longest single Retry-After a visitor honours (a guard against a wild header).
MAX_RETRY_AFTER_S = 30.0


@dataclass
class Visit:
    """One visitor: when it arrived, how long each step took (ms), and how it went."""

    arrived: float
    claim_ms: float = float("nan")
    connect_ms: float = float("nan")
    execute_ms: float = float("nan")
    total_ms: float = float("nan")
    again_ms: float = float("nan")  # a second 1+1 on the same websocket: not part of the total
    refused: int = 0  # 503/429 answers honoured before the claim succeeded
    error: str = ""
    session: dict[str, Any] | None = None
    #: "api" (POST /sessions) or "browser" (GET /spawn, then its place in line until sent on)
    kind: str = "api"

    @property
    def ok(self) -> bool:
        return not self.error


class Round:
    """The visitors of one round, between their first output and a second ``1+1``.

    The second ``1+1`` (a diagnostic: what a kernel's first execution costs) waits until every
    visitor of the round has seen the first output and the round's CPU has been read, so that it
    neither slows the others' first output nor counts in the round's CPU.
    """

    def __init__(self, visitors: int) -> None:
        self.pending = visitors
        self.all_first_outputs = asyncio.Event()
        self.measured = asyncio.Event()
        if visitors == 0:
            self.all_first_outputs.set()

    def first_output_over(self) -> None:
        """One visitor is done with its first output, or failed before it."""
        self.pending -= 1
        if self.pending == 0:
            self.all_first_outputs.set()


async def visit(url: str, run_code: bool = True, round_: Round | None = None, profile: str | None = None,
                wait: float | None = None, connected: bool = False) -> Visit:
    """One visitor: claim (retrying on 503/429 as told, bounded), then ``1+1`` on the pre-started kernel.

    With ``round_``, a second ``1+1`` follows once the round says so (see :class:`Round`). With
    ``profile``, the claim asks for that profile (``{"profile": …}``); else the default one. With
    ``wait``, the claim waits in line up to that long (``{"wait": …}``) instead of the claim timeout.
    A visitor comes with its connection to nbpool made (``connected``: it arrives when its
    request is sent, which is the order nbpool can see) or makes it as it arrives.
    """
    asked: dict[str, Any] = {"profile": profile} if profile else {}
    if wait is not None:
        asked["wait"] = wait
    body = json.dumps(asked).encode()
    conn = HTTPConnection.to(url, timeout=PATIENCE_S)
    if connected:
        await conn.connect()
    began = time.perf_counter()
    out = Visit(arrived=began)
    reported = False

    def first_output_over() -> None:
        nonlocal reported
        if round_ is not None and not reported:
            reported = True
            round_.first_output_over()

    try:
        while True:
            resp = await conn.request("POST", "/sessions", {"Content-Type": "application/json"}, body)
            if connected and not out.refused:
                began = out.arrived = conn.sent
            if resp.status == 201:
                break
            waited = time.perf_counter() - began
            if resp.status not in (429, 503) or out.refused >= MAX_RETRIES or waited > PATIENCE_S:
                out.error = f"{resp.status} after {out.refused} retries: {resp.body[:120]!r}"
                return out
            out.refused += 1
            delay = min(MAX_RETRY_AFTER_S, float(resp.headers.get("retry-after", "1") or 1))
            await asyncio.sleep(min(delay, max(0.0, PATIENCE_S - waited)))
        claimed = time.perf_counter()
        session = resp.json()
        out.session = session
        out.claim_ms = (claimed - began) * 1000
        if not run_code:
            out.total_ms = out.claim_ms
            return out
        kernel = session.get("kernel_id")
        if not kernel:
            out.error = "no kernel_id in the answer"
            return out
        ws_url = kernel_channels(sandbox_base(session), kernel, session["token"])
        async with websockets.connect(ws_url, open_timeout=60, close_timeout=2, proxy=None) as ws:
            connected = time.perf_counter()
            result = await execute_on(ws, "1+1", timeout=60)
            done = time.perf_counter()
            first_output_over()
            if round_ is not None:
                await round_.measured.wait()
                again = time.perf_counter()
                await execute_on(ws, "1+1", timeout=60)
                out.again_ms = (time.perf_counter() - again) * 1000
        if result != "2":
            out.error = f"1+1 gave {result!r}"
            return out
        out.connect_ms = (connected - claimed) * 1000
        out.execute_ms = (done - connected) * 1000
        out.total_ms = (done - began) * 1000
    except Exception as err:  # noqa: BLE001 - a visitor's failure is a figure, not a crash of the bench
        out.error = f"{err.__class__.__name__}: {err}"
    finally:
        first_output_over()
        await conn.close()
    return out


async def browser_visit(url: str) -> Visit:
    """A browser's visitor: ``GET /spawn``; when none is warm, its waiting page's place in line
    (the page's event stream) until it is sent on; then ``1+1`` on the pre-started kernel that
    JupyterLab would open. Its claim is until the sandbox's address is known. It comes with its
    connection to nbpool made and arrives when ``GET /spawn`` is sent, as a program of the burst
    does (see :func:`visit`): the same client for both, so that neither's own overhead reorders
    visitors who arrive milliseconds apart."""
    import httpx

    out = Visit(arrived=float("nan"), kind="browser")
    door = HTTPConnection.to(url, timeout=PATIENCE_S)
    try:
        await door.connect()
        try:
            resp = await door.request("GET", "/spawn")
        finally:
            await door.close()
        out.arrived = arrived = door.sent
        # Plain http:// on this machine: nothing to verify, and loading the certificate authorities
        # (an SSL context per client) held the bench's loop for 34 ms a visitor, which sent the
        # next visitors late and together.
        async with httpx.AsyncClient(timeout=PATIENCE_S, trust_env=False, verify=False) as http:
            location = resp.headers.get("location")
            if location is None:
                page = resp.body.decode()
                found = re.search(r'href="/queue/([^"]+)"', page)
                if found is None:
                    out.error = f"{resp.status} without a place in line: {page[:120]!r}"
                    return out
                async with http.stream("GET", f"{url}/queue/{found.group(1)}/events") as events:
                    async for line in events.aiter_lines():
                        if line.startswith("data: "):
                            state = json.loads(line[6:])
                            if state["state"] == "ready":
                                location = state["url"]
                                break
                            if state["state"] == "failed":
                                out.error = f"failed in line: {state['message']}"
                                return out
                if location is None:
                    out.error = "the waiting page's stream ended without a server"
                    return out
            claimed = time.perf_counter()
            out.claim_ms = (claimed - arrived) * 1000
            base, query = location.split("?", 1)
            token = dict(p.split("=", 1) for p in query.split("&"))["token"]
            base = base[: base.index("/", len("http://")) + 1]
            sessions = (await http.get(f"{base}api/sessions", params={"token": token})).json()
            kernel = next(s["kernel"]["id"] for s in sessions if s["path"] == "Welcome.ipynb")
            out.session = {"id": base.split("//", 1)[1].split(".", 1)[0], "token": token}
        await first_output_on(out, base, kernel, token, claimed)
    except Exception as err:  # noqa: BLE001 - a visitor's failure is a figure, not a crash of the bench
        out.error = f"{err.__class__.__name__}: {err}"
    return out


async def first_output_on(out: Visit, base: str, kernel_id: str, token: str, claimed: float) -> None:
    """``1+1`` on a kernel of the server at ``base`` over its websocket; ``out`` gets the times from
    ``claimed`` (and its total from its arrival), or the error."""
    async with websockets.connect(kernel_channels(base, kernel_id, token), open_timeout=60, close_timeout=2,
                                  proxy=None) as ws:
        connected = time.perf_counter()
        result = await execute_on(ws, "1+1", timeout=60)
        done = time.perf_counter()
    if result != "2":
        out.error = f"1+1 gave {result!r}"
        return
    out.connect_ms = (connected - claimed) * 1000
    out.execute_ms = (done - connected) * 1000
    out.total_ms = (done - out.arrived) * 1000


# ---- nbpool ---------------------------------------------------------------------------------------


@dataclass
class TTFOResults:
    """Per (pool, concurrency): the time to first output and its parts, and failures."""

    total: dict[tuple[int, int], Figure] = field(default_factory=dict)
    parts: dict[tuple[int, int], dict[str, Figure]] = field(default_factory=dict)
    failures: dict[tuple[int, int], int] = field(default_factory=dict)
    refused: dict[tuple[int, int], int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: CPU milliseconds per visitor, by where it was spent, summed over the rounds.
    cpu: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict)


def cluster(label: str, image: str | None, pool: int, max_sandboxes: int, concurrency: int) -> BenchCluster:
    """A cluster of real sandboxes: notebook containers with ``image`` (the production runtime), else processes."""
    runtime = {"NBPOOL_RUNTIME": "docker", "NBPOOL_DOCKER_IMAGE": image} if image else {"NBPOOL_RUNTIME": "process"}
    return BenchCluster(label, {
        **runtime,
        "NBPOOL_POOL_SIZE": str(pool),
        "NBPOOL_MAX_SANDBOXES": str(max_sandboxes),
        "NBPOOL_SPAWN_CONCURRENCY": str(concurrency),
    })


VISITORS_SANDBOXES = "visitors' sandboxes"
OTHER_SANDBOXES = "other sandboxes (pool, starting)"


class CPU:
    """CPU milliseconds used so far: by the sandboxes (cgroups or process trees), the Docker engine,
    each of nbpool's processes and the bench itself."""

    def __init__(self, cluster: BenchCluster) -> None:
        self.cluster = cluster
        self.pids = {k: v for k, v in cluster.pids().items()}
        self.pids["bench client"] = os.getpid()
        self.engine = [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in ("dockerd", "containerd")]

    def read(self, starting: bool) -> tuple[dict[str, float], dict[str, float]]:
        """A reading: CPU ms by process, and by sandbox id; ``starting`` says whether it opens a
        window or closes it.

        Listing the containers costs the bench and the Docker engine CPU of their own, so it is
        done outside the window: before the process readings when opening, after when closing.
        """
        used: dict[str, float] = {}
        sandboxes = self._sandboxes_ms() if starting else {}
        if self.engine:
            used["Docker engine"] = sum(_cpu_ms(pid) for pid in self.engine)
        used.update({name: _cpu_ms(pid) for name, pid in self.pids.items()})
        if not starting:
            sandboxes = self._sandboxes_ms()
        return used, sandboxes

    def _sandboxes_ms(self) -> dict[str, float]:
        used: dict[str, float] = {}
        if self.cluster.runtime == "docker":
            for container in docker_client().containers.list(filters={"label": f"nbpool.instance={self.cluster.instance}"}):
                sid = container.labels.get("nbpool.sandbox", container.id)
                for path in (f"/sys/fs/cgroup/cpuacct/docker/{container.id}/cpuacct.usage",
                             f"/sys/fs/cgroup/cpu,cpuacct/docker/{container.id}/cpuacct.usage"):
                    with contextlib.suppress(OSError, ValueError):
                        used[sid] = int(Path(path).read_text()) / 1e6
                        break
                else:
                    with contextlib.suppress(OSError, ValueError):
                        stat = Path(f"/sys/fs/cgroup/system.slice/docker-{container.id}.scope/cpu.stat").read_text()
                        used[sid] = int(stat.split()[1]) / 1000
            return used
        for proc in self.cluster.sandbox_processes():
            sid = sandbox_of(proc)
            if sid is not None:
                used[sid] = used.get(sid, 0.0) + _cpu_ms(proc.pid)
        return used


def _cpu_ms(pid: int) -> float:
    with contextlib.suppress(psutil.Error):
        return cpu_seconds(pid) * 1000
    return 0.0


async def measure(cluster: BenchCluster, pool: int, plan: dict[int, int], results: TTFOResults) -> None:
    """Rounds of visitors per concurrency: ``plan`` maps concurrency -> rounds (concurrency 1: visits).

    Besides the times, the CPU each round used is recorded per visitor: in the sandboxes (from
    their cgroups; sandboxes that started during the round included), the Docker engine, each of
    nbpool's processes and the bench's own client. On 2 cores, their sum times the number of
    visitors over 2000 ms/s is the least time the whole round can take.
    """
    url = cluster.url
    meter = await asyncio.to_thread(CPU, cluster)
    for level, rounds in plan.items():
        key = (pool, level)
        total = results.total.setdefault(key, Figure(f"time to first output, pool {pool}, {level} concurrent"))
        parts = results.parts.setdefault(key, {
            name: Figure(f"{name}, pool {pool}, {level} concurrent")
            for name in ("claim", "websocket open", "execute 1+1", "a second 1+1 (not counted)")
        })
        results.failures.setdefault(key, 0)
        results.refused.setdefault(key, 0)
        cpu = results.cpu.setdefault(key, {})
        visitors = 0
        kept: list[Visit] = []
        for _ in range(rounds):
            await asyncio.to_thread(cluster.wait_quiet, pool)
            before, sandboxes_before = await asyncio.to_thread(meter.read, True)
            round_ = Round(level)
            running = asyncio.gather(*(visit(url, round_=round_) for _ in range(level)))
            await round_.all_first_outputs.wait()
            after, sandboxes_after = await asyncio.to_thread(meter.read, False)
            round_.measured.set()
            visits = await running
            visitors += len(visits)
            for name in after:
                cpu[name] = cpu.get(name, 0.0) + after[name] - before.get(name, 0.0)
            # The visitors' own sandboxes apart from the rest: the pool's idle ones and the ones
            # that started (refills) during the round.
            theirs = {v.session["id"] for v in visits if v.session}
            for sid, ms in sandboxes_after.items():
                name = VISITORS_SANDBOXES if sid in theirs else OTHER_SANDBOXES
                cpu[name] = cpu.get(name, 0.0) + ms - sandboxes_before.get(sid, 0.0)
            good = [v for v in visits if v.ok]
            results.failures[key] += len(visits) - len(good)
            results.refused[key] += sum(v.refused for v in visits)
            results.errors += [v.error for v in visits if not v.ok]
            total.add_run([v.total_ms for v in good])
            parts["claim"].add_run([v.claim_ms for v in good])
            parts["websocket open"].add_run([v.connect_ms for v in good])
            parts["execute 1+1"].add_run([v.execute_ms for v in good])
            parts["a second 1+1 (not counted)"].add_run([v.again_ms for v in good])
            kept += visits
            if level > 1:
                # Rounds of several visitors leave the pool empty-ish: end them before the next.
                await end_sessions(url, [v.session for v in kept if v.session])
                kept = []
        if kept:
            await end_sessions(url, [v.session for v in kept if v.session])
        results.cpu[key] = {name: ms / max(1, visitors) for name, ms in cpu.items()}
        s = total.pooled
        progress(f"first output: pool {pool}, {level} concurrent: p50 {s.p50:.0f} ms, max {s.max:.0f} ms, "
                 f"{results.failures[key]} failed, {results.refused[key]} 503s honoured")
    await asyncio.to_thread(cluster.wait_quiet, pool)


# ---- the raw Docker floor --------------------------------------------------------------------------


@dataclass
class FloorResults:
    """Raw Docker, one container at a time: the whole, and its parts (ms)."""

    total: Figure = field(default_factory=lambda: Figure("raw Docker: docker run → 1+1"))
    parts: dict[str, Figure] = field(default_factory=lambda: {
        name: Figure(f"raw Docker: {name}") for name in ("docker run (create + start)", "server answers", "kernel start", "websocket open + 1+1")
    })


async def _until_output(http: Any, base: str, token: str) -> tuple[float, float, float]:
    """Poll ``base/api`` every 10 ms until it answers, start a kernel, run ``1+1``; when each step ended."""
    import httpx

    deadline = time.perf_counter() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if (await http.get(f"{base}/api", timeout=2)).status_code == 200:
                break
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{base} did not answer within 60 s")
        await asyncio.sleep(0.01)
    answered = time.perf_counter()
    resp = await http.post(f"{base}/api/kernels", headers={"Authorization": f"token {token}"},
                           json={"name": "python3"}, timeout=60)
    resp.raise_for_status()
    kernel = resp.json()["id"]
    kernel_started = time.perf_counter()
    ws_url = kernel_channels(base + "/", kernel, token)
    async with websockets.connect(ws_url, open_timeout=60, close_timeout=2, proxy=None) as ws:
        result = await execute_on(ws, "1+1", timeout=60)
    if result != "2":
        raise RuntimeError(f"1+1 gave {result!r}")
    return answered, kernel_started, time.perf_counter()


def _record(results: FloorResults, samples: list[list[float]]) -> FloorResults:
    # Each server is a run of its own, so the spread between them shows.
    for s in samples:
        results.total.add_run([s[4]])
        for i, part in enumerate(results.parts.values()):
            part.add_run([s[i]])
    return results


async def docker_floor(client: Any, image: str, runs: int, memory: str = "512m", cpus: float = 1.0, pids: int = 256) -> FloorResults:
    """``runs`` times: a container by hand, until ``1+1`` answers (see the module docstring)."""
    import httpx

    name = f"nbpoolbench-floor-{uuid.uuid4().hex[:8]}"
    network = client.networks.create(
        name, driver="bridge", internal=True, labels={"nbpool.bench": "floor"},
        options={"com.docker.network.bridge.enable_icc": "false"},
    )
    samples: list[list[float]] = []
    try:
        async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
            for _ in range(runs):
                token = secrets.token_urlsafe(24)
                began = time.perf_counter()
                container = await asyncio.to_thread(
                    client.containers.run, image, detach=True, network=name,
                    environment={"NBPOOL_TOKEN": token, "NBPOOL_BASE_URL": "/"},
                    user="1000:1000", cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
                    mem_limit=memory, memswap_limit=memory, nano_cpus=int(cpus * 1e9), pids_limit=pids,
                    labels={"nbpool.bench": "floor"}, auto_remove=True,
                )
                try:
                    await asyncio.to_thread(container.reload)
                    ip = container.attrs["NetworkSettings"]["Networks"][name]["IPAddress"]
                    started = time.perf_counter()
                    answered, kernel_started, done = await _until_output(http, f"http://{ip}:8888", token)
                    samples.append([(started - began) * 1000, (answered - started) * 1000,
                                    (kernel_started - answered) * 1000, (done - kernel_started) * 1000,
                                    (done - began) * 1000])
                finally:
                    with contextlib.suppress(Exception):
                        await asyncio.to_thread(container.remove, force=True)
                progress(f"raw Docker floor: {samples[-1][-1]:.0f} ms")
    finally:
        for _ in range(20):  # auto-removal may still be under way
            try:
                network.remove()
                break
            except Exception:  # noqa: BLE001 - still in use while auto-removal finishes
                await asyncio.sleep(0.5)
    return _record(FloorResults(), samples)


async def process_floor(runs: int) -> FloorResults:
    """Without Docker: ``runs`` times, a ``jupyter server`` process by hand, until ``1+1`` answers."""
    import os
    import subprocess
    import sys
    import tempfile

    import httpx
    from common import free_ports

    results = FloorResults()
    results.total.name = "raw process: jupyter server → 1+1"
    for key, part in results.parts.items():
        part.name = f"raw process: {key.replace('docker run (create + start)', 'process start')}"
    samples: list[list[float]] = []
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        for _ in range(runs):
            token = secrets.token_urlsafe(24)
            port = free_ports(1)
            with tempfile.TemporaryDirectory(prefix="nbpool-bench-floor-") as home:
                env = {**os.environ, "JUPYTER_TOKEN": token, "HOME": home, "JUPYTER_RUNTIME_DIR": f"{home}/rt"}
                args = [sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.ip=127.0.0.1",
                        f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={home}"]
                if os.geteuid() == 0:
                    args.append("--allow-root")
                began = time.perf_counter()
                proc = subprocess.Popen(args, env=env,  # noqa: ASYNC220 - returns at once stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
                started = time.perf_counter()
                try:
                    answered, kernel_started, done = await _until_output(http, f"http://127.0.0.1:{port}", token)
                    samples.append([(started - began) * 1000, (answered - started) * 1000,
                                    (kernel_started - answered) * 1000, (done - kernel_started) * 1000,
                                    (done - began) * 1000])
                finally:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            progress(f"raw process floor: {samples[-1][-1]:.0f} ms")
    return _record(results, samples)


def describe(results: TTFOResults) -> str:
    """A one-line-per-figure text summary, for the console."""
    lines = []
    for key, fig in results.total.items():
        s = summarize(fig.samples)
        lines.append(f"pool {key[0]:>3} × {key[1]:>2}: p50 {s.p50:7.0f} ms  p95 {s.p95:7.0f}  max {s.max:7.0f}  "
                     f"failures {results.failures[key]}")
    return "\n".join(lines)
