"""A whole nbpool for tests: ``nbpool up`` as a real process (NATS, Traefik, services, Jupyter servers).

Everything listens on loopback ports chosen free for the test; state lives in a temporary folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
from waiting import poll_until

BIN = Path(sys.executable).parent


#: The lowest port a test takes: above the defaults of nbpool and its parts (8000, 8001, 4222, 8888, 9090),
#: which a developer's own ``make up`` may hold.
_LOWEST = 10000


def _ephemeral_start() -> int:
    """The first port the kernel hands out to outgoing connections and to binds of port 0."""
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def _free(port: int) -> bool:
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family) as sock:
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports free on 127.0.0.1 and on ::1.

    Chosen below the kernel's ephemeral range: a port from it (a bind of port 0) can be taken, between
    this choice and the bind that uses it, as the local end of any outgoing connection (a service's to
    NATS, a kernel's, a client's), which once kept a test's gateway from its metrics port.
    """
    ephemeral = _ephemeral_start()
    if ephemeral - count <= _LOWEST:
        raise RuntimeError(f"the ephemeral range starts at {ephemeral}: no room below it for {count} test ports")
    for _ in range(200):
        base = random.randrange(_LOWEST, ephemeral - count)
        if all(_free(port) for port in range(base, base + count)):
            return base
    raise RuntimeError("no free ports")


@dataclass(frozen=True)
class NatsServer:
    """A nats-server of a test's own, which requires the users in ``credentials`` (nbpool.busauth)."""

    url: str
    credentials: Path


_SANDBOX_FOLDER = re.compile(r"/servers/([0-9a-z]+)(?:/|$)")


def local_client(timeout: float = 5.0) -> httpx.Client:
    """A client for polling a local nbpool (``/api/stats``), to keep and reuse. ``httpx.get`` makes a
    client per call, and loading the certificate authorities costs it about 30 ms of CPU, the
    machine's as much as nbpool's (five times a second while a pool fills: 0.18 s of CPU per new
    sandbox in make bench). Plain http on loopback: nothing to verify."""
    return httpx.Client(timeout=timeout, trust_env=False, verify=False)


def sandbox_of(proc: psutil.Process) -> str | None:
    """The sandbox a process of the process runtime belongs to (its folder is ``…/servers/<id>/``)."""
    try:
        found = _SANDBOX_FOLDER.search(proc.cwd()) or _SANDBOX_FOLDER.search(" ".join(proc.cmdline()))
    except psutil.Error:
        return None
    return found.group(1) if found else None


def is_jupyter_server(proc: psutil.Process) -> bool:
    """A Jupyter server's process, not a kernel's."""
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return False
    servers = ("jupyter_server", "jupyter-server", "jupyter server", "sandbox_server")
    return any(name in cmd for name in servers) and "ipykernel" not in cmd


def end_docker_leftovers(instance: str, network: str) -> list[str]:
    """Remove an nbpool instance's containers (named in the answer), its sandbox network, and the
    spawner's firewall rule for that network's bridge."""
    import docker

    from nbpool.runtime.docker import LABEL
    from nbpool.runtime.docker_network import FIREWALL_CHAIN, bridge_name

    client = docker.from_env(timeout=30)
    left = []
    for container in client.containers.list(all=True, filters={"label": f"{LABEL}.instance={instance}"}, ignore_removed=True):
        left.append(f"container {container.name}")
        with contextlib.suppress(docker.errors.APIError):
            container.remove(force=True)
    with contextlib.suppress(docker.errors.APIError):
        client.networks.prune(filters={"label": f"{LABEL}.instance={instance}"})
    subprocess.run(["iptables", "-w", "-D", "INPUT", "-i", bridge_name(network), "-j", FIREWALL_CHAIN],
                   capture_output=True, check=False)
    return left


class Cluster:
    """One running nbpool (see the module docstring)."""

    def __init__(
        self,
        state_dir: Path,
        settings: dict[str, str] | None = None,
        spawners: int = 1,
        gateways: int = 1,
        nats: NatsServer | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.external_nats = nats
        self.spawners = spawners
        self.gateways = gateways
        # One block for all of them: blocks chosen one by one can overlap (nothing holds a port
        # between two choices), and a gateway once got a port of its own cluster's metrics.
        metrics = 3 + spawners + gateways
        base = free_ports(3 + gateways + metrics)
        self.proxy_port, self.nats_port, self.ping_port = base, base + 1, base + 2
        self.gateway_port = base + 3
        self.metrics_port = base + 3 + gateways
        self.url = f"http://127.0.0.1:{self.proxy_port}"
        # The admin and every sandbox have origins of their own (NBPOOL_ROUTING=host, the default).
        self.admin_url = f"http://admin.localhost:{self.proxy_port}"
        self.nats_url = nats.url if nats else f"nats://127.0.0.1:{self.nats_port}"
        #: The NATS users' folder: what nbpool up makes, or the given server's.
        self.nats_credentials = nats.credentials if nats else state_dir / "bus"
        self._stats_client: httpx.Client | None = None  # see local_client
        env = {k: v for k, v in os.environ.items() if not k.startswith("NBPOOL_")}
        env.update(
            NBPOOL_STATE_DIR=str(state_dir),
            NBPOOL_PROXY_PORT=str(self.proxy_port),
            NBPOOL_PROXY_PING_PORT=str(self.ping_port),
            NBPOOL_GATEWAY_PORT=str(self.gateway_port),
            NBPOOL_NATS_PORT=str(self.nats_port),
            NBPOOL_METRICS_PORT=str(self.metrics_port),
            NBPOOL_PUBLIC_URL=self.url,
            NBPOOL_LOG_LEVEL="DEBUG",
            NBPOOL_RUNTIME="process",
            # One test client launches everything: the per-client limits are tested on their own.
            NBPOOL_RATE_LIMIT="100000",
            NBPOOL_RATE_BURST="100000",
            NBPOOL_MAX_SESSIONS_PER_CLIENT="1000",
        )
        if nats:
            env["NBPOOL_NATS_CREDENTIALS"] = str(nats.credentials)
        env.update(settings or {})
        self.env = env
        if env.get("NBPOOL_ROUTING") == "path":
            self.admin_url = self.url
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir / "up.log"

    # ---- life ----------------------------------------------------------------------------

    def start(self, warm: int = 1, timeout: float = 120.0) -> Cluster:
        """Start ``nbpool up`` and wait until ``warm`` sandboxes are warm."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        args = [str(BIN / "nbpool"), "up", "--spawners", str(self.spawners), "--gateways", str(self.gateways)]
        if self.external_nats:
            args += ["--nats-url", self.external_nats.url]
        self.proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        self.wait_warm(warm, timeout)
        return self

    def wait_warm(self, warm: int, timeout: float = 120.0) -> dict[str, Any]:
        """Wait until ``warm`` sandboxes are warm; the gateway's /api/stats then."""

        def stats() -> dict[str, Any] | None:
            assert self.proc is not None and self.proc.poll() is None, f"nbpool up exited:\n{self.logs()}"
            answer = self.stats()
            return answer if answer.get("available", 0) >= warm else None

        return poll_until(stats, timeout, lambda: f"{warm} warm\n{self.logs()}", errors=(httpx.HTTPError, ValueError))

    def stats(self) -> dict[str, Any]:
        """The gateway's ``/api/stats``."""
        if self._stats_client is None:
            self._stats_client = local_client()
        return self._stats_client.get(f"{self.url}/api/stats").json()  # type: ignore[no-any-return]

    def stop(self, timeout: float = 60.0) -> int:
        """Ctrl-C, as a user would; the exit code."""
        if self._stats_client is not None:
            self._stats_client.close()
            self._stats_client = None
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"nbpool up did not stop within {timeout} s\n{self.logs()}") from None

    def logs(self, tail: int = 60) -> str:
        parts = []
        for path in [self.log_path, *sorted((self.state_dir / "logs").glob("*.log"))]:
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-tail:]
                parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # ---- looking inside --------------------------------------------------------------------

    def children(self) -> dict[str, int]:
        data = json.loads((self.state_dir / "run" / "children.json").read_text())
        return {k: int(v) for k, v in data["children"].items()}

    def kill9(self, name: str, timeout: float = 30.0) -> int:
        """kill -9 one child; wait until the supervisor has restarted it; the new pid."""
        old = self.children()[name]
        os.kill(old, signal.SIGKILL)

        def restarted() -> int | None:
            new = self.children().get(name)
            return new if new and new != old and psutil.pid_exists(new) else None

        return poll_until(restarted, timeout, lambda: f"{name} restarted\n{self.logs()}", interval=0.1, errors=(OSError, ValueError))

    def sandbox_processes(self) -> list[psutil.Process]:
        """Jupyter servers and kernels started for this cluster's sandboxes."""
        marker = str(self.state_dir / "sandboxes")
        found = []
        for proc in psutil.process_iter(["cmdline", "cwd", "environ"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
                cwd = proc.info["cwd"] or ""
                if marker in cmd or cwd.startswith(marker):
                    found.append(proc)
            except psutil.Error:
                continue
        return found

    def server_processes(self) -> dict[str, psutil.Process]:
        """The Jupyter server (not the kernels) of each process-runtime sandbox, by sandbox id."""
        servers = {}
        for proc in self.sandbox_processes():
            sid = sandbox_of(proc)
            if sid is not None and is_jupyter_server(proc):
                servers[sid] = proc
        return servers

    def end_leftovers(self) -> list[str]:
        """End what a clean stop should have ended; what that was (sandbox processes, containers).

        Also removes the instance's sandbox network and the spawner's firewall rule for it, which
        outlive a stop on purpose (the next ``up`` reuses them).
        """
        left = []
        for proc in self.sandbox_processes():
            try:
                proc.kill()
                left.append(f"process {proc.pid}")
            except psutil.Error:
                pass
        if self.env.get("NBPOOL_RUNTIME") == "docker":
            instance = self.env.get("NBPOOL_INSTANCE", "nbpool")
            left += end_docker_leftovers(instance, self.env.get("NBPOOL_DOCKER_NETWORK") or f"{instance}-sandboxes")
        return left

    def bus_credentials(self) -> Any:
        """The operator's NATS credentials (for tests and benchmarks that use the bus directly)."""
        from nbpool.busauth import OPERATOR, load

        return load(self.nats_credentials, OPERATOR)

    def bus_refusals(self) -> list[str]:
        """The lines of the embedded nats-server's log where it refused a client something."""
        path = self.state_dir / "logs" / "nats.log"
        if self.external_nats or not path.exists():
            return []
        # A service's refusals name its user ("$G/user:<role>"); a test's own anonymous probe does not.
        return [line for line in path.read_text(errors="replace").splitlines() if "Violation" in line and "/user:" in line]

    def containers(self) -> list[Any]:
        """Docker containers of this cluster's nbpool instance."""
        import docker

        client = docker.from_env(timeout=30)
        label = f"nbpool.instance={self.env.get('NBPOOL_INSTANCE', 'nbpool')}"
        return list(client.containers.list(all=True, filters={"label": label}, ignore_removed=True))

    def status(self) -> dict[str, Any]:
        out = subprocess.run(
            [str(BIN / "nbpool"), "status", "--json"], env=self.env | {"NBPOOL_NATS_URL": self.nats_url},
            capture_output=True, check=True, timeout=30,
        )
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def record(self, sandbox_id: str) -> dict[str, Any] | None:
        """A sandbox's record as ``nbpool status --json`` shows it (no token), or None."""
        return next((r for r in self.status()["sandboxes"] if r["id"] == sandbox_id), None)

    def events(self) -> list[dict[str, Any]]:
        """Every lifecycle event stored on the bus so far, oldest first (``nbpool events --all --json``)."""
        out = subprocess.run(
            [str(BIN / "nbpool"), "events", "--json", "--all", "--timeout", "2"],
            env=self.env | {"NBPOOL_NATS_URL": self.nats_url}, capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def routes(self) -> set[str]:
        """Sandbox ids that have a route in Traefik's dynamic config."""
        path = self.state_dir / "traefik" / "dynamic" / "nbpool-routes.yml"
        config = json.loads(path.read_text())
        return {name.removeprefix("sandbox-") for name in config["http"]["routers"] if name.startswith("sandbox-")}

    def new_session(self, **body: Any) -> dict[str, Any]:
        """A session, as a client gets one: a 503 (none warm yet: the pool is refilling on a busy
        machine) is retried after its Retry-After, for up to a minute; anything else fails."""
        deadline = time.monotonic() + 60
        while True:
            resp = httpx.post(f"{self.url}/sessions", json=body or None, timeout=30)
            if resp.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(min(5.0, float(resp.headers.get("Retry-After", "2"))))
        assert resp.status_code == 201, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def base(self, session: dict[str, Any]) -> str:
        """The sandbox's base URL, as its ``url`` from ``POST /sessions`` has it."""
        if self.env.get("NBPOOL_ROUTING") == "path":
            return f"{self.url}/user/{session['id']}/"
        return f"http://{session['id']}.sb.localhost:{self.proxy_port}/"

    def origin(self, sandbox_id: str) -> str:
        """A sandbox's origin (host routing)."""
        return f"http://{sandbox_id}.sb.localhost:{self.proxy_port}"
