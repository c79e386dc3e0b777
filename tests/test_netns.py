"""The multi-host harness (tests/netns.py): namespaces as machines, partitions, a Docker host in one.

The multi-host tests trust these to fail loudly rather than pass by luck: namespaces that did
not really talk over the bridge, a cut that cut nothing, a container reached some other way
than through the route. Without root these are skipped, and fail under CI (CI=true).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from netns import NamespaceDocker, Net, NetError
from waiting import poll_until

ROLES = ("bus1", "bus2", "bus3", "host1", "host2", "proxy")
PORT = 8000  # every namespace has ports of its own: the same one everywhere

# GETs each URL (argv[2:]) with a timeout (argv[1]); a JSON object of the bodies, null for a failure.
FETCH = """
import json, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
answers = {}
for url in sys.argv[2:]:
    try:
        answers[url] = opener.open(url, timeout=float(sys.argv[1])).read().decode()
    except OSError:
        answers[url] = None
print(json.dumps(answers))
"""


@pytest.fixture
def net(netns_ready: None) -> Iterator[Net]:
    """Six namespaces, as a multi-host test would have them; closing checks that nothing was left."""
    with Net(ROLES) as made:
        yield made


def _fetch(net: Net, name: str | None, urls: Sequence[str], timeout: float = 1.0) -> dict[str, str | None]:
    """GET each URL from namespace ``name`` (None: the root namespace, where the test runs)."""
    if name is None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        answers: dict[str, str | None] = {}
        for url in urls:
            try:
                answers[url] = opener.open(url, timeout=timeout).read().decode()
            except OSError:
                answers[url] = None
        return answers
    done = net.run(name, [sys.executable, "-c", FETCH, str(timeout), *urls], capture_output=True, text=True,
                   timeout=30 + timeout * len(urls))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _who(net: Net, name: str) -> str:
    return f"http://{net.address(name)}:{PORT}/who"


def _serve(net: Net, names: Sequence[str], folder: Path) -> list[subprocess.Popen[bytes]]:
    """An HTTP server in each namespace of ``names``, whose /who answers that namespace's role."""
    procs = []
    for name in names:
        (folder / name).mkdir()
        (folder / name / "who").write_text(name)
        procs.append(net.popen(name, [sys.executable, "-m", "http.server", "--bind", net.address(name),
                                      "--directory", str(folder / name), str(PORT)]))
    urls = [_who(net, name) for name in names]
    poll_until(lambda: all(_fetch(net, None, urls).values()), 30, f"HTTP servers in {', '.join(names)}")
    return procs


def test_every_namespace_reaches_every_other_over_tcp(net: Net, tmp_path: Path) -> None:
    """Each namespace's server answers every other namespace with its own role: the traffic
    crosses the bridge (and the root namespace's FORWARD chain), and lands where it was sent."""
    _serve(net, ROLES, tmp_path)
    addresses = {ipaddress.IPv4Address(net.address(name)) for name in ROLES}
    assert len(addresses) == len(ROLES) and all(address in net.subnet for address in addresses)
    for client in ROLES:
        others = [name for name in ROLES if name != client]
        answers = _fetch(net, client, [_who(net, name) for name in others])
        assert answers == {_who(net, name): name for name in others}, f"from {client}"


def test_cut_partitions_one_namespace_and_heal_ends_it(net: Net, tmp_path: Path) -> None:
    """A cut namespace is unreachable from everyone, the root namespace too, while the others
    still talk; healed, it is reachable again with its processes and routes as they were."""
    host1, _ = _serve(net, ["host1", "bus2"], tmp_path)
    spare = net.allocate()
    net.add_route("host1", spare, via="bus1")
    assert _fetch(net, "proxy", [_who(net, "host1")]) == {_who(net, "host1"): "host1"}

    net.cut("host1")
    assert _fetch(net, "proxy", [_who(net, "host1")]) == {_who(net, "host1"): None}
    assert _fetch(net, None, [_who(net, "host1")]) == {_who(net, "host1"): None}
    assert _fetch(net, "bus1", [_who(net, "bus2")]) == {_who(net, "bus2"): "bus2"}
    assert host1.poll() is None, "the cut ended the server in host1"

    net.heal("host1")
    poll_until(lambda: _fetch(net, "proxy", [_who(net, "host1")])[_who(net, "host1")] == "host1", 15,
               "host1 reachable from proxy after heal")
    route = net.run("host1", ["ip", "-4", "route", "show", str(spare)], capture_output=True, text=True).stdout
    assert f"via {net.address('bus1')}" in route, f"the route did not outlive the cut: {route!r}"


def test_close_removes_everything_and_names_what_was_left(netns_ready: None) -> None:
    """close() ends its own processes quietly, ends and names a process it did not start, and
    leaves no namespace, bridge or FORWARD rule; a second close() does nothing."""
    made = Net(["a", "b"])
    sleep = [sys.executable, "-c", "import time; time.sleep(120)"]
    try:
        own = made.popen("a", sleep)
        stray = subprocess.Popen(made.command("b", sleep), stdin=subprocess.DEVNULL)
        pids = ["ip", "netns", "pids", made.netns("b")]
        poll_until(lambda: subprocess.run(pids, capture_output=True, text=True).stdout.split(), 10, "a process inside b")
        with pytest.raises(NetError, match=f"process {stray.pid} .* left in b"):
            made.close()
    finally:
        made.close()
    assert own.poll() is not None
    assert stray.wait(10) != 0
    assert f"nbpool-{made.tag}-" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", made.bridge], capture_output=True).returncode != 0
    rule = ["iptables", "-w", "-C", "FORWARD", "-i", made.bridge, "-o", made.bridge, "-j", "ACCEPT"]
    assert subprocess.run(rule, capture_output=True).returncode != 0


# ---- a Docker host in a namespace --------------------------------------------------------------


@pytest.fixture(scope="module")
def host_net(netns_ready: None) -> Iterator[Net]:
    """A Docker host and a proxy on another machine."""
    with Net(("host1", "proxy")) as made:
        yield made


@pytest.fixture(scope="module")
def engine(host_net: Net, docker_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NamespaceDocker]:
    """An engine of its own in host1, with the notebook image copied in from the root engine, and
    a /24 for the networks made without a subnet (as nbpool's docker runtime makes its own)."""
    with NamespaceDocker(host_net, "host1", tmp_path_factory.mktemp("engine"), address_pool=host_net.allocate()) as made:
        made.load(docker_image)
        print(f"dockerd in a namespace answered in {made.start_seconds:.1f} s; "
              f"{docker_image} loaded in {made.load_seconds[docker_image]:.1f} s")
        yield made


def test_namespaced_engine_is_apart_from_the_root_engine(engine: NamespaceDocker, host_net: Net) -> None:
    """Its pid is dockerd's own (a signal reaches it), its state is its own, and its networks
    take their subnet from its pool and live in its namespace, not on the machine."""
    assert engine.proc is not None
    assert int((engine.run_dir / "docker.pid").read_text()) == engine.proc.pid
    assert engine.docker("info", "--format", "{{.DockerRootDir}}").stdout.strip() == str(engine.data_root)
    engine.docker("network", "create", f"apart{host_net.tag}")
    subnet = engine.docker("network", "inspect", "--format", "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
                           f"apart{host_net.tag}").stdout.strip()
    assert subnet == str(engine.address_pool)
    bridge = "br-" + engine.docker("network", "inspect", "--format", "{{.Id}}", f"apart{host_net.tag}").stdout[:12]
    assert host_net.run("host1", ["ip", "link", "show", bridge], capture_output=True).returncode == 0
    assert subprocess.run(["ip", "link", "show", bridge], capture_output=True).returncode != 0
    root_networks = subprocess.run(["docker", "network", "ls", "--format", "{{.Name}}"], capture_output=True,
                                   text=True, timeout=30).stdout.split()
    assert f"apart{host_net.tag}" not in root_networks


@pytest.mark.parametrize("internal", [False, True], ids=["open", "internal"])
def test_container_of_namespaced_engine_reachable_from_proxy(engine: NamespaceDocker, host_net: Net,
                                                             docker_image: str, internal: bool) -> None:
    """A Jupyter server in a container on host1 answers the proxy namespace once the proxy has a
    route through host1 and host1's firewall admits the Net (Docker drops it from outside an
    internal network until then)."""
    subnet = host_net.allocate()
    name = f"{'internal' if internal else 'open'}{host_net.tag}"
    engine.docker("network", "create", *(["--internal"] if internal else []), "--subnet", str(subnet), name)
    engine.docker("run", "--detach", "--name", name, "--network", name, "--env", "NBPOOL_TOKEN=netns-test", docker_image)
    address = engine.docker("inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                            name).stdout.strip()
    url = f"http://{address}:8888/api"
    # The Docker host reaches its own container: the server is up, whatever the proxy sees below.
    poll_until(lambda: _fetch(host_net, "host1", [url])[url], 60, lambda: f"Jupyter in {name}\n{engine.docker('logs', name).stderr}")

    assert _fetch(host_net, "proxy", [url]) == {url: None}, "reached without a route"
    host_net.add_route("proxy", subnet, via="host1")
    if internal:
        assert _fetch(host_net, "proxy", [url], timeout=2) == {url: None}, "Docker's isolation let the proxy in"
    engine.admit(subnet)
    answer = poll_until(lambda: _fetch(host_net, "proxy", [url], timeout=2)[url], 10, f"Jupyter in {name} from proxy")
    assert answer is not None and "version" in json.loads(answer)
