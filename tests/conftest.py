"""Fixtures: whole nbpool clusters on free loopback ports, stopped and checked for leftovers."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster import BIN, Cluster, NatsServer, free_ports
from waiting import poll_until

ROOT = Path(__file__).parent.parent


def stop_checked(cluster: Cluster) -> None:
    """Stop a cluster as a user would (Ctrl-C) and check it stopped cleanly, within its bus permissions."""
    code = cluster.stop()
    assert code == 0, f"nbpool up exited with {code}\n{cluster.logs()}"
    # Every service did its work within its NATS permissions (nbpool.busauth).
    refusals = cluster.bus_refusals()
    assert not refusals, "nats-server refused services:\n" + "\n".join(refusals[:20])
    # A clean stop leaves no Jupyter server, kernel or container behind.
    with contextlib.suppress(AssertionError):
        poll_until(lambda: not cluster.sandbox_processes(), 10, "no sandbox process left")
    left = cluster.end_leftovers()
    assert not left, f"left after stop: {left}\n{cluster.logs()}"


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """Start clusters with given settings; each is stopped (Ctrl-C) and checked at the end of the test."""
    made: list[Cluster] = []

    def make(
        settings: dict[str, str] | None = None,
        spawners: int = 1,
        gateways: int = 1,
        warm: int = 1,
        nats: NatsServer | None = None,
    ) -> Cluster:
        cluster = Cluster(tmp_path / f"nbpool{len(made)}", settings, spawners, gateways, nats)
        made.append(cluster)
        return cluster.start(warm=warm)

    yield make
    for cluster in made:
        stop_checked(cluster)


def _docker() -> Any:
    import docker

    return docker.from_env(timeout=30)


@pytest.fixture(scope="session")
def docker_image() -> str:
    """The notebook image, built if its inputs changed. Without an engine: fail under CI, else skip."""
    try:
        _docker().ping()
    except Exception as err:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Docker tests need a Docker engine and none answers ({err}); make test starts one as root")
        pytest.skip(f"no Docker engine answers ({err}); run `make engine` as root")
    built = subprocess.run([str(ROOT / "deploy" / "images" / "build.sh")], stdout=subprocess.PIPE, text=True, timeout=1800)
    assert built.returncode == 0, "the notebook image did not build"
    return built.stdout.strip().splitlines()[-1]


@pytest.fixture
def docker_cluster(make_cluster: Callable[..., Cluster], docker_image: str) -> Callable[..., Cluster]:
    """Start clusters whose sandboxes are containers, each nbpool instance with a name of its own."""

    def make(settings: dict[str, str] | None = None, **kw: Any) -> Cluster:
        env = {
            "NBPOOL_RUNTIME": "docker",
            "NBPOOL_DOCKER_IMAGE": docker_image,
            "NBPOOL_INSTANCE": f"t{uuid.uuid4().hex[:8]}",
            **(settings or {}),
        }
        return make_cluster(env, **kw)

    return make


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream on a free port, store in a temporary folder, users from
    ``nbpool bus-credentials`` (instance nbpool), as an operator would run one of their own."""
    port = free_ports(1)
    credentials = tmp_path / "nats-credentials"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBPOOL_")}
    subprocess.run([str(BIN / "nbpool"), "bus-credentials", str(credentials)], env=env, check=True, capture_output=True)
    proc = subprocess.Popen(
        [str(BIN / "nats-server"), "-c", str(credentials / "nats.conf"), "-js", "-a", "127.0.0.1", "-p", str(port),
         "-sd", str(tmp_path / "nats-store")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    poll_until(lambda: socket.create_connection(("127.0.0.1", port), timeout=0.2).close() or True, 10,
               "nats-server listening", interval=0.05, errors=(OSError,))
    yield NatsServer(f"nats://127.0.0.1:{port}", credentials)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def netns_ready() -> None:
    """Root and iproute2 for namespaces as machines (tests/netns.py), or a skip (a failure under CI)."""
    from netns import unavailable

    reason = unavailable()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the namespace tests cannot run: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster shared by a module's tests: pool of 3, default settings otherwise."""
    c = Cluster(tmp_path_factory.mktemp("nbpool"), {"NBPOOL_POOL_SIZE": "3", "NBPOOL_SPAWN_CONCURRENCY": "3"})
    c.start(warm=3)
    yield c
    stop_checked(c)


def pytest_configure(config: Any) -> None:
    # cluster.py and kernel.py sit beside the tests.
    import sys

    sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _collect_what_the_test_left() -> Iterator[None]:
    """Collects the garbage after each test, so that a socket or file it left unclosed in a
    reference cycle warns (ResourceWarning, an error here) in the teardown of the test that left
    it, not in whichever later test the collector happens to run."""
    yield
    gc.collect()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: Any, call: Any) -> Any:
    # Lets fixtures see whether the test itself failed (the browser fixture keeps a screenshot then).
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
