"""What every benchmark module shares: statistics, a lean HTTP client, clusters, sandbox URLs, processes, progress.

Statistics: every figure is kept as *runs* (repeated rounds of the same measurement), each a
list of samples. A figure is reported with the percentiles of all samples pooled, and the
median of the per-run medians with their range, so a reader sees both the distribution and how
much it moved between runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, cast
from urllib.parse import urlsplit

import psutil

from nbpool.origins import Origins, Routing

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DOCS = ROOT / "docs"
# tests/cluster.py runs a real `nbpool up`; tests/kernel.py is a minimal kernel client.
sys.path.insert(0, str(ROOT / "tests"))

from cluster import BIN, Cluster, free_ports, is_jupyter_server, sandbox_of  # noqa: E402 - after the path is set

__all__ = [
    "BIN",
    "SYNTHETIC_HOST",
    "BenchCluster",
    "Figure",
    "HTTPConnection",
    "Response",
    "Stub",
    "Summary",
    "connect_bus",
    "cpu_seconds",
    "end_sessions",
    "docker_client",
    "ensure_wrk",
    "free_ports",
    "is_jupyter_server",
    "kernel_channels",
    "machine",
    "memory",
    "progress",
    "py_spy",
    "sandbox_base",
    "sandbox_of",
    "summarize",
    "synthetic_host_beating",
    "synthetic_id",
    "synthetic_record",
]

_BEGAN = time.monotonic()


def py_spy() -> str | None:
    """The py-spy of the bench extra (beside this Python), or one on the PATH; None without."""
    here = BIN / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def progress(message: str) -> None:
    """One line of progress on stderr, with the seconds since the bench began."""
    print(f"[bench {time.monotonic() - _BEGAN:6.1f}s] {message}", file=sys.stderr, flush=True)


# ---- statistics ------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    """The p-th percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class Summary:
    """Percentiles of one set of samples (milliseconds, or whatever unit the samples are in)."""

    n: int
    p50: float
    p95: float
    p99: float
    max: float
    min: float
    iqr: float

    def to_json(self) -> dict[str, float]:
        return self.__dict__.copy()


def summarize(values: list[float]) -> Summary:
    """Percentiles of ``values``; NaN everywhere when there are none."""
    if not values:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan, nan, nan)
    return Summary(
        n=len(values),
        p50=statistics.median(values),
        p95=pct(values, 95),
        p99=pct(values, 99),
        max=max(values),
        min=min(values),
        iqr=pct(values, 75) - pct(values, 25),
    )


@dataclass
class Figure:
    """One measured quantity over repeated runs (see the module docstring)."""

    name: str
    runs: list[list[float]] = field(default_factory=list)
    unit: str = "ms"

    def add_run(self, samples: list[float]) -> None:
        self.runs.append(list(samples))

    @property
    def samples(self) -> list[float]:
        return [v for run in self.runs for v in run]

    @property
    def pooled(self) -> Summary:
        return summarize(self.samples)

    @property
    def run_medians(self) -> list[float]:
        return [statistics.median(run) for run in self.runs if run]

    def spread(self) -> str:
        """"a–b over N runs": the range of the per-run medians."""
        meds = self.run_medians
        if len(meds) < 2:
            return "1 run"
        return f"{min(meds):.3g}–{max(meds):.3g} over {len(meds)} runs"

    def ratio(self, floor: Figure) -> float:
        """p50 of this figure over the p50 of its floor."""
        return self.pooled.p50 / floor.pooled.p50 if floor.samples else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "unit": self.unit, "summary": self.pooled.to_json(),
                "run_medians": self.run_medians, "runs": self.runs}


# ---- a lean HTTP/1.1 client ------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class HTTPConnection:
    """One keep-alive HTTP/1.1 connection, with a fraction of httpx's per-request CPU.

    At 50 concurrent requests on 2 cores, a heavier client's own overhead would show up as
    latency of the server under test; this one reads and writes bytes and little else.

    It sends ``Host: host:port`` of the address it connects to, so a connection made
    :meth:`to` a sandbox's URL (``http://<id>.sb.localhost:<port>``) resolves that name and
    names that sandbox; a request's own ``Host`` header replaces it (one connection to the
    proxy's address can then ask for any sandbox, as the router's probe does).
    """

    def __init__(self, host: str, port: int, timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        #: When the last request was written to the connection (``time.perf_counter()``).
        self.sent = float("nan")

    @classmethod
    def to(cls, url: str, timeout: float = 30.0) -> HTTPConnection:
        """A connection to ``http://host:port`` (the path of ``url`` is ignored)."""
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{url!r}: the bench's client speaks plain http://host:port only")
        return cls(parts.hostname, parts.port or 80, timeout)

    async def connect(self) -> None:
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port), self.timeout
        )

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> Response:
        """Send one request and read its response; reconnects if the server closed the connection."""
        for attempt in (0, 1):
            if self._writer is None:
                await self.connect()
            try:
                return await asyncio.wait_for(self._exchange(method, path, headers or {}, body), self.timeout)
            except (ConnectionError, asyncio.IncompleteReadError) as err:
                await self.close()
                if attempt:
                    raise ConnectionError(f"{method} {path}: {err!r}") from err
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        assert self._reader is not None and self._writer is not None
        fixed = {"Host": f"{self.host}:{self.port}", "Content-Length": str(len(body))}
        lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in (fixed | headers).items())]
        self.sent = time.perf_counter()
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        got: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                name, value = line.split(":", 1)
                got[name.strip().lower()] = value.strip()
        if "content-length" in got:
            data = await self._reader.readexactly(int(got["content-length"]))
        elif got.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self._reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                chunk = await self._reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append(chunk[:-2])
            data = b"".join(chunks)
        else:
            data = b""
        if got.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, got, data)


# ---- processes ---------------------------------------------------------------------------------


async def end_sessions(url: str, sessions: list[dict[str, Any]], concurrency: int = 6) -> None:
    """End sessions with ``DELETE /sessions/<id>`` (which returns once the sandbox is gone), a few at once."""
    queue = list(sessions)

    async def worker() -> None:
        conn = HTTPConnection.to(url, timeout=60)
        try:
            while queue:
                s = queue.pop()
                with contextlib.suppress(Exception):
                    await conn.request("DELETE", f"/sessions/{s['id']}", {"Authorization": f"token {s['token']}"})
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (not its children)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def memory(pid: int) -> dict[str, float]:
    """A process's RSS and PSS (proportional: shared pages split between their users), in MiB."""
    proc = psutil.Process(pid)
    try:
        full = proc.memory_full_info()
        return {"rss": full.rss / 2**20, "pss": getattr(full, "pss", full.rss) / 2**20}
    except psutil.AccessDenied:
        rss = proc.memory_info().rss / 2**20
        return {"rss": rss, "pss": rss}


def ensure_wrk() -> str | None:
    """The path of ``wrk``; installed from Debian's packages when missing and we are root."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    progress("installing wrk (apt-get install wrk) for the proxy throughput figure")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "timeout": 300}
    if subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, **quiet).returncode != 0:  # type: ignore[call-overload]
        subprocess.run(["apt-get", "update", "-q"], check=False, **quiet)  # type: ignore[call-overload]
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, **quiet)  # type: ignore[call-overload]
    return shutil.which("wrk")


def docker_client() -> Any:
    """A Docker SDK client, or None when no engine answers."""
    try:
        import docker

        client = docker.from_env(timeout=60)
        client.ping()
        return client
    except Exception:  # noqa: BLE001 - any failure means: no usable engine
        return None


def machine(runtime: str) -> str:
    """One paragraph describing the machine the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    parts = [f"{os.cpu_count()} cores ({cpu})", f"{mem:.0f} GiB memory", f"Linux {platform.release()}",
             f"Python {platform.python_version()}"]
    client = docker_client()
    if client is not None:
        parts.append(f"Docker engine {client.version().get('Version', '?')}")
    if shutil.which("traefik") or (BIN / "traefik").exists():
        out = subprocess.run([str(BIN / "traefik"), "version"], capture_output=True, text=True, check=False).stdout
        version = next((ln.split()[-1] for ln in out.splitlines() if ln.lower().startswith("version")), "?")
        parts.append(f"Traefik {version}")
    out = subprocess.run([str(BIN / "nats-server"), "--version"], capture_output=True, text=True, check=False).stdout.strip()
    if out:
        parts.append(out.replace("nats-server: ", "nats-server "))
    parts.append(f"sandbox runtime: {runtime}")
    load = os.getloadavg()
    parts.append(f"load average at the start {load[0]:.2f}")
    return ", ".join(parts) + "."


# ---- the stub server ----------------------------------------------------------------------------


class Stub:
    """``bench/stub.py`` as a process on a free loopback port (see that module)."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "stub.py"), "--port", "0"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.port = int(json.loads(line)["listening"])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- clusters ------------------------------------------------------------------------------------


class BenchCluster(Cluster):
    """A whole nbpool for one group of figures, on free loopback ports, with an instance name of its own.

    Stopping it (Ctrl-C, as a user would) also removes whatever a Docker run could leave behind:
    containers and the network of this instance, and the spawner's firewall rule for its bridge.
    """

    def __init__(self, label: str, settings: dict[str, str]) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=f"nbpool-bench-{label}-")
        instance = f"bench{uuid.uuid4().hex[:8]}"
        base = {
            "NBPOOL_INSTANCE": instance,
            "NBPOOL_LOG_LEVEL": "INFO",
            # One client address makes every request here; the rate limit and the cap on one client's
            # sessions are not what is measured.
            "NBPOOL_RATE_LIMIT": "1000000",
            "NBPOOL_RATE_BURST": "1000000",
            "NBPOOL_MAX_SESSIONS_PER_CLIENT": "1000000",
        }
        super().__init__(Path(self._tmp.name), {**base, **settings})
        self.label = label
        self.instance = instance
        self.hung: list[str] = []
        #: Sandbox processes or containers still there after nbpool up stopped (the bench ends them).
        self.leaked = 0
        self.restarts: list[str] = []
        self.kept_logs: Path | None = None

    @property
    def runtime(self) -> str:
        return self.env.get("NBPOOL_RUNTIME", "process")

    @functools.cached_property
    def origins(self) -> Origins:
        """Where this cluster serves each sandbox, from the settings its services read.

        With host routing (the default) ``origins.sandbox_url(id)`` is
        ``http://<id>.sb.localhost:<proxy port>/`` and ``origins.base_path(id)`` is ``/``.
        """
        env = self.env
        routing = cast(Routing, env.get("NBPOOL_ROUTING", "host"))
        return Origins.from_settings(routing, self.url, env.get("NBPOOL_SANDBOX_URL", ""), env.get("NBPOOL_ADMIN_URL", ""))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    #: Seconds a spawner may take to exit once it has removed its sandboxes.
    STOP_GRACE_S = 5.0

    def close(self) -> None:
        try:
            self._stop()
        except AssertionError as err:
            progress(f"{self.label}: {str(err).splitlines()[0]}")
        self._keep_logs()
        # What a clean stop should have ended: counted (the report says so), then ended.
        try:
            self.leaked += len(self.end_leftovers())
        except Exception as err:  # no engine any more: the report still gets written
            progress(f"{self.label}: leftovers not cleaned up: {err!r}")
        self._tmp.cleanup()

    def _keep_logs(self) -> None:
        """Copy the logs out of the state folder (removed next) when a process died or warned."""
        try:
            up = self.log_path.read_text(errors="replace")
        except OSError:
            return
        self.restarts = [line for line in up.splitlines() if "exited with code" in line]
        warned = [line for line in up.splitlines() if "level=warning" in line or "level=error" in line]
        if self.restarts or warned or self.hung:
            keep = Path(tempfile.gettempdir()) / "nbpool-bench-logs" / f"{self.label}-{self.instance}"
            shutil.copytree(self.state_dir / "logs", keep, dirs_exist_ok=True)
            shutil.copy(self.log_path, keep / "up.log")
            self.kept_logs = keep
            progress(f"{self.label}: {len(self.restarts)} process exits, {len(warned)} warnings; logs kept in {keep}")

    def _stop(self) -> None:
        """Ctrl-C ``nbpool up``, as a user would, and wait for it to finish.

        A spawner that has removed all its sandboxes but does not exit within ``STOP_GRACE_S`` is
        killed (by its pid; ``nbpool up`` would wait 30 s, then kill it itself), after its Python
        stacks are written to ``logs/<name>.stacks.txt`` (py-spy dump) to show where it waited;
        ``hung`` lists such stops.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            spawners = {name: pid for name, pid in self.children().items() if name.startswith("spawner")}
        except (OSError, ValueError):
            spawners = {}
        self.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 120
        removed_at: dict[str, float] = {}
        while self.proc.poll() is None and time.monotonic() < deadline:
            for name, pid in spawners.items():
                if name in removed_at or not psutil.pid_exists(pid):
                    continue
                log = self.state_dir / "logs" / f"{name}.log"
                with contextlib.suppress(OSError):
                    if "removed all sandboxes" in log.read_text(errors="replace")[-4000:]:
                        removed_at[name] = time.monotonic()
            for name, at in removed_at.items():
                pid = spawners[name]
                if time.monotonic() - at > self.STOP_GRACE_S and psutil.pid_exists(pid) and name not in self.hung:
                    with contextlib.suppress(psutil.Error):
                        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                            self._dump_stacks(name, pid)
                            os.kill(pid, signal.SIGKILL)
                            self.hung.append(name)
                            progress(f"{self.label}: {name} removed its sandboxes but did not exit within "
                                     f"{self.STOP_GRACE_S:g} s; killed it")
            time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"nbpool up did not stop within 120 s\n{self.logs()}")

    def _dump_stacks(self, name: str, pid: int) -> None:
        spy = py_spy()
        out = self.state_dir / "logs" / f"{name}.stacks.txt"
        if spy is None:
            out.write_text("py-spy not installed (the bench extra): no stacks\n")
            return
        try:
            dump = subprocess.run([str(spy), "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30)
            out.write_text(dump.stdout + dump.stderr)
        except (OSError, subprocess.SubprocessError) as err:
            out.write_text(f"py-spy dump failed: {err!r}\n")

    def wait_quiet(self, warm: int, timeout: float = 600.0) -> float:
        """Wait until ``warm`` sandboxes are warm and none is starting; the seconds it took."""
        began = time.monotonic()
        deadline = began + timeout
        stats: dict[str, Any] = {}
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, f"nbpool up exited:\n{self.logs()}"
            with contextlib.suppress(Exception):
                stats = self.stats()
                if stats["available"] >= warm and stats["starting"] == 0:
                    return time.monotonic() - began
            time.sleep(0.2)
        raise TimeoutError(f"{self.label}: pool not back to {warm} warm within {timeout:.0f} s: {stats}")

    def pids(self) -> dict[str, int]:
        """The pids of NATS, Traefik and the services (``children.json``), plus ``up`` itself."""
        pids = self.children()
        assert self.proc is not None
        pids["nbpool up"] = self.proc.pid
        return pids

    def target_of(self, session_id: str) -> str:
        """The sandbox's own address (``http://ip:port``), read from its record on the bus."""
        for rec in self.status()["sandboxes"]:
            if rec["id"] == session_id:
                return str(rec["target"])
        raise KeyError(session_id)


# ---- sandbox URLs ----------------------------------------------------------------------------------


def sandbox_base(session: dict[str, Any]) -> str:
    """A sandbox's base URL as its visitor got it: ``http://<id>.sb.localhost:<port>/``.

    That is the ``url`` a plain ``POST /sessions`` answers (``<base>lab?token=…``) without its
    page and token, so the bench reaches the sandbox exactly where a visitor's browser does.
    """
    page = session["url"].split("?", 1)[0]
    if not page.endswith("/lab"):
        raise ValueError(f"session url {session['url']!r} is not <base>lab?token=…; claim with a plain POST /sessions")
    return str(page.removesuffix("lab"))


def kernel_channels(base: str, kernel_id: str, token: str) -> str:
    """The websocket URL of a kernel of the Jupyter server at ``base`` (``http://…/``, ending in ``/``)."""
    return "ws" + base.removeprefix("http") + f"api/kernels/{kernel_id}/channels?token={token}"


# ---- synthetic sandboxes on the bus ------------------------------------------------------------------

#: The ``host`` of synthetic records: no spawner has this id, so none acts on them.
SYNTHETIC_HOST = "bench-synthetic"


def synthetic_id() -> str:
    """A sandbox id for a synthetic record (the router accepts ``[a-z0-9]{4,40}``)."""
    import secrets

    return "syn" + secrets.token_hex(6)


def synthetic_record(origins: Origins, sandbox_id: str, target: str, host: str = SYNTHETIC_HOST) -> Any:
    """A claimed sandbox record whose server is ``target`` (a stub), owned by no spawner (``host``).

    Its ``path`` is the base path ``origins`` gives the sandbox (``/`` with host routing): the
    router routes only records whose path is that.
    """
    import secrets

    from nbpool.models import SandboxRecord, State

    now = time.time()
    return SandboxRecord(
        id=sandbox_id, host=host, pool="default", state=State.CLAIMED, target=target,
        path=origins.base_path(sandbox_id), token=secrets.token_urlsafe(24), created_at=now, warm_at=now,
        claimed_at=now, owner="bench",
    )


@contextlib.asynccontextmanager
async def synthetic_host_beating(bus: Any, hosts: tuple[str, ...] = (SYNTHETIC_HOST,),
                                 interval: float = 2.0) -> AsyncIterator[None]:
    """While inside: heartbeats of the synthetic records' hosts, as their spawners would send them,
    so that the culler does not take them for lost hosts and end their records. They report no
    warm sandbox and no room, so no gateway sends them a claim."""
    from nbpool.models import SpawnerBeat, encode

    kv = await bus.kv(bus.names.spawners)

    async def beat() -> None:
        while True:
            for host in hosts:
                await kv.put(host, encode(SpawnerBeat(id=host, runtime="bench", healthy=True, capacity=0, total=0, pools={})))
            await asyncio.sleep(interval)

    task = asyncio.ensure_future(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        for host in hosts:
            with contextlib.suppress(Exception):
                await kv.delete(host)


async def connect_bus(cluster: Cluster) -> Any:
    """A connection to the cluster's bus, as a service would have (``nbpool.bus.Bus``)."""
    from nbpool.bus import Bus
    from nbpool.names import Names

    bus = await Bus.connect(cluster.nats_url, Names(cluster.env["NBPOOL_INSTANCE"]), "bench", credentials=cluster.bus_credentials())
    await bus.ensure()
    return bus
