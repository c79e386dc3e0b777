"""nbpool on several machines, each machine a network namespace (tests/netns.py), brought up with
exactly the README's commands ("Several machines"): ``nbpool cluster init``, then ``nbpool up
--role bus`` on three bus nodes, ``--role host`` on two sandbox hosts and ``--role proxy`` on the
proxy machine.

- ``host1`` is a Docker host: its own Docker engine inside its namespace (own data root, exec
  root, socket and bridge; the notebook image loaded into it with ``docker save | docker load``),
  its sandbox network on a subnet of its own, which the proxy machine routes to it.
- ``host2`` runs sandboxes as processes listening on its own address: a second Docker engine
  would cost another image load (15-35 s and 330 MB here) and show nothing the first does not;
  what this host shows is that the cluster does not care which runtime a host has.

Everything a test sends goes to these namespaces (the proxy by its address, the sandbox's origin
in the Host header), never beyond the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from buscluster import sessions_leader
from cluster import BIN
from kernel import execute
from netns import NamespaceDocker, Net
from waiting import poll_until

from nbpool.busauth import OPERATOR, load

ROLES = ("bus1", "bus2", "bus3", "host1", "host2", "proxy")
BUS = ("bus1", "bus2", "bus3")
PORT = 8000
HOST_TIMEOUT = 8.0
SANDBOX_DOMAIN = "sb.nbpool.test"


class Machines:
    """The cluster: which process runs where, and how a test talks to it."""

    def __init__(self, net: Net, root: Path, image: str) -> None:
        self.net = net
        self.root = root
        self.image = image
        self.secrets = root / "secrets"
        self.procs: dict[str, subprocess.Popen[Any]] = {}
        self.engine: NamespaceDocker | None = None
        self.proxy = f"http://{net.address('proxy')}:{PORT}"

    def _env(self, machine: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NBPOOL_")}
        return {**env, "NBPOOL_STATE_DIR": str(self.root / machine), "NBPOOL_LOG_LEVEL": "INFO", **extra}

    def up(self, machine: str, role: str, folder: str, **extra: str) -> None:
        """``nbpool up --role ROLE --cluster <its folder>`` on ``machine``."""
        (self.root / machine).mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{machine}.out", "ab") as out:
            self.procs[machine] = self.net.popen(
                machine, [str(BIN / "nbpool"), "up", "--role", role, "--cluster", str(self.secrets / folder)],
                env=self._env(machine, **extra), stdout=out, start_new_session=True)

    def start(self) -> Machines:
        net = self.net
        # On the operator's machine: the cluster's certificates and credentials.
        init = [str(BIN / "nbpool"), "cluster", "init", str(self.secrets)]
        for i, machine in enumerate(BUS, 1):
            init += ["--bus", f"b{i}={net.address(machine)}"]
        subprocess.run(init, env=self._env("operator"), check=True, capture_output=True, timeout=60)
        for i, machine in enumerate(BUS, 1):
            self.up(machine, "bus", f"bus-b{i}")
        # host1: a Docker host with an engine of its own and a sandbox subnet of its own.
        subnet = net.allocate()
        self.engine = NamespaceDocker(net, "host1", self.root / "engine", address_pool=subnet).start()
        self.engine.load(self.image)
        proxy_address = net.address("proxy")
        self.up("host1", "host", "host", DOCKER_HOST=self.engine.host, NBPOOL_RUNTIME="docker",
                NBPOOL_DOCKER_IMAGE=self.image, NBPOOL_DOCKER_SUBNET=str(subnet), NBPOOL_SPAWNER_ID="host1",
                NBPOOL_PROXY_SOURCES=json.dumps([f"{proxy_address}/32"]), NBPOOL_POOL_SIZE="2",
                NBPOOL_HOST_TIMEOUT=str(HOST_TIMEOUT))
        self.up("host2", "host", "host", NBPOOL_RUNTIME="process", NBPOOL_PROCESS_ADDRESS=net.address("host2"),
                NBPOOL_SPAWNER_ID="host2", NBPOOL_POOL_SIZE="2", NBPOOL_HOST_TIMEOUT=str(HOST_TIMEOUT))
        # The proxy machine routes host1's sandbox subnet to host1, and serves the public origins.
        net.add_route("proxy", subnet, via="host1")
        self.up("proxy", "proxy", "proxy", NBPOOL_PROXY_HOST="0.0.0.0", NBPOOL_PUBLIC_URL=self.proxy,
                NBPOOL_SANDBOX_URL=f"http://{{id}}.{SANDBOX_DOMAIN}:{PORT}",
                NBPOOL_ADMIN_URL=f"http://admin.nbpool.test:{PORT}", NBPOOL_HOST_TIMEOUT=str(HOST_TIMEOUT),
                # One test client launches everything: the per-client limits are tested on their own.
                NBPOOL_RATE_LIMIT="100000", NBPOOL_RATE_BURST="100000", NBPOOL_MAX_SESSIONS_PER_CLIENT="1000")
        self.wait_pool(4, timeout=240)
        return self

    def stats(self) -> dict[str, Any] | None:
        try:
            return httpx.get(f"{self.proxy}/api/stats", timeout=2).json()  # type: ignore[no-any-return]
        except (httpx.HTTPError, ValueError):
            return None

    def wait_pool(self, warm: int, timeout: float = 120) -> None:
        poll_until(lambda: (s := self.stats()) is not None and s["spawners"] == 2 and s["available"] >= warm, timeout,
                   lambda: f"{warm} warm on 2 hosts (stats {self.stats()})\n{self.tails()}", interval=1.0)

    def operator(self, *args: str) -> str:
        """``nbpool ARGS`` as the operator, from the test's machine, as the README says: its folder of
        ``cluster init`` alone (which names the bus nodes and the instance)."""
        env = {**self._env("operator"), "NBPOOL_NATS_CREDENTIALS": str(self.secrets / "operator")}
        done = subprocess.run([str(BIN / "nbpool"), *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def status(self) -> dict[str, Any]:
        return json.loads(self.operator("status", "--json"))  # type: ignore[no-any-return]

    def events(self) -> list[dict[str, Any]]:
        out = self.operator("events", "--all", "--json", "--timeout", "2")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def new_session(self) -> dict[str, Any]:
        resp = httpx.post(f"{self.proxy}/sessions", json={}, timeout=30)
        assert resp.status_code == 201, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def host_of(self, session_id: str) -> str | None:
        for rec in self.status()["sandboxes"]:
            if rec["id"] == session_id:
                return str(rec["host"])
        return None

    def run_code(self, session: dict[str, Any], code: str = "1+1") -> str:
        base = f"http://{session['id']}.{SANDBOX_DOMAIN}:{PORT}/"
        return asyncio.run(execute(base, session["token"], session["kernel_id"], code, timeout=60,
                                   via=(self.net.address("proxy"), PORT)))

    def traefik_sockets(self) -> set[tuple[str, str]]:
        """Established TCP sockets of the proxy machine's Traefik: (local, peer) addresses."""
        children = json.loads((self.root / "proxy" / "run" / "children.json").read_text())
        pid = children["children"]["traefik"]
        done = self.net.run("proxy", ["ss", "-Htnp", "state", "established"], capture_output=True, text=True, timeout=30)
        return {(line.split()[2], line.split()[3]) for line in done.stdout.splitlines() if f"pid={pid}," in line}

    def nats_pid(self, machine: str) -> int:
        children = json.loads((self.root / machine / "run" / "children.json").read_text())
        return int(children["children"]["nats"])

    def tails(self, lines: int = 15) -> str:
        parts = []
        for machine in self.procs:
            path = self.root / f"{machine}.out"
            text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
            parts.append(f"--- {machine}\n" + "\n".join(text))
        return "\n".join(parts)

    def stop(self) -> dict[str, int]:
        """Ctrl-C to every ``nbpool up``, proxy and hosts first, bus nodes last; their exit codes."""
        codes = {}
        for machine in ("proxy", "host1", "host2", *BUS):
            proc = self.procs.get(machine)
            if proc is None:
                continue
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.send_signal(signal.SIGINT)
            try:
                codes[machine] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[machine] = proc.wait()
        return codes


@pytest.fixture(scope="module")
def machines(netns_ready: None, docker_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machines]:
    with Net(ROLES) as net:
        made = Machines(net, tmp_path_factory.mktemp("hosts"), docker_image)
        try:
            made.start()
            yield made
        finally:
            codes = made.stop()
            left = made.engine.stop() if made.engine is not None else []
            assert all(code == 0 for code in codes.values()), f"exit codes {codes}\n{made.tails()}"
            assert not left, f"containers left on host1: {left}"
            refusals = [line for m in BUS for line in
                        (made.root / m / "logs" / "nats.log").read_text(errors="replace").splitlines()
                        if "Violation" in line and "/user:" in line]
            assert not refusals, "a bus node refused a service:\n" + "\n".join(refusals[:20])


def test_sessions_on_both_hosts_run_code_through_the_proxy(machines: Machines) -> None:
    by_host: dict[str, dict[str, Any]] = {}
    for _ in range(8):
        session = machines.new_session()
        host = machines.host_of(session["id"])
        assert host in ("host1", "host2")
        by_host.setdefault(host, session)
        if len(by_host) == 2:
            break
    assert set(by_host) == {"host1", "host2"}, "sessions did not land on both hosts"
    for host, session in by_host.items():
        assert machines.run_code(session) == "2", f"1+1 on {host}"
    status = machines.status()
    assert {h["id"]: h["state"] for h in status["hosts"]} == {"host1": "live", "host2": "live"}
    # An open kernel websocket costs the proxy machine two sockets (visitor side, sandbox side).
    session = by_host["host1"]
    target = next(r["target"] for r in status["sandboxes"] if r["id"] == session["id"]).removeprefix("http://")
    before = machines.traefik_sockets()
    during = asyncio.run(_hold_websocket(machines, session, machines.traefik_sockets))
    new = during - before
    visitor = {pair for pair in new if _ip(pair[1]) == str(machines.net.gateway)}
    sandbox = {pair for pair in new if pair[1] == target}
    assert len(visitor) == 1 and len(sandbox) == 1, f"Traefik's new sockets with a kernel websocket open: {new}"


def test_a_sandbox_reaches_nothing_of_the_cluster(machines: Machines) -> None:
    """From inside a container on the Docker host: no bus node, no proxy, no other host, not its own host."""
    assert machines.engine is not None
    names = machines.engine.docker("ps", "--format", "{{.Names}}").stdout.split()
    assert names, "no container on host1"
    net = machines.net
    targets = [(net.address(m), 4222) for m in BUS] + [(net.address("proxy"), PORT), (net.address("host2"), 22),
                                                        (net.address("host1"), 22), (str(net.gateway), 22)]
    probe = ("import socket, sys\n"
             "for host, port in [" + ", ".join(f"('{h}', {p})" for h, p in targets) + "]:\n"
             "    try:\n        socket.create_connection((host, port), timeout=2).close(); print('OPEN', host, port)\n"
             "    except OSError as err:\n        print('closed', host, port, err.__class__.__name__)\n")
    done = machines.engine.docker("exec", names[0], "python3", "-c", probe, timeout=60)
    assert "OPEN" not in done.stdout, done.stdout
    assert done.stdout.count("closed") == len(targets)


def test_a_host_cut_off_for_30_s_is_lost_then_heals_without_double_assignment(machines: Machines) -> None:
    """host1 (the Docker host) loses its link to everyone for 30 s: its sessions end (host.lost)
    within the timeout, launches go to host2; healed, it removes what ended and refills, and
    records, containers and routes agree."""
    machines.wait_pool(4)
    session = machines.new_session()
    while machines.host_of(session["id"]) != "host1":
        session = machines.new_session()
    on_host1 = {r["id"] for r in machines.status()["sandboxes"] if r["host"] == "host1"}
    machines.net.cut("host1")
    cut_at = time.monotonic()
    try:
        poll_until(lambda: all(r["state"] == "ending" and r.get("ending_reason") == "host.lost"
                               for r in machines.status()["sandboxes"] if r["id"] in on_host1),
                   HOST_TIMEOUT + 10, "host1's sandboxes ended as host.lost", interval=0.5)
        noticed = time.monotonic() - cut_at
        assert noticed < 10 + 2, f"host loss noticed after {noticed:.1f} s"
        # Launches meanwhile go to the host that is left, never to a sandbox of host1.
        during = machines.new_session()
        assert machines.host_of(during["id"]) == "host2"
        assert machines.run_code(during) == "2"
        hosts = {h["id"]: h["state"] for h in machines.status()["hosts"]}
        assert hosts["host1"] == "lost"
        time.sleep(max(0.0, 30 - (time.monotonic() - cut_at)))
    finally:
        machines.net.heal("host1")
    # Healed: host1 removes what ended, comes back, refills; nothing of before is handed out again.
    poll_until(lambda: {h["id"]: h["state"] for h in machines.status()["hosts"]}.get("host1") == "live", 60,
               "host1 live again", interval=1.0)
    assert machines.engine is not None

    def containers() -> set[str]:
        names = machines.engine.docker("ps", "-a", "--format", "{{.Names}}").stdout.split()  # type: ignore[union-attr]
        return {name.rsplit("-", 1)[-1] for name in names}

    poll_until(lambda: not (on_host1 & containers()), 60, "host1's ended containers removed", interval=1.0)
    machines.wait_pool(4, timeout=120)
    records = {r["id"] for r in machines.status()["sandboxes"] if r["host"] == "host1"}
    assert records == containers() and not records & on_host1
    kinds = [e["type"] for e in machines.events() if e.get("host") == "host1" and e["type"].startswith("host.")]
    assert kinds[-2:] == ["host.lost", "host.returned"]
    # The ended session's origin is not served any more: the gateway says it ended (its record,
    # and so the reason, may be gone by now: removed with the container).
    resp = httpx.get(f"{machines.proxy}/api", headers={"Host": f"{session['id']}.{SANDBOX_DOMAIN}:{PORT}"}, timeout=5)
    assert resp.status_code == 404 and "has ended" in resp.json()["detail"], (resp.status_code, resp.text[:300])


def test_the_bus_leader_dies_and_comes_back_with_live_sessions(machines: Machines) -> None:
    """The node leading the sessions' bucket dies: launches get a clean 503 at most until the
    election is over, then go on; the live session runs on; no host is taken for lost."""
    machines.wait_pool(2)
    live = machines.new_session()
    victim = _leader(machines)
    supervisor = machines.procs[victim]
    os.kill(supervisor.pid, signal.SIGSTOP)  # so that nothing restarts its nats-server yet
    os.kill(machines.nats_pid(victim), signal.SIGKILL)
    killed_at = time.time()
    try:
        began = time.monotonic()
        after = None
        while after is None and time.monotonic() - began < 60:
            resp = httpx.post(f"{machines.proxy}/sessions", json={}, timeout=60)
            if resp.status_code == 201:
                after = resp.json()
            else:
                assert resp.status_code == 503, resp.text
                time.sleep(0.5)
        assert after is not None, "claims did not resume"
        assert machines.run_code(live) == "2", "a live session was lost"
        assert machines.run_code(after) == "2"
        time.sleep(HOST_TIMEOUT)
    finally:
        os.kill(supervisor.pid, signal.SIGCONT)  # its nats-server is restarted and catches up
    assert not [e for e in machines.events() if e["type"] == "host.lost" and e["time"] > killed_at]
    machines.wait_pool(2)


def _ip(address: str) -> str:
    """The IP of an ``ss`` address: ``10.0.0.1:80``, ``[::ffff:10.0.0.1]:80`` (IPv4 on a dual socket)."""
    return address.rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")


async def _hold_websocket(machines: Machines, session: dict[str, Any], count: Any) -> set[tuple[str, str]]:
    """Open the session's kernel websocket through the proxy, and list Traefik's sockets meanwhile."""
    import websockets

    url = (f"ws://{session['id']}.{SANDBOX_DOMAIN}:{PORT}/api/kernels/{session['kernel_id']}/channels"
           f"?token={session['token']}")
    async with websockets.connect(url, host=machines.net.address("proxy"), port=PORT, open_timeout=30):
        await asyncio.sleep(1.0)
        return set(await asyncio.to_thread(count))


def _leader(machines: Machines) -> str:
    """The bus machine whose node leads the sessions' bucket."""
    nodes = ",".join(f"tls://{machines.net.address(m)}:4222" for m in BUS)

    name = asyncio.run(sessions_leader(nodes, load(machines.secrets / "operator", OPERATOR)))  # b1, b2 or b3
    return BUS[int(name[1:]) - 1]
