"""The compose files of a cluster's roles (deploy/compose/bus.yaml, host.yaml, proxy.yaml), run for
real as the README's "Several machines" says: ``nbpool cluster init``, the folders copied and given
to their users, then ``docker compose up -d`` per machine, with the services image and the notebook
image built here (no registry). All the "machines" are this one: the bus nodes on loopback ports of
their own, the proxy and the host in this machine's network, as each would be on its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import BIN, end_docker_leftovers, free_ports
from kernel import execute
from waiting import poll_until

from nbpool.runtime.docker_network import FIREWALL_CHAIN, PROXY_CHAIN, bridge_name

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "deploy" / "compose"
#: The services image's user (deploy/images/services/Dockerfile), who runs the bus and proxy roles.
SERVICES_UID = 10001


@pytest.fixture(scope="session")
def services_image(docker_image: str) -> str:
    """The services image, built if its inputs changed (after the notebook image: both need the base)."""
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing; make test installs it as root (deploy/docker-engine.sh)")
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("the compose roles' folders are given to their users with chown: CI runs as root")
        pytest.skip("the compose roles' folders are given to their users with chown: run as root")
    built = subprocess.run([str(ROOT / "deploy" / "images" / "build-services.sh")], stdout=subprocess.PIPE, text=True,
                           timeout=1800)
    assert built.returncode == 0, "the services image did not build"
    return built.stdout.strip().splitlines()[-1]


class Machines:
    """One compose project per machine of the cluster, each with its folder and settings."""

    def __init__(self, root: Path, images: dict[str, str]) -> None:
        self.root = root
        self.instance = f"t{uuid.uuid4().hex[:8]}"
        self.images = images
        self.up: list[tuple[str, Path, dict[str, str]]] = []
        client = free_ports(6)
        self.nodes = {f"b{i + 1}": (client + i, client + 3 + i) for i in range(3)}
        self.proxy_port = free_ports(3)
        self.metrics = free_ports(5)
        self.url = f"http://127.0.0.1:{self.proxy_port}"
        self.secrets = root / "secrets"
        argv = [str(BIN / "nbpool"), "cluster", "init", str(self.secrets), "--instance", self.instance]
        for name, (port, route) in self.nodes.items():
            argv += ["--bus", f"{name}=127.0.0.1:{port}:{route}"]
        subprocess.run(argv, check=True, capture_output=True, env=_clean_env())

    def folder(self, name: str, owner: int | None) -> Path:
        """A machine's copy of its folder of ``cluster init``, given to ``owner`` (else left root's)."""
        copy = self.root / "machines" / name
        shutil.copytree(self.secrets / name, copy)
        if owner is not None:
            for path in [copy, *copy.rglob("*")]:
                os.chown(path, owner, owner)
        return copy

    def compose(self, project: str, role: str, folder: Path, **env: str) -> None:
        settings = {"NBPOOL_CLUSTER_FOLDER": str(folder), "NBPOOL_SERVICES_IMAGE": self.images["services"],
                    "NBPOOL_NOTEBOOK_IMAGE": self.images["notebook"], **env}
        self.up.append((project, COMPOSE / f"{role}.yaml", settings))
        done = subprocess.run(["docker-compose", "-f", str(COMPOSE / f"{role}.yaml"), "-p", project, "up", "-d"],
                              env={**_clean_env(), **settings}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr

    def logs(self) -> str:
        out = []
        for project, file, settings in self.up:
            done = subprocess.run(["docker-compose", "-f", str(file), "-p", project, "logs", "--tail", "20"],
                                  env={**_clean_env(), **settings}, capture_output=True, text=True, timeout=60)
            out.append(done.stdout[-3000:])
        return "\n".join(out)

    def down(self) -> None:
        """Every project down (volumes too), the host's sandboxes (compose leaves them: the next up
        adopts them) and network, and the proxy tier's firewall rules this test's host added."""
        for project, file, settings in reversed(self.up):
            subprocess.run(["docker-compose", "-f", str(file), "-p", project, "down", "-v"],
                           env={**_clean_env(), **settings}, capture_output=True, timeout=300)
        network = f"{self.instance}-sandboxes"
        end_docker_leftovers(self.instance, network)
        bridge = bridge_name(network)
        for rule in (["-s", "127.0.0.1/32", "-o", bridge, "-p", "tcp", "-m", "tcp", "--dport", "8888", "-j", "ACCEPT"],
                     ["-d", "127.0.0.1/32", "-i", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"]):
            subprocess.run(["iptables", "-w", "-D", PROXY_CHAIN, *rule], capture_output=True)

    def operator(self, *args: str) -> str:
        """``nbpool ARGS`` with the operator's folder alone (it names the bus and the instance)."""
        env = {**_clean_env(), "NBPOOL_NATS_CREDENTIALS": str(self.secrets / "operator")}
        done = subprocess.run([str(BIN / "nbpool"), *args], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("NBPOOL_")}


@pytest.fixture
def machines(tmp_path: Path, docker_image: str, services_image: str) -> Iterator[Machines]:
    made = Machines(tmp_path, {"services": services_image, "notebook": docker_image})
    try:
        yield made
    finally:
        made.down()


def _iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)


def test_a_cluster_from_the_compose_files_of_its_roles(machines: Machines) -> None:
    m = machines
    for name in m.nodes:
        m.compose(f"{m.instance}-{name}", "bus", m.folder(f"bus-{name}", SERVICES_UID), NBPOOL_BUS_NODE=name)
    m.compose(f"{m.instance}-proxy", "proxy", m.folder("proxy", SERVICES_UID),
              NBPOOL_PROXY_PORT=str(m.proxy_port), NBPOOL_PROXY_PING_PORT=str(m.proxy_port + 1),
              NBPOOL_GATEWAY_PORT=str(m.proxy_port + 2), NBPOOL_PUBLIC_URL=m.url, NBPOOL_METRICS_PORT=str(m.metrics))
    m.compose(f"{m.instance}-host", "host", m.folder("host", None), NBPOOL_SPAWNER_ID="composed", NBPOOL_POOL_SIZE="2",
              NBPOOL_MAX_SANDBOXES="6", NBPOOL_METRICS_PORT=str(m.metrics + 4), NBPOOL_PROXY_SOURCES='["127.0.0.1/32"]')

    def stats() -> dict[str, Any] | None:
        try:
            return httpx.get(f"{m.url}/api/stats", timeout=2).json()  # type: ignore[no-any-return]
        except (httpx.HTTPError, ValueError):
            return None

    poll_until(lambda: (s := stats()) is not None and s["available"] >= 2, 240,
               lambda: f"2 warm through the proxy's compose (stats {stats()})\n{m.logs()}", interval=1.0)
    resp = httpx.post(f"{m.url}/sessions", json={}, timeout=30)
    assert resp.status_code == 201, resp.text
    session = resp.json()
    base = session["url"].split("/lab")[0] + "/"
    assert asyncio.run(execute(base, session["token"], session["kernel_id"], "1+1")) == "2"

    # The spawner, in its container with NET_ADMIN only, made the host's firewall rules: sandboxes
    # open nothing to the host, and the proxy tier's addresses are let in to their port.
    bridge = bridge_name(f"{m.instance}-sandboxes")
    assert _iptables("-C", "INPUT", "-i", bridge, "-j", FIREWALL_CHAIN).returncode == 0
    assert f"-s 127.0.0.1/32 -o {bridge} -p tcp -m tcp --dport 8888 -j ACCEPT" in _iptables("-S", PROXY_CHAIN).stdout

    status = json.loads(m.operator("status", "--json"))
    assert {h["id"]: h["state"] for h in status["hosts"]} == {"composed": "live"}
    assert session["id"] in {r["id"] for r in status["sandboxes"] if r["state"] == "claimed"}
    assert httpx.delete(f"{m.url}/sessions/{session['id']}", headers={"Authorization": f"token {session['token']}"},
                        timeout=30).status_code == 204
