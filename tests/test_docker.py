"""The Docker runtime against a real engine: end to end, isolation, limits, faults, instances.

Without an engine these fail under CI (CI=true) and are skipped elsewhere (see ``docker_image``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
from typing import Any

import docker
import httpx
import psutil
import pytest
from cluster import Cluster, is_jupyter_server
from kernel import execute, start_kernel
from sockets import kernel_websocket_nodelay
from waiting import poll_until, poll_until_async

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = """
import json, socket
def reach(host, port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, port))
        return True
    except OSError:
        return False
    finally:
        s.close()
print(json.dumps({f"{h}:{p}": reach(h, p) for h, p in %r}))
"""


async def _run(cluster: Cluster, session: dict[str, Any], code: str, timeout: float = 30) -> str:
    async with httpx.AsyncClient(timeout=30) as client:
        kernel = await start_kernel(client, cluster.base(session), session["token"])
    return await execute(cluster.base(session), session["token"], kernel, code, timeout=timeout)


def _network(cluster: Cluster) -> Any:
    name = f"{cluster.env['NBPOOL_INSTANCE']}-sandboxes"
    return next(n for n in docker.from_env().networks.list(names=[name]) if n.name == name)


async def test_container_sandbox_end_to_end(docker_cluster: Any) -> None:
    cluster: Cluster = docker_cluster({"NBPOOL_POOL_SIZE": "2"}, warm=2)
    session = cluster.new_session()
    target = cluster.record(session["id"])["target"]
    # The proxy goes straight to the container's own address on nbpool's network: no published port.
    network = _network(cluster)
    network.reload()
    ips = {c["IPv4Address"].split("/")[0] for c in network.attrs["Containers"].values()}
    assert target.removeprefix("http://").split(":")[0] in ips
    (container,) = [c for c in cluster.containers() if c.labels["nbpool.sandbox"] == session["id"]]
    assert not container.attrs["HostConfig"]["PortBindings"]
    # It started at a low CPU priority and was given the normal one once ready.
    assert container.attrs["HostConfig"]["CpuShares"] == 1024
    events = docker.from_env().events(since=int(time.time()) - 120, until=int(time.time()) + 1, decode=True,
                                      filters={"type": "container", "event": "update", "container": container.id})
    assert [e["Action"] for e in events] == ["update"]
    assert await _run(cluster, session, "1+1") == "2"
    # Its kernel websockets are sent without Nagle's delay (see shared/sandbox_ws.py).
    init = psutil.Process(container.attrs["State"]["Pid"])
    (server,) = [p for p in [init, *init.children(recursive=True)] if is_jupyter_server(p)]
    assert await kernel_websocket_nodelay(server.pid, f"{target}{cluster.record(session['id'])['path']}", session) is True


async def test_sandbox_is_isolated(docker_cluster: Any) -> None:
    cluster: Cluster = docker_cluster({"NBPOOL_POOL_SIZE": "2"}, warm=2)
    me, other = cluster.new_session(), cluster.new_session()
    my_ip = cluster.record(me["id"])["target"].removeprefix("http://").split(":")[0]
    other_ip = cluster.record(other["id"])["target"].removeprefix("http://").split(":")[0]
    network = _network(cluster)
    gateway_ip = network.attrs["IPAM"]["Config"][0]["Gateway"]
    assert network.attrs["Internal"] is True  # no egress by default
    assert network.attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"

    # A host service listening on every address, as a careless operator might run one.
    listener = socket.create_server(("0.0.0.0", 0))
    exposed = listener.getsockname()[1]
    socket.create_connection((gateway_ip, exposed), timeout=2).close()  # the host itself can reach it

    control = [cluster.nats_port, cluster.ping_port, cluster.gateway_port, cluster.proxy_port, 2375, 2376, exposed]
    forbidden = [(host, port) for host in ("127.0.0.1", gateway_ip) for port in control]
    forbidden.append((other_ip, 8888))
    # Its own server answers: the probe itself can see an open port.
    reached = json.loads(await _run(cluster, me, PROBE % ([(my_ip, 8888), *forbidden],)))
    listener.close()
    assert reached.pop(f"{my_ip}:8888") is True
    assert not [where for where, ok in reached.items() if ok], reached

    who = json.loads(await _run(cluster, me, (
        "import json, os\n"
        "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines() if ':\\t' in l)\n"
        "print(json.dumps({'uid': os.getuid(), 'cap': status['CapEff'].strip(), 'nnp': status['NoNewPrivs'].strip(),"
        " 'socket': any(os.path.exists(p) for p in ('/var/run/docker.sock', '/run/docker.sock'))}))"
    )))
    assert who == {"uid": 1000, "cap": "0000000000000000", "nnp": "1", "socket": False}


async def test_memory_limit_kills_the_kernel_not_the_host(docker_cluster: Any) -> None:
    # The cgroup's limit is memory + disk (files on tmpfs are memory): a small disk keeps it near 256m.
    cluster: Cluster = docker_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_DOCKER_MEMORY": "256m", "NBPOOL_DOCKER_DISK": "32m"},
                                      warm=1)
    children = cluster.children()
    session = cluster.new_session()
    async with httpx.AsyncClient(timeout=30) as client:
        kernel = await start_kernel(client, cluster.base(session), session["token"])
    with pytest.raises((asyncio.TimeoutError, RuntimeError, ConnectionError, OSError)):
        await execute(cluster.base(session), session["token"], kernel, "x = b'x' * (1024 ** 3)", timeout=20)
    # The kernel died and Jupyter restarted it; the sandbox's server and nbpool are fine.
    result = await poll_until_async(lambda: execute(cluster.base(session), session["token"], kernel, "1+1", timeout=5),
                                    30, "the restarted kernel answers", interval=0.5, errors=(Exception,))
    assert result == "2"
    assert cluster.children() == children
    assert session["id"] in {e["sandbox_id"] for e in cluster.events() if e["type"] == "sandbox.oom"}


WRITE = """
import errno, json, os
def fill(path, mib):
    try:
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(b"x" * 1024 * 1024)
                f.flush()
        return "ok"
    except OSError as err:
        return errno.errorcode.get(err.errno, str(err.errno))
    finally:
        if os.path.exists(path):
            os.remove(path)
print(json.dumps({"home": fill(os.path.expanduser("~/big"), 200), "tmp": fill("/tmp/big", 200),
                  "root": fill("/opt/big", 1), "small": fill(os.path.expanduser("~/small"), 8),
                  "welcome": os.path.exists(os.path.expanduser("~/Welcome.ipynb"))}))
"""


async def test_disk_quota_and_log_cap(docker_cluster: Any) -> None:
    """Writes past NBPOOL_DOCKER_DISK fail inside the sandbox (ENOSPC); the root filesystem is
    read-only; the host's disk barely moves; a flood on the server's output is capped."""
    cluster: Cluster = docker_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_DOCKER_DISK": "64m"}, warm=1)
    session = cluster.new_session()
    free = shutil.disk_usage("/").free
    wrote = json.loads(await _run(cluster, session, WRITE, timeout=60))
    assert wrote == {"home": "ENOSPC", "tmp": "ENOSPC", "root": "EROFS", "small": "ok", "welcome": True}
    assert abs(shutil.disk_usage("/").free - free) < 32 * 1024**2
    # 20 MB on the output of the container's first process: Docker keeps at most its 1 MiB cap.
    flood = "f = open('/proc/1/fd/1', 'w')\nfor _ in range(20 * 1024): f.write('y' * 1023 + '\\n')\nf.close()\nprint('done')"
    assert (await _run(cluster, session, flood, timeout=60)).strip() == "done"
    (container,) = [c for c in cluster.containers() if c.labels["nbpool.sandbox"] == session["id"]]
    container.reload()
    logged = sum(os.path.getsize(p) for p in _log_files(container.attrs["LogPath"]))
    assert logged < 4 * 1024**2, logged
    # The sandbox and nbpool carry on.
    assert await _run(cluster, session, "1+1") == "2"
    assert cluster.new_session()["id"] != session["id"]


def _log_files(path: str) -> list[str]:
    folder, name = os.path.split(path)
    return [os.path.join(folder, f) for f in os.listdir(folder) if f.startswith(name)]


async def test_no_setuid_programs_in_the_image(docker_cluster: Any) -> None:
    cluster: Cluster = docker_cluster({"NBPOOL_POOL_SIZE": "1"}, warm=1)
    session = cluster.new_session()
    found = await _run(cluster, session, (
        "import os, stat\n"
        "hits = []\n"
        "for top in ('/usr', '/bin', '/sbin', '/opt', '/etc', '/var', '/lib'):\n"
        "    for d, _, fs in os.walk(top):\n"
        "        for f in fs:\n"
        "            p = os.path.join(d, f)\n"
        "            try:\n"
        "                m = os.lstat(p).st_mode\n"
        "            except OSError:\n"
        "                continue\n"
        "            if stat.S_ISREG(m) and m & (stat.S_ISUID | stat.S_ISGID):\n"
        "                hits.append(p)\n"
        "print(len(hits), hits[:5])"
    ), timeout=120)
    assert found.strip() == "0 []"


async def test_gvisor_profile_end_to_end_and_isolated(docker_cluster: Any) -> None:
    """A profile with "runtime": "runsc" runs its sandboxes under gVisor (make test registers it)."""
    runtimes = docker.from_env().info().get("Runtimes", {})
    assert "runsc" in runtimes, f"the engine has no runsc runtime ({sorted(runtimes)}); deploy/docker-engine.sh ensure registers it"
    profiles = {"default": {"pool_size": 0}, "gvisor": {"pool_size": 1, "runtime": "runsc", "description": "gVisor"}}
    cluster: Cluster = docker_cluster({"NBPOOL_PROFILES": json.dumps(profiles), "NBPOOL_DOCKER_DISK": "64m"}, warm=1)
    session = cluster.new_session(profile="gvisor")
    (container,) = [c for c in cluster.containers() if c.labels["nbpool.sandbox"] == session["id"]]
    assert container.attrs["HostConfig"]["Runtime"] == "runsc"
    assert await _run(cluster, session, "1+1") == "2"
    # gVisor's own kernel answers inside, not the host's.
    inside = await _run(cluster, session, "import platform; print(platform.release())")
    assert inside.strip() != os.uname().release
    my_ip = cluster.record(session["id"])["target"].removeprefix("http://").split(":")[0]
    gateway_ip = _network(cluster).attrs["IPAM"]["Config"][0]["Gateway"]
    control = [cluster.nats_port, cluster.ping_port, cluster.gateway_port, cluster.proxy_port, 2375, 2376]
    forbidden = [(host, port) for host in ("127.0.0.1", gateway_ip) for port in control]
    reached = json.loads(await _run(cluster, session, PROBE % ([(my_ip, 8888), *forbidden],)))
    assert reached.pop(f"{my_ip}:8888") is True
    assert not [where for where, ok in reached.items() if ok], reached
    # The same limits on what it writes (gVisor checks permissions before the read-only mount).
    wrote = json.loads(await _run(cluster, session, WRITE, timeout=120))
    assert wrote == {"home": "ENOSPC", "tmp": "ENOSPC", "root": "EACCES", "small": "ok", "welcome": True}
    assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True


async def test_spawner_kill9_adopts_claimed_and_removes_orphans(docker_cluster: Any, docker_image: str) -> None:
    cluster: Cluster = docker_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_SPAWNER_ID": "s1"}, warm=1)
    session = cluster.new_session()
    instance = cluster.env["NBPOOL_INSTANCE"]
    # A container of this spawner that no record knows of (as if it died between the two).
    orphan = docker.from_env().containers.run(
        docker_image, detach=True, auto_remove=True, network=_network(cluster).id, name=f"{instance}-s1-orphan0000",
        labels={"nbpool.instance": instance, "nbpool.spawner": "s1", "nbpool.sandbox": "orphan0000", "nbpool.profile": "default"},
    )
    cluster.kill9("spawner")
    poll_until(lambda: orphan.id not in {c.id for c in cluster.containers()}, 30, "the orphan container removed")
    assert await _run(cluster, session, "6*7") == "42"
    claimed = [c for c in cluster.containers() if c.labels["nbpool.sandbox"] == session["id"]]
    assert len(claimed) == 1


async def test_two_instances_leave_each_other_alone(docker_cluster: Any) -> None:
    first: Cluster = docker_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_SPAWNER_ID": "same"}, warm=1)
    second: Cluster = docker_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_SPAWNER_ID": "same"}, warm=1)
    session = first.new_session()
    first.wait_warm(1)
    mine = {c.id for c in first.containers()}
    assert len(mine) == 2 and not mine & {c.id for c in second.containers()}
    # The second instance restarts its spawner (reconcile) and stops: the first keeps everything.
    second.kill9("spawner")
    second.wait_warm(1)
    assert second.stop() == 0
    assert mine <= {c.id for c in first.containers()}
    assert await _run(first, session, "2**10") == "1024"


async def test_engine_down_then_back(docker_cluster: Any) -> None:
    if subprocess.run([os.path.join(ROOT, "deploy", "docker-engine.sh"), "stop"], capture_output=True).returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("under CI the engine must be the one deploy/docker-engine.sh started")
        pytest.skip("this engine was not started by deploy/docker-engine.sh, so the test will not stop it")
    subprocess.run([os.path.join(ROOT, "deploy", "docker-engine.sh"), "start"], check=True)
    cluster: Cluster = docker_cluster({"NBPOOL_POOL_SIZE": "2", "NBPOOL_HEARTBEAT_INTERVAL": "0.5"}, warm=2)
    children = cluster.children()
    stop = subprocess.run([os.path.join(ROOT, "deploy", "docker-engine.sh"), "stop"], capture_output=True, text=True)
    assert stop.returncode == 0, stop.stderr
    try:

        def refused() -> httpx.Response | None:
            resp = httpx.post(f"{cluster.url}/sessions")
            if resp.status_code == 201:  # a sandbox still warm from before: give it back
                session = resp.json()
                httpx.delete(f"{cluster.url}/sessions/{session['id']}", params={"token": session["token"]})
            return resp if resp.status_code == 503 else None

        resp = poll_until(refused, 30, "launches refused", interval=0.5)
        assert "Retry-After" in resp.headers
        assert "runtime unavailable" in resp.json()["detail"]
        assert httpx.get(f"{cluster.url}/api/stats").json()["healthy_spawners"] == 0
        assert cluster.children() == children  # nothing crashed
    finally:
        subprocess.run([os.path.join(ROOT, "deploy", "docker-engine.sh"), "start"], check=True)
    cluster.wait_warm(2, timeout=120)
    session = cluster.new_session()
    assert await _run(cluster, session, "1+1") == "2"
    assert cluster.children() == children


async def test_dead_containers_are_replaced_never_handed_out(docker_cluster: Any) -> None:
    cluster: Cluster = docker_cluster({"NBPOOL_POOL_SIZE": "2", "NBPOOL_HEARTBEAT_INTERVAL": "0.5"}, warm=2)
    dead = {c.labels["nbpool.sandbox"] for c in cluster.containers()}
    for container in cluster.containers():
        container.kill()
    await asyncio.sleep(0.5)  # the engine's "die" events take the pool's containers out at once
    # Launches now get a working server or wait for one; never a dead one.
    for _ in range(2):
        session = cluster.new_session()
        assert session["id"] not in dead
        assert await _run(cluster, session, "1+1") == "2"
    ended = {e["sandbox_id"] for e in cluster.events() if e["type"] == "sandbox.ended" and e["cause"] == "died"}
    assert dead <= ended


def test_compose_file_validates() -> None:
    if shutil.which("docker-compose") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("docker-compose is missing; make test installs it as root")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    checked = subprocess.run(["docker-compose", "config", "-q"], cwd=ROOT, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
