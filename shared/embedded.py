"""``nbpool up``: the whole of nbpool on one machine, as separate supervised processes.

It starts nats-server (JetStream, data in the state folder, a user per service: nbpool.busauth)
unless given a NATS URL, Traefik with a configuration written here, and the four services. A child that dies is reported with its
last log lines and restarted. Ctrl-C stops everything in order (gateways first, NATS last).
Logs go to ``<state_dir>/logs/<child>.log``; warnings and errors are echoed to the terminal.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field

from nbpool import busauth
from nbpool.aio import cancel_and_wait, poll_ready, wait_event
from nbpool.children import Child, binary, go_env
from nbpool.cluster import nats_config, read_spec
from nbpool.names import Names
from nbpool.profiles import BuildFailed, build_profile, content_profiles, images_script
from nbpool.settings import CommonSettings, Profile

__all__ = ["Supervisor", "UpSettings", "traefik_static_config"]


class UpSettings(CommonSettings):
    """Where ``nbpool up`` listens (all on loopback by default)."""

    proxy_host: str = "127.0.0.1"
    proxy_port: int = Field(default=8000, ge=1, le=65535)
    proxy_ping_port: int = Field(default=8099, ge=1, le=65535)
    gateway_port: int = Field(default=8001, ge=1, le=65535)
    nats_port: int = Field(default=4222, ge=1, le=65535)
    gogc: int = Field(default=50, ge=1, description="GOGC of nats-server and Traefik (see children.go_env)")
    metrics_port: int = Field(
        default=9180, ge=0, le=65535, description="the first of the services' /metrics ports (one each, in order); 0: none",
    )


def traefik_static_config(
    addresses: list[str], ping_address: str, dynamic_dir: Path, log_level: str = "WARN"
) -> dict[str, Any]:
    """Traefik's static configuration: the public entry points, the file provider, nothing reaching out.

    Each of ``addresses`` is an entry point (``web``, ``web2`` ...) that serves every route;
    the health check has its own, which serves none.
    """
    # readTimeout 0: notebook websockets stay open for hours.
    public = {"asDefault": True, "transport": {"respondingTimeouts": {"readTimeout": "0s"}}}
    entry_points: dict[str, Any] = {
        ("web" if i == 0 else f"web{i + 1}"): {"address": address, **public} for i, address in enumerate(addresses)
    }
    return {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "entryPoints": {**entry_points, "ping": {"address": ping_address}},
        "ping": {"entryPoint": "ping"},
        "providers": {
            # Route changes apply within 100 ms instead of Traefik's default 2 s.
            "providersThrottleDuration": "100ms",
            "file": {"directory": str(dynamic_dir), "watch": True},
        },
        "log": {"level": log_level},
    }


def _ipv6_loopback() -> bool:
    """True when this machine has ::1 (a container or kernel may have IPv6 off)."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def _docker_reachable() -> str | None:
    """None if a Docker engine answers, else why not."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            client.ping()
        finally:
            client.close()
        return None
    except Exception as err:  # any failure means: no usable engine here
        return f"{err.__class__.__name__}: {err}"


class Supervisor:
    """Starts, watches and stops nbpool's processes (see the module docstring)."""

    def __init__(
        self,
        settings: UpSettings,
        nats_url: str | None = None,
        spawners: int = 1,
        gateways: int = 1,
        verbose: bool = False,
        keep_sandboxes: bool = False,
        role: str = "all",
        cluster: Path | None = None,
        node: str | None = None,
    ) -> None:
        self.settings = settings
        self.state = settings.state_dir
        self.role = role
        #: A cluster folder of ``nbpool cluster init`` (every role but "all").
        self.cluster = cluster
        self.spec = read_spec(cluster) if cluster is not None else None
        self.node = node
        self.external_nats = self.spec.nats_url if self.spec is not None else nats_url
        self.nats_url = self.external_nats or f"nats://127.0.0.1:{settings.nats_port}"
        #: The embedded NATS server's users (nbpool.busauth); in a cluster, the role's folder;
        #: with --nats-url, NBPOOL_NATS_CREDENTIALS.
        self.credentials = cluster if cluster is not None else self.state / "bus"
        self.n_spawners = spawners
        self.n_gateways = gateways if role in ("all", "proxy") else 0
        self.verbose = verbose
        self.keep_sandboxes = keep_sandboxes
        self.children: list[Child] = []
        self.stopping = asyncio.Event()

    # ---- set-up -------------------------------------------------------------------------

    def choose_runtime(self) -> dict[str, str]:
        """The runtime settings for the spawners: Docker when an engine answers, else processes.

        ``NBPOOL_RUNTIME`` decides when set. With Docker and no ``NBPOOL_DOCKER_IMAGE``, the
        notebook image is built first (only when its inputs changed), showing progress.
        """
        wanted = os.environ.get("NBPOOL_RUNTIME")
        content = content_profiles(self.settings.profiles)
        if wanted == "process":
            self._no_content(content)
            return {"NBPOOL_RUNTIME": "process"}
        problem = _docker_reachable()
        if problem is not None:
            if wanted == "docker":
                raise SystemExit(f"nbpool up: NBPOOL_RUNTIME=docker but no Docker engine answers ({problem})")
            self._say("!" * 78)
            self._say("WARNING: no Docker engine answers, so sandboxes run as plain local processes.")
            self._say("They are NOT isolated: visitors' code runs as you. Only for people you trust.")
            self._say(f"(Docker said: {problem})")
            self._say("!" * 78)
            self._no_content(content)
            return {"NBPOOL_RUNTIME": "process"}
        env = {"NBPOOL_RUNTIME": "docker"}
        if os.environ.get("NBPOOL_DOCKER_IMAGE"):
            self._build_content(content, os.environ["NBPOOL_DOCKER_IMAGE"])
            return env
        script = images_script("build.sh")
        if script is None:
            return env  # the default image name; the spawner says clearly if it is missing
        self._say("Docker engine found: building the notebook image if its inputs changed ...")
        result = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True)
        if result.returncode != 0:
            raise SystemExit("nbpool up: the notebook image did not build; see the output above")
        env["NBPOOL_DOCKER_IMAGE"] = result.stdout.strip().splitlines()[-1]
        self._say(f"sandboxes are containers of {env['NBPOOL_DOCKER_IMAGE']}")
        self._build_content(content, env["NBPOOL_DOCKER_IMAGE"])
        return env

    def _build_content(self, content: dict[str, Profile], notebook_image: str) -> None:
        """Build each content profile's image if its inputs changed. A failure is said, and does
        not stop nbpool: the profile keeps its previous image, or is not pooled until one builds."""
        for name, profile in content.items():
            self._say(f"profile {name}: building its image from {profile.content} if its inputs changed ...")
            try:
                tag = build_profile(name, profile, base=notebook_image)
            except BuildFailed as err:
                self._say("!" * 78)
                self._say(f"profile {name}: its image did not build: {err}")
                self._say(f"Its previous image ({profile.image_of(name)}) keeps serving if there is one; if not, the "
                          f"profile is not pooled until `nbpool profile build {name}` succeeds (`nbpool status` says).")
                self._say("!" * 78)
                continue
            self._say(f"profile {name}: sandboxes are containers of {tag}")

    def _no_content(self, content: dict[str, Profile]) -> None:
        for name in content:
            self._say(f"WARNING: profile {name} has content, which needs the Docker runtime: "
                      "its sandboxes start with the default home and packages.")

    def _env(self, **extra: str) -> dict[str, str]:
        s = self.settings
        env = {
            **os.environ,
            "NBPOOL_NATS_URL": self.nats_url,
            "NBPOOL_STATE_DIR": str(self.state),
            **({"NBPOOL_NATS_CREDENTIALS": str(self.credentials)} if self.external_nats is None or self.spec else {}),
            "NBPOOL_INSTANCE": self.spec.instance if self.spec else s.instance,
            **({"NBPOOL_BUS_REPLICAS": str(self.spec.replicas)} if self.spec else {}),
            "NBPOOL_PUBLIC_URL": s.public_url,
            "NBPOOL_ROUTING": s.routing,
            "NBPOOL_SANDBOX_URL": s.sandbox_url,
            "NBPOOL_ADMIN_URL": s.admin_url,
            "PYTHONUNBUFFERED": "1",
        }
        env.update(extra)
        return env

    def _plan(self) -> list[Child]:
        """The processes of this machine's role: all of them (one machine), or one tier of a cluster."""
        children: list[Child] = []
        if self.role == "bus":
            return [self._bus_node()]
        if self.role == "all" and self.external_nats is None:
            children.append(self._embedded_nats())
        proxy = self._proxy_tier() if self.role in ("all", "proxy") else []
        children += proxy[:2]  # Traefik and the router first: sandboxes are routed as they start
        if self.role in ("all", "host"):
            children += self._spawners()
        return children + proxy[2:]

    def _embedded_nats(self) -> Child:
        s = self.settings
        conf = busauth.provision(self.credentials, Names(s.instance))
        return Child("nats", [
            binary("nats-server"), "-c", str(conf), "-js", "-sd", str(self.state / "nats"), "-a", "127.0.0.1",
            "-p", str(s.nats_port), "-n", f"{s.instance}-embedded",
        ], go_env(s.gogc), self.state / "logs" / "nats.log")

    def _bus_node(self) -> Child:
        """A NATS server of the cluster: TLS to clients and routes, JetStream stored in the state folder."""
        assert self.cluster is not None and self.node is not None
        config = nats_config(self.cluster, self.node, self.state / "nats")
        path = self.state / "nats-server.conf"
        busauth.write_private(path, json.dumps(config, indent=1))  # JSON is nats-server configuration
        return Child("nats", [binary("nats-server"), "-c", str(path)], go_env(self.settings.gogc), self.state / "logs" / "nats.log")

    def _proxy_tier(self) -> list[Child]:
        """Traefik and the router, then (after the spawners on one machine) the culler and the gateways."""
        s = self.settings
        logs = self.state / "logs"
        py = sys.executable
        dynamic = self.state / "traefik" / "dynamic"
        dynamic.mkdir(parents=True, exist_ok=True)
        static = self.state / "traefik" / "traefik.yml"
        addresses = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}" for host, port in self._proxy_addresses()]
        config = traefik_static_config(addresses, f"127.0.0.1:{s.proxy_ping_port}", dynamic)
        static.write_text(json.dumps(config, indent=1))  # JSON is valid YAML
        gateway_ports = [s.gateway_port + i for i in range(self.n_gateways)]
        gateway_urls = ",".join(f"http://127.0.0.1:{p}" for p in gateway_ports)
        children = [
            Child("traefik", [binary("traefik"), f"--configFile={static}"], go_env(s.gogc), logs / "traefik.log"),
            Child("router", [py, "-m", "nbpool.router.main"], self._env(
                NBPOOL_GATEWAY_URL=gateway_urls, NBPOOL_PROXY_URL=f"http://127.0.0.1:{s.proxy_port}"), logs / "router.log"),
            Child("culler", [py, "-m", "nbpool.culler.main"], self._env(), logs / "culler.log"),
        ]
        for i, port in enumerate(gateway_ports):
            name = "gateway" if self.n_gateways == 1 else f"gateway-{i + 1}"
            children.append(Child(name, [py, "-m", "nbpool.gateway.main"], self._env(NBPOOL_GATEWAY_PORT=str(port)), logs / f"{name}.log"))
        return children

    def _spawners(self) -> list[Child]:
        logs = self.state / "logs"
        runtime = self.choose_runtime()
        children = []
        for i in range(self.n_spawners):
            name = "spawner" if self.n_spawners == 1 else f"spawner-{i + 1}"
            extra = {"NBPOOL_REMOVE_ON_STOP": "false" if self.keep_sandboxes else "true", **runtime}
            if self.n_spawners > 1 or "NBPOOL_SPAWNER_ID" not in os.environ:
                # A host of a cluster keeps its machine's name (stable across restarts); one machine, "local".
                default = socket.gethostname().split(".")[0] if self.role == "host" else "local"
                extra["NBPOOL_SPAWNER_ID"] = name if self.n_spawners > 1 else os.environ.get("NBPOOL_SPAWNER_ID", default)
            children.append(Child(name, [sys.executable, "-m", "nbpool.spawner.main"], self._env(**extra), logs / f"{name}.log"))
        return children

    def _services(self) -> list[Child]:
        """The children that are nbpool's own services (not nats-server or Traefik)."""
        return [c for c in self.children if c.name not in ("nats", "traefik")]

    def _give_metrics_ports(self) -> None:
        """A /metrics port for each service, and the list of them for Prometheus (file-based discovery)."""
        base = self.settings.metrics_port
        if not base:
            return
        targets = []
        for offset, child in enumerate(self._services()):
            child.env["NBPOOL_METRICS_PORT"] = str(base + offset)
            child.env["NBPOOL_METRICS_HOST"] = self.settings.metrics_host
            kind = child.name.split("-")[0]
            targets.append({"targets": [f"{self.settings.metrics_host}:{base + offset}"],
                            "labels": {"service": kind, "process": child.name, "role": self.role}})
        run = self.state / "run"
        run.mkdir(parents=True, exist_ok=True)
        tmp = run / "prometheus-targets.json.tmp"
        tmp.write_text(json.dumps(targets, indent=1))
        os.replace(tmp, run / "prometheus-targets.json")

    def _proxy_addresses(self) -> list[tuple[str, int]]:
        """Where Traefik listens. On 127.0.0.1 also on ::1: ``*.localhost`` names (the sandboxes'
        and the admin's origins on one machine) resolve to ``::1`` first for many programs."""
        s = self.settings
        if s.proxy_host == "127.0.0.1" and socket.has_ipv6 and _ipv6_loopback():
            return [("127.0.0.1", s.proxy_port), ("::1", s.proxy_port)]
        return [(s.proxy_host, s.proxy_port)]

    def _check_ports(self) -> None:
        s = self.settings
        wanted = []
        if self.role in ("all", "proxy"):
            wanted += [(host, port, "NBPOOL_PROXY_PORT") for host, port in self._proxy_addresses()]
            wanted += [("127.0.0.1", s.proxy_ping_port, "NBPOOL_PROXY_PING_PORT")]
            wanted += [("127.0.0.1", s.gateway_port + i, "NBPOOL_GATEWAY_PORT") for i in range(self.n_gateways)]
        if self.role == "all" and self.external_nats is None:
            wanted.append(("127.0.0.1", s.nats_port, "NBPOOL_NATS_PORT"))
        if s.metrics_port:
            count = {"all": 2 + self.n_spawners, "proxy": 2, "host": self.n_spawners, "bus": 0}[self.role] + self.n_gateways
            wanted += [(s.metrics_host, s.metrics_port + i, "NBPOOL_METRICS_PORT") for i in range(count)]
        for host, port, var in wanted:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((host, port))
                except OSError:
                    raise SystemExit(f"nbpool up: port {host}:{port} is in use; free it or set {var}") from None

    def _say(self, text: str) -> None:
        print(f"nbpool: {text}", flush=True)

    # ---- running -------------------------------------------------------------------------

    async def run(self) -> int:
        """Start everything, supervise until SIGINT/SIGTERM, stop everything; the exit code."""
        self._check_ports()
        (self.state / "logs").mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stopping.set)
        if not self.settings.origins.by_host:
            self._say("!" * 78)
            self._say("WARNING: NBPOOL_ROUTING=path: every sandbox is served from the gateway's own origin.")
            self._say("A page in any sandbox can then read and drive every other sandbox, and the admin,")
            self._say("in a visitor's browser. Only for people who trust each other.")
            self._say("!" * 78)
        self.children = self._plan()
        self._give_metrics_ports()
        watchers = []
        for child in self.children:
            await child.start()
            watchers.append(asyncio.ensure_future(self._watch(child)))
            if child.name == "nats":
                if self.spec is not None and self.node is not None:
                    node = self.spec.node(self.node)
                    await self._wait_port(node.client_port, "nats-server", host=node.host)
                else:
                    await self._wait_port(self.settings.nats_port, "nats-server")
        self._write_pids()
        if self.n_gateways:
            ready = asyncio.ensure_future(self._announce())
        else:
            self._say(f"{self.role} up: {', '.join(c.name for c in self.children)} (Ctrl-C stops; logs in {self.state / 'logs'})")
            ready = asyncio.ensure_future(asyncio.sleep(0))
        await self.stopping.wait()
        ready.cancel()
        self._say("stopping ...")
        for child in reversed(self.children):
            # Spawners end their sandboxes on the way out, which can take a few seconds.
            await child.stop(timeout=30.0 if child.name.startswith("spawner") else 10.0)
            if child.name.startswith("spawner") and not self.keep_sandboxes:
                await self._sweep(child)
        await cancel_and_wait(*watchers, ready)
        (self.state / "run" / "children.json").unlink(missing_ok=True)
        self._say("stopped")
        return 0

    async def _sweep(self, spawner: Child) -> None:
        """Remove the sandboxes of a spawner that did not stop cleanly (say, stopped mid-start)."""
        if spawner.proc is None or spawner.proc.returncode == 0:
            return  # it ended its sandboxes itself
        sweep = await asyncio.create_subprocess_exec(
            *spawner.argv, "--sweep", env=spawner.env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await sweep.communicate()
        text = out.decode(errors="replace").strip()
        self._say(f"{spawner.name} did not stop cleanly (code {spawner.proc.returncode}); "
                  + (text.splitlines()[-1] if sweep.returncode == 0 and text else f"sweeping its sandboxes failed: {text}"))

    def _write_pids(self) -> None:
        run = self.state / "run"
        run.mkdir(parents=True, exist_ok=True)
        pids = {c.name: c.proc.pid for c in self.children if c.proc is not None}
        tmp = run / "children.json.tmp"
        tmp.write_text(json.dumps({"supervisor": os.getpid(), "children": pids}))
        os.replace(tmp, run / "children.json")

    async def _wait_port(self, port: int, what: str, timeout: float = 20.0, host: str = "127.0.0.1") -> None:

        async def listening() -> bool | None:
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                return None
            writer.close()
            return True

        try:
            await poll_ready(listening, deadline=time.monotonic() + timeout, most=0.05)
        except TimeoutError:
            self._say(f"{what} is not listening on port {port} after {timeout:g} s; see {self.state / 'logs'}")

    async def _announce(self) -> None:
        """Tell the user when the gateway answers through the proxy, and how full the pool is."""
        base = f"http://127.0.0.1:{self.settings.proxy_port}"
        began = time.monotonic()
        shown = None
        async with httpx.AsyncClient(timeout=2.0) as client:
            while True:
                try:
                    stats = (await client.get(f"{base}/api/stats")).json()
                    line = f"pool {stats['available']} warm, {stats['starting']} starting, capacity {stats['capacity']}"
                    if shown is None:
                        self._say(f"up in {time.monotonic() - began:.1f} s: open {self.settings.public_url}/spawn "
                                  f"or POST {self.settings.public_url}/sessions  (Ctrl-C stops)")
                        self._say(f"API docs {self.settings.public_url}/docs, admin {self.settings.admin_url}/admin, "
                                  f"logs in {self.state / 'logs'}")
                        if self.settings.origins.by_host:
                            self._say(f"each server has an origin of its own: {self.settings.sandbox_url}")
                    if line != shown:
                        self._say(line)
                        shown = line
                    if stats["available"] and stats["starting"] == 0:
                        return
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                await asyncio.sleep(0.5)

    async def _watch(self, child: Child) -> None:
        """Copy the child's output to its log; when it dies, report and restart it."""
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(child.log_path, "a", buffering=1) as logfile:
            while True:
                assert child.proc is not None and child.proc.stdout is not None
                async for raw in child.proc.stdout:
                    line = raw.decode(errors="replace").rstrip()
                    child.lines.append(line)
                    logfile.write(line + "\n")
                    if self.verbose or any(f"level={lvl}" in line or f'"level": "{lvl}"' in line
                                           for lvl in ("warning", "error", "critical")):
                        print(f"[{child.name}] {line}", flush=True)
                code = await child.proc.wait()
                if self.stopping.is_set():
                    return
                self._say(f"{child.name} exited with code {code}; its last lines:")
                for line in list(child.lines)[-15:]:
                    print(f"  [{child.name}] {line}", flush=True)
                # Restart at once the first time, then back off while it keeps dying quickly.
                quick = time.monotonic() - child.started_at < 30
                child.restarts = child.restarts + 1 if quick else 0
                delay = 0 if child.restarts <= 1 else min(30, 2 ** (child.restarts - 1))
                self._say(f"restarting {child.name}" + (f" in {delay} s" if delay else ""))
                if await wait_event(self.stopping, delay or 0.01):
                    return
                await child.start()
                self._write_pids()
