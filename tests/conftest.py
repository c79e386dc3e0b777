"""Fixtures: whole nbpool clusters on free loopback ports, stopped and checked for leftovers."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from cluster import BIN, Cluster, free_ports


def _teardown(cluster: Cluster) -> None:
    code = cluster.stop()
    assert code == 0, f"nbpool up exited with {code}\n{cluster.logs()}"
    # A clean stop leaves no Jupyter server or kernel behind.
    deadline = time.monotonic() + 10
    while cluster.sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = cluster.sandbox_processes()
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    assert not left, f"processes left after stop: {[p.pid for p in left]}\n{cluster.logs()}"


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Start clusters with given settings; each is stopped (Ctrl-C) and checked at the end of the test."""
    made: list[Cluster] = []

    def make(
        settings: dict[str, str] | None = None,
        spawners: int = 1,
        gateways: int = 1,
        warm: int = 1,
        nats_url: str | None = None,
    ) -> Cluster:
        cluster = Cluster(tmp_path / f"nbpool{len(made)}", settings, spawners, gateways, nats_url)
        made.append(cluster)
        return cluster.start(warm=warm)

    yield make
    for cluster in made:
        _teardown(cluster)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[str]:
    """A real nats-server with JetStream on a free port, with its store in a temporary folder; its URL."""
    port = free_ports(1)
    proc = subprocess.Popen(
        [str(BIN / "nats-server"), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(tmp_path / "nats-store")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"nats://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster shared by a module's tests: pool of 3, default settings otherwise."""
    c = Cluster(tmp_path_factory.mktemp("nbpool"), {"NBPOOL_POOL_SIZE": "3", "NBPOOL_SPAWN_CONCURRENCY": "3"})
    c.start(warm=3)
    yield c
    _teardown(c)


def pytest_configure(config: Any) -> None:
    # cluster.py and kernel.py sit beside the tests.
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
