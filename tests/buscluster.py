"""A real NATS JetStream cluster for tests and the benchmark, made the way the README says:
``nbpool cluster init``, then ``nbpool up --role bus`` once per node (here all on loopback, each
node on ports of its own); and :class:`Deck`, nbpool's services on it in one process.

A node can be killed (its nats-server gets SIGKILL while its supervisor is paused, so nothing
restarts it) and revived (the supervisor goes on, sees its child dead and restarts it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster import BIN, free_ports
from fakes import FakeRuntime, route_everything
from waiting import poll_until, poll_until_async

from nbpool.bus import Bus, KVMirror
from nbpool.busauth import OPERATOR, Credentials, load
from nbpool.culler.culler import Culler
from nbpool.gateway.claims import Claimer
from nbpool.hosts import HostWatch
from nbpool.models import Event, SandboxRecord, State, decode
from nbpool.names import Names
from nbpool.settings import CullerSettings, SpawnerSettings
from nbpool.spawner.spawner import Spawner

__all__ = ["HOST_TIMEOUT", "NAMES", "REPLICAS", "BusCluster", "Deck", "sessions_leader", "stop_all"]

NAMES = Names("nbpool")
REPLICAS = 3
#: Shorter than the default (8 s), so that host-loss tests take seconds.
HOST_TIMEOUT = 4.0

#: Which folder of ``cluster init`` holds each role's password.
FOLDER_OF = {"spawner": "host", "gateway": "proxy", "router": "proxy", "culler": "proxy", OPERATOR: "operator"}


def stop_all(procs: list[subprocess.Popen[Any]], timeout: float = 60) -> list[int]:
    """Ctrl-C to each ``nbpool up`` (woken first if it was paused), in order; their exit codes
    (a process that does not stop within ``timeout`` s is killed)."""
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.send_signal(signal.SIGINT)
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    return codes


async def sessions_leader(url: str, credentials: Credentials) -> str:
    """The name of the bus node leading the sessions' bucket (of instance ``nbpool``)."""
    bus = await Bus.connect(url, NAMES, "test", credentials=credentials)
    try:
        info = await bus.js.stream_info(f"KV_{NAMES.sandboxes}")
        assert info.cluster is not None and info.cluster.leader
        return str(info.cluster.leader)
    finally:
        await bus.close()


class BusCluster:
    """``size`` bus nodes ``b1``... on loopback, their state and logs under ``root``."""

    def __init__(self, root: Path, size: int = 3, instance: str = "nbpool", sync: str = "default") -> None:
        self.root = root
        self.secrets = root / "secrets"
        base = free_ports(2 * size)
        self.nodes = {f"b{i + 1}": (base + i, base + size + i) for i in range(size)}
        self.instance = instance
        self.sync = sync
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return ",".join(f"tls://127.0.0.1:{client}" for client, _ in self.nodes.values())

    def folder(self, role: str) -> Path:
        """The folder of ``cluster init`` a service of ``role`` is given."""
        return self.secrets / FOLDER_OF[role]

    def credentials(self, role: str) -> Credentials:
        return load(self.folder(role), role)

    def _env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("NBPOOL_")}

    def start(self) -> BusCluster:
        argv = [str(BIN / "nbpool"), "cluster", "init", str(self.secrets), "--instance", self.instance, "--sync", self.sync]
        for name, (client, route) in self.nodes.items():
            argv += ["--bus", f"{name}=127.0.0.1:{client}:{route}"]
        subprocess.run(argv, env=self._env(), check=True, capture_output=True)
        for name in self.nodes:
            self._start(name)
        for client, _ in self.nodes.values():
            poll_until(lambda port=client: socket.create_connection(("127.0.0.1", port), timeout=0.2).close() or True,  # type: ignore[misc]
                       20, "a bus node listening", interval=0.05, errors=(OSError,))
        return self

    def _start(self, name: str) -> None:
        env = {**self._env(), "NBPOOL_STATE_DIR": str(self.root / name)}
        log = open(self.root / f"{name}.out", "ab")  # noqa: SIM115 (closed with the process)
        self.procs[name] = subprocess.Popen(
            [str(BIN / "nbpool"), "up", "--role", "bus", "--cluster", str(self.secrets / f"bus-{name}")],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()

    def nats_pid(self, name: str) -> int:
        """The pid of node ``name``'s nats-server (its supervisor's child)."""

        def read() -> int | None:
            try:
                return int(json.loads((self.root / name / "run" / "children.json").read_text())["children"]["nats"])
            except (OSError, ValueError, KeyError):
                return None

        return int(poll_until(read, 20, f"{name}'s nats-server pid"))

    def kill(self, name: str) -> None:
        """Node ``name`` dies (SIGKILL), and stays dead until :meth:`revive`."""
        os.kill(self.procs[name].pid, signal.SIGSTOP)
        os.kill(self.nats_pid(name), signal.SIGKILL)

    def revive(self, name: str) -> None:
        """The killed node's supervisor goes on, and restarts its nats-server."""
        os.kill(self.procs[name].pid, signal.SIGCONT)

    def logs(self, name: str) -> str:
        path = self.root / name / "logs" / "nats.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def refusals(self) -> list[str]:
        """Lines where a node refused a service a subject (the permission table is too narrow)."""
        return [line for name in self.nodes for line in self.logs(name).splitlines() if "Violation" in line and "/user:" in line]

    def stop(self) -> list[int]:
        """Stop every node (Ctrl-C to its ``nbpool up``); their exit codes."""
        return stop_all(list(self.procs.values()), timeout=30)


class Deck:
    """The services of a cluster, in this process, on a real bus cluster."""

    def __init__(self, bc: BusCluster, host_timeout: float = HOST_TIMEOUT) -> None:
        self.bc = bc
        self.host_timeout = host_timeout
        self.buses: list[Bus] = []
        self.tasks: list[asyncio.Future[Any]] = []
        self.spawners: dict[str, tuple[asyncio.Event, asyncio.Future[None], Bus]] = {}
        self.engine: dict[str, Any] = {}  # one fake "engine" per host id
        self.runtimes: dict[str, FakeRuntime] = {}

    async def bus(self, role: str) -> Bus:
        bus = await Bus.connect(self.bc.url, NAMES, role, credentials=self.bc.credentials(role))
        await bus.ensure(None if role == OPERATOR else role, REPLICAS)
        self.buses.append(bus)
        return bus

    async def start(self) -> Deck:
        self.operator = await self.bus(OPERATOR)
        self.records: KVMirror[SandboxRecord] = KVMirror(self.operator, NAMES.sandboxes, SandboxRecord)
        self.events = await self.operator.follow_events(everything=True)
        self.seen: list[Event] = []
        router = await self.bus("router")
        self.tasks += [asyncio.ensure_future(self.records.run()), asyncio.ensure_future(route_everything(self.records, await router.kv(NAMES.routes)))]
        await self.records.ready.wait()
        return self

    async def start_spawner(self, host: str, **settings: Any) -> FakeRuntime:
        """The spawner of sandbox host ``host``, with that host's fake engine (kept across restarts)."""
        runtime = FakeRuntime(engine=self.engine.setdefault(host, {}), owner=("nbpool", host))
        self.runtimes[host] = runtime
        config = SpawnerSettings(spawner_id=host, runtime="process", prestart_kernel=False, heartbeat_interval=0.5,
                                 activity_interval=1.0, refill_delay=0, host_timeout=self.host_timeout, bus_replicas=REPLICAS,
                                 **settings)
        bus = await self.bus("spawner")
        stop = asyncio.Event()
        self.spawners[host] = (stop, asyncio.ensure_future(Spawner(config, bus, runtime).serve(stop)), bus)
        return runtime

    async def stop_spawner(self, host: str) -> None:
        """The host's spawner goes away; its sandboxes stay (as when a host dies or is cut off)."""
        stop, task, bus = self.spawners.pop(host)
        stop.set()
        await asyncio.wait_for(task, 30)
        await bus.close()
        self.buses.remove(bus)

    async def claimer(self) -> Claimer:
        """A gateway's claim logic, with its own connection and its own view of the hosts."""
        bus = await self.bus("gateway")
        hosts = HostWatch(bus, self.host_timeout)
        self.tasks.append(asyncio.ensure_future(hosts.beats.run()))
        await hosts.beats.ready.wait()
        return Claimer(bus, hosts, claim_timeout=5.0)

    async def culler(self) -> Culler:
        bus = await self.bus("culler")
        culler = Culler(CullerSettings(host_timeout=self.host_timeout, bus_replicas=REPLICAS), bus)
        stop = asyncio.Event()
        self.tasks.append(asyncio.ensure_future(culler.serve(stop)))
        return culler

    def in_state(self, state: State, host: str | None = None) -> list[SandboxRecord]:
        return [r for r in self.records.values() if r.state == state and (host is None or r.host == host)]

    async def until(self, check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
        async def ask() -> Any:
            return check()
        return await poll_until_async(ask, timeout, what, interval=0.1)

    async def drain_events(self) -> list[Event]:
        while True:
            try:
                self.seen.append(decode(Event, (await self.events.next_msg(timeout=0.5)).data))
            except Exception:
                return self.seen

    async def leader(self, stream: str) -> str:
        async def ask() -> str | None:
            try:
                info = await self.operator.js.stream_info(stream)
            except Exception:
                return None
            return info.cluster.leader if info.cluster and info.cluster.leader else None
        return str(await poll_until_async(ask, 30, f"a leader of {stream}", interval=0.2))

    async def close(self) -> None:
        for host in list(self.spawners):
            await self.stop_spawner(host)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for bus in self.buses:
            await bus.close()
        for runtime in self.runtimes.values():
            await runtime.close_all()
