"""Several machines on one: each "machine" of a multi-host test is a Linux network namespace.

:class:`Net` makes the namespaces and one private IPv4 /24 between them::

    root namespace (the test process)      bridge nbb<tag>, address .1
        ├── veth ── namespace nbpool-<tag>-bus1   eth0 .2
        ├── veth ── namespace nbpool-<tag>-host1  eth0 .3
        └── …

so every namespace reaches every other one, and the test reaches them all, over real TCP. A
namespace can be cut off from everyone and healed (a network partition), and given routes (to
the containers of a host, say). :class:`NamespaceDocker` runs a Docker engine of its own inside
one namespace: that namespace is then a Docker host whose containers the others reach through
routes, as a proxy on another machine would.

Everything is named with a random tag per :class:`Net`, so parallel runs never collide, and
everything made is removed by :meth:`Net.close` and :meth:`NamespaceDocker.stop`, which also
report what they had to end that nobody else did. Needs root (network and mount namespaces,
iptables) and iproute2; :func:`unavailable` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import psutil
from waiting import poll_until

__all__ = ["NamespaceDocker", "Net", "NetError", "unavailable"]

#: The interface of each namespace on the Net (the far end of its veth).
IFNAME = "eth0"
#: Where the /24s of Nets are chosen from: private, and clear of Docker's default pools (172.17/16…, 192.168/16).
_SPACE = ipaddress.IPv4Network("10.64.0.0/10")
_LOCK = Path(tempfile.gettempdir()) / "nbpool-netns.lock"
_NAME = re.compile(r"^[a-z][a-z0-9]{0,15}$")
_IP = shutil.which("ip") or "/usr/sbin/ip"
_IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"
_DOCKER = shutil.which("docker") or "/usr/bin/docker"
_DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"


class NetError(RuntimeError):
    """A namespace, link, route, firewall rule or engine could not be made or removed (the message says which)."""


def unavailable() -> str | None:
    """Why this machine cannot run the namespace tests, or None when it can."""
    if os.geteuid() != 0:
        return "network namespaces, bridges and iptables rules need root"
    for tool in (_IP, _IPTABLES):
        if not os.access(tool, os.X_OK):
            return f"{tool} is not installed (iproute2, iptables)"
    return None


def _run(argv: Sequence[str], timeout: float = 30.0, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    """A command in the root namespace; NetError with its stderr when it fails and ``check``."""
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and done.returncode != 0:
        raise NetError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return done


def _end(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` s; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine routes or has an address in, and the root Docker engine's networks."""
    found: list[ipaddress.IPv4Network] = []
    routes = json.loads(_run([_IP, "-j", "-4", "route", "show", "table", "all"]).stdout or "[]")
    for route in routes:
        if route.get("dst") not in (None, "default"):
            with contextlib.suppress(ValueError):
                found.append(ipaddress.IPv4Network(route["dst"], strict=False))
    for link in json.loads(_run([_IP, "-j", "-4", "addr"]).stdout or "[]"):
        for addr in link.get("addr_info", []):
            found.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    # A network the root engine knows but has no bridge up for yet still claims its subnet.
    if os.access(_DOCKER, os.X_OK):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            names = _run([_DOCKER, "network", "ls", "-q"], timeout=10, check=False).stdout.split()
            if names:
                out = _run([_DOCKER, "network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", *names],
                           timeout=10, check=False).stdout
                for subnet in out.split():
                    with contextlib.suppress(ValueError):
                        net = ipaddress.ip_network(subnet, strict=False)
                        if isinstance(net, ipaddress.IPv4Network):
                            found.append(net)
    return found


def _free_subnet(taken: Sequence[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A random /24 of :data:`_SPACE` that overlaps nothing in use here nor in ``taken``."""
    busy = [*_networks_in_use(), *taken]
    for _ in range(500):
        start = int(_SPACE.network_address) + 256 * secrets.randbelow(_SPACE.num_addresses // 256)
        subnet = ipaddress.IPv4Network((start, 24))
        if not any(subnet.overlaps(other) for other in busy):
            return subnet
    raise NetError(f"no free /24 in {_SPACE}: routes on this machine cover it (see `ip route show table all`)")


@contextlib.contextmanager
def _allocation_lock() -> Iterator[None]:
    """Held from choosing a Net's /24 until its bridge has an address, so parallel runs choose apart."""
    with open(_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Net:
    """Namespaces named by role (``bus1``, ``host1``, ``proxy``…) on one bridge and one private /24.

    The constructor makes everything or, failing half way, removes what it made and raises
    NetError. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(self, names: Sequence[str], tag: str | None = None) -> None:
        bad = [name for name in names if not _NAME.match(name)]
        if bad or len(set(names)) != len(names) or not names:
            raise ValueError(f"namespace roles must be distinct, lower-case letters and digits, 1-16 long: {list(names)}")
        if len(names) > 250:
            raise ValueError("one /24 holds at most 250 namespaces")
        self.tag = tag or secrets.token_hex(3)[:5]
        self.bridge = f"nbb{self.tag}"
        self.names: tuple[str, ...] = tuple(names)
        self.subnet = ipaddress.IPv4Network("0.0.0.0/32")
        #: The root namespace's address on the Net (on the bridge).
        self.gateway = ipaddress.IPv4Address("0.0.0.0")
        self._addresses: dict[str, ipaddress.IPv4Address] = {}
        self._made: list[str] = []  # namespaces made so far, by role
        self._bridge_made = False
        self._forward_rule: list[str] | None = None
        self._subnets: list[ipaddress.IPv4Network] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._closed = False
        try:
            self._make()
        except BaseException:
            with contextlib.suppress(NetError):
                self.close()
            raise

    # ---- making and removing ---------------------------------------------------------------

    def _make(self) -> None:
        with _allocation_lock():
            self.subnet = _free_subnet([])
            hosts = self.subnet.hosts()
            self.gateway = next(hosts)
            _run([_IP, "link", "add", self.bridge, "type", "bridge"])
            self._bridge_made = True
            _run([_IP, "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge])
        self._subnets.append(self.subnet)
        _run([_IP, "link", "set", self.bridge, "up"])
        for index, name in enumerate(self.names):
            netns, veth, address = self.netns(name), self._veth(index), next(hosts)
            _run([_IP, "netns", "add", netns])
            self._made.append(name)
            # The far end is born inside the namespace, so it never shows up in the root namespace.
            _run([_IP, "link", "add", veth, "type", "veth", "peer", "name", IFNAME, "netns", netns])
            _run([_IP, "link", "set", veth, "master", self.bridge, "up"])
            _run([_IP, "-n", netns, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", IFNAME])
            _run([_IP, "-n", netns, "link", "set", IFNAME, "up"])
            _run([_IP, "-n", netns, "link", "set", "lo", "up"])
            self._addresses[name] = address
        # Docker loads br_netfilter, which makes frames crossing a Linux bridge go through the root
        # namespace's iptables FORWARD chain (net.bridge.bridge-nf-call-iptables = 1), and sets that
        # chain's policy to DROP: namespace-to-namespace traffic over our bridge is dropped there
        # (the root namespace's own traffic to them is INPUT/OUTPUT, and passes). One ACCEPT for
        # frames that stay on our bridge, first in FORWARD, removed by close(). The per-bridge
        # switch (ip link set … type bridge nf_call_iptables 0) does not help: the kernel ORs it
        # with the global sysctl, and that one belongs to Docker.
        rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        _run([_IPTABLES, "-w", "-I", rule[0], "1", *rule[1:]])
        self._forward_rule = rule

    def close(self) -> None:
        """Remove everything this Net made; idempotent.

        Ends the processes started with :meth:`popen` (SIGTERM, then SIGKILL), then any other
        process still inside a namespace, then the namespaces, the bridge and the FORWARD rule. Every
        step is tried; NetError at the end names the processes nobody else had ended (stop a
        :class:`NamespaceDocker` before closing its Net) and the steps that failed.
        """
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        for proc in self._procs:
            _end(proc)
        for name in self._made:
            for pid in self._pids_in(name):
                with contextlib.suppress(psutil.Error):
                    problem = f"process {pid} ({' '.join(psutil.Process(pid).cmdline())[:120]}) left in {name}"
                    psutil.Process(pid).kill()
                    problems.append(problem)
        for name in self._made:
            # A namespace with processes in it outlives `ip netns del` (and keeps its veth), so
            # the deletion is only final once they are gone.
            with contextlib.suppress(AssertionError):
                poll_until(partial(self._emptied, name), 10, f"processes in {name} ended", interval=0.1)
            done = _run([_IP, "netns", "del", self.netns(name)], check=False)
            if done.returncode != 0:
                problems.append(f"ip netns del {self.netns(name)}: {done.stderr.strip()}")
        if self._bridge_made:
            done = _run([_IP, "link", "del", self.bridge], check=False)
            if done.returncode != 0:
                problems.append(f"ip link del {self.bridge}: {done.stderr.strip()}")
        if self._forward_rule:
            done = _run([_IPTABLES, "-w", "-D", *self._forward_rule], check=False)
            if done.returncode != 0:
                problems.append(f"iptables -D {' '.join(self._forward_rule)}: {done.stderr.strip()}")
        if problems:
            raise NetError("closing the Net: " + "; ".join(problems))

    def __enter__(self) -> Net:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # ---- looking up --------------------------------------------------------------------------

    def netns(self, name: str) -> str:
        """The namespace's name for ``ip netns`` (``nbpool-<tag>-<role>``)."""
        if name not in self.names:
            raise KeyError(f"no namespace {name!r} on this Net (there are {', '.join(self.names)})")
        return f"nbpool-{self.tag}-{name}"

    def address(self, name: str) -> str:
        """The namespace's IPv4 address on the Net."""
        self.netns(name)
        return str(self._addresses[name])

    def allocate(self) -> ipaddress.IPv4Network:
        """Another /24, free on this machine and not yet handed out by this Net (for a Docker network, say)."""
        subnet = _free_subnet(self._subnets)
        self._subnets.append(subnet)
        return subnet

    def _veth(self, index: int) -> str:
        return f"nbv{self.tag}{index}"  # at most 3 + 5 + 3 characters; Linux allows 15

    def _pids_in(self, name: str) -> list[int]:
        done = _run([_IP, "netns", "pids", self.netns(name)], check=False)
        return [int(pid) for pid in done.stdout.split()] if done.returncode == 0 else []

    def _emptied(self, name: str) -> bool:
        return not self._pids_in(name)

    # ---- running things inside ---------------------------------------------------------------

    def command(self, name: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace: ``ip netns exec <ns> …``, which execs it (same pid).

        ``ip netns exec`` also gives the command a mount namespace of its own, with /sys
        remounted for the network namespace (see :class:`NamespaceDocker` for what that hides).
        """
        return [_IP, "netns", "exec", self.netns(name), *argv]

    def run(self, name: str, argv: Sequence[str], timeout: float = 60.0, **kw: Any) -> subprocess.CompletedProcess[Any]:
        """:func:`subprocess.run` of ``argv`` inside the namespace (bounded by ``timeout``)."""
        return subprocess.run(self.command(name, argv), timeout=timeout, **kw)

    def popen(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None,
              stdout: int | IO[Any] | None = subprocess.DEVNULL, stderr: int | IO[Any] | None = subprocess.STDOUT,
              **kw: Any) -> subprocess.Popen[Any]:
        """A process started inside the namespace; its pid is the command's own, for signals.

        The Net ends it in :meth:`close` if it still runs then.
        """
        proc = subprocess.Popen(self.command(name, argv), env=None if env is None else dict(env),
                                stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, **kw)
        self._procs.append(proc)
        return proc

    # ---- shaping the network -----------------------------------------------------------------

    def cut(self, name: str) -> None:
        """Cut the namespace off from everyone (the root namespace too), as a pulled cable would.

        The root end of its veth goes down, so its eth0 loses carrier: packets are lost, nothing
        is refused. A connection attempt times out while the peer's address is still in the
        neighbour cache, and fails with "No route to host" after about 3 s once it is not (ARP
        goes unanswered), both ways. Its addresses and routes stay, unlike taking eth0 itself
        down, which would delete its routes.
        """
        self.netns(name)
        _run([_IP, "link", "set", self._veth(self.names.index(name)), "down"])

    def heal(self, name: str) -> None:
        """Undo :meth:`cut`: the namespace is reachable again (the bridge forwards at once: no STP)."""
        self.netns(name)
        _run([_IP, "link", "set", self._veth(self.names.index(name)), "up"])

    def add_route(self, name: str, cidr: str | ipaddress.IPv4Network, via: str) -> None:
        """In namespace ``name``, route ``cidr`` through namespace ``via``'s address on the Net."""
        _run([_IP, "-n", self.netns(name), "route", "add", str(cidr), "via", self.address(via)])


def _cgroup_remounts() -> list[str]:
    """Shell commands that mount this machine's cgroup hierarchies again under /sys/fs/cgroup.

    Each ``mount -t cgroup -o <controllers>`` of a hierarchy that exists attaches to that same
    hierarchy, so the engine inside sees (and writes) the cgroups the machine's init set up.
    """
    commands = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mine, _, theirs = line.partition(" - ")
        point = mine.split()[4]
        kind, source, options = theirs.split()[:3]
        if not (point == "/sys/fs/cgroup" or point.startswith("/sys/fs/cgroup/")):
            continue
        if kind not in ("tmpfs", "cgroup", "cgroup2"):
            raise NetError(f"unexpected {kind} mount at {point}: cannot mount cgroups for a namespaced dockerd")
        # rw/ro are mount flags; release_agent may not be given again.
        kept = ",".join(o for o in options.split(",") if o not in ("rw", "ro") and not o.startswith("release_agent="))
        commands.append(f"mkdir -p {shlex.quote(point)} && mount -t {kind} {'-o ' + shlex.quote(kept) if kept else ''} "
                        f"{shlex.quote(source)} {shlex.quote(point)}")
    if not commands:
        raise NetError("no cgroup file system under /sys/fs/cgroup: a dockerd could not run containers")
    return commands


class NamespaceDocker:
    """A Docker engine of its own inside namespace ``name`` of ``net``: a Docker host there.

    Its state lives under ``root`` (``data``: images and containers, on a tmpfs of
    ``tmpfs_size`` unless that is None; the log ``dockerd.log``, kept for reading after a
    failure) and under ``/run/nbd-<tag>-<name>`` (its ``--exec-root``, socket and pidfile:
    short, because unix socket paths are limited to 107 bytes). Clients in any namespace reach
    it at :attr:`host` (a unix socket is a file, not a network address).

    What gets in the way, and how it is handled:

    * ``ip netns exec`` gives dockerd a mount namespace where /sys is a fresh sysfs (so /sys/class/net
      shows the namespace's links), which hides /sys/fs/cgroup: dockerd exits with "Devices cgroup
      isn't mounted". The launcher mounts the machine's cgroup hierarchies again first
      (:func:`_cgroup_remounts`). Its container mounts stay in that mount namespace, and go
      with it.
    * Its own ``--config-file`` (empty): /etc/docker/daemon.json belongs to the root engine
      (runtimes, pools, hosts), and a ``hosts`` there would clash with ``-H``.
    * Its own ``--data-root``, ``--exec-root`` (with its containerd, which dockerd starts
      there), ``--pidfile`` and socket: the defaults are the root engine's. Its own
      ``--containerd-namespace`` too: if a system containerd listened on
      /run/containerd/containerd.sock, dockerd 20.10 would use that one, and an engine removes
      on start the containers of its namespace it does not know.
    * ``--bridge=none``: no docker0; networks are made on purpose, and from ``address_pool`` when
      given (``--default-address-pool``), so their subnet is known to route to.
    * The data root on a tmpfs: removing an engine's copy of the notebook image from disk took
      6-8 s here (many small files), unmounting the tmpfs 0.3 s, and loading into it is no slower.
    * iptables on: inside the namespace, iptables is the namespace's own, so Docker's chains
      there touch nothing of the machine's. Userland proxy off: nothing is published.
    """

    def __init__(self, net: Net, name: str, root: Path, address_pool: ipaddress.IPv4Network | None = None,
                 tmpfs_size: str | None = "4g") -> None:
        net.netns(name)
        self.net, self.name, self.root = net, name, root
        self.address_pool, self.tmpfs_size = address_pool, tmpfs_size
        self._tmpfs = False
        self.run_dir = Path(f"/run/nbd-{net.tag}-{name}")
        self.data_root = root / "data"
        self.log_path = root / "dockerd.log"
        self.socket = self.run_dir / "docker.sock"
        #: The value of DOCKER_HOST for clients of this engine.
        self.host = f"unix://{self.socket}"
        self.proc: subprocess.Popen[Any] | None = None
        #: Seconds from launch until the engine answered.
        self.start_seconds: float | None = None
        #: Seconds each :meth:`load` took, by image.
        self.load_seconds: dict[str, float] = {}

    @property
    def env(self) -> dict[str, str]:
        """This process's environment with DOCKER_HOST set to this engine (for the docker CLI or docker-py)."""
        return {**os.environ, "DOCKER_HOST": self.host}

    def start(self, timeout: float = 60.0) -> NamespaceDocker:
        """Launch dockerd in the namespace and wait until it answers; NetError with its log if it
        does not (after removing what was made for it)."""
        if self.proc is not None:
            raise NetError(f"the engine in {self.name} was started already")
        started = time.monotonic()
        try:
            self.proc = self._launch()
            poll_until(self._answers, timeout, lambda: f"dockerd in {self.name} answering\n{self.log_tail()}",
                       interval=0.2)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def _launch(self) -> subprocess.Popen[Any]:
        self.root.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True)
        (self.root / "daemon.json").write_text("{}\n")
        self.data_root.mkdir()
        if self.tmpfs_size is not None:
            # Mounted before dockerd's mount namespace is made, which therefore has it too.
            _run(["mount", "-t", "tmpfs", "-o", f"size={self.tmpfs_size},mode=0711", f"nbpool-{self.net.tag}-{self.name}",
                  str(self.data_root)])
            self._tmpfs = True
        args = [
            _DOCKERD,
            f"--config-file={self.root / 'daemon.json'}",
            f"--data-root={self.data_root}",
            f"--exec-root={self.run_dir / 'exec'}",
            f"--pidfile={self.run_dir / 'docker.pid'}",
            f"--host={self.host}",
            f"--containerd-namespace=nbpool-{self.net.tag}-{self.name}",
            f"--containerd-plugins-namespace=nbpool-{self.net.tag}-{self.name}-plugins",
            "--bridge=none",
            "--iptables=true",
            "--ip-forward=true",
            "--userland-proxy=false",
            # Containers are removed before a stop; what is left is not waited for long.
            "--shutdown-timeout=5",
        ]
        if self.address_pool is not None:
            args.append(f"--default-address-pool=base={self.address_pool},size={self.address_pool.prefixlen}")
        script = " && ".join([*_cgroup_remounts(), 'exec "$@"'])
        with open(self.log_path, "ab") as log:
            return self.net.popen(self.name, ["sh", "-c", script, "dockerd", *args], stdout=log)

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise NetError(f"dockerd in {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
        return self.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=10).returncode == 0

    def docker(self, *args: str, timeout: float = 120.0, check: bool = True,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """The docker CLI against this engine (run in the root namespace; the socket is a file)."""
        argv = [_DOCKER, f"--host={self.host}", *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, input=input, check=False)
        if check and done.returncode != 0:
            raise NetError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        return done

    def load(self, image: str, timeout: float = 600.0) -> float:
        """Copy ``image`` from the root engine (``docker save | docker load``); the seconds it took."""
        started = time.monotonic()
        save = subprocess.Popen([_DOCKER, "save", image], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert save.stdout is not None
        load = subprocess.Popen([_DOCKER, f"--host={self.host}", "load", "--quiet"], stdin=save.stdout,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        save.stdout.close()  # load holds the pipe; save sees EPIPE if load dies
        try:
            _, load_err = load.communicate(timeout=timeout)
            _, save_err = save.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            for proc in (save, load):
                proc.kill()
                proc.wait()
            raise NetError(f"loading {image} into the engine in {self.name} took over {timeout} s") from None
        if save.returncode or load.returncode:
            raise NetError(f"loading {image} into the engine in {self.name} failed: save {save.returncode} "
                           f"({save_err.decode(errors='replace').strip()}), load {load.returncode} "
                           f"({load_err.decode(errors='replace').strip()})")
        seconds = time.monotonic() - started
        self.load_seconds[image] = seconds
        return seconds

    def admit(self, subnet: str | ipaddress.IPv4Network) -> None:
        """Let the Net reach the engine's containers on ``subnet``, in the engine's namespace's firewall.

        Docker drops traffic from outside into an ``internal`` network (DOCKER-ISOLATION-STAGE-1:
        ``! -s <subnet> -o <bridge> -j DROP``, and the replies by ``! -d <subnet> -i <bridge>``),
        and into any network when its FORWARD policy is DROP (it sets that when it is the one
        turning ip_forward on). DOCKER-USER comes first in FORWARD, so two rules there: in from
        the Net to the subnet, and back out to the Net for those connections only (conntrack),
        so containers still open nothing towards the Net. No NAT: the containers see the
        client's own address. The rules go with the namespace.
        """
        rules = [
            ["-i", IFNAME, "-d", str(subnet), "-j", "ACCEPT"],
            ["-o", IFNAME, "-s", str(subnet), "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
        ]
        for rule in rules:
            done = self.net.run(self.name, [_IPTABLES, "-w", "-I", "DOCKER-USER", "1", *rule],
                                capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                raise NetError(f"iptables -I DOCKER-USER {' '.join(rule)} in {self.name}: {done.stderr.strip()}")

    def stop(self, timeout: float = 30.0) -> list[str]:
        """Remove every container, stop dockerd (SIGTERM by pid, SIGKILL after ``timeout`` s), remove
        its data and exec roots; idempotent. What had to be ended that dockerd did not end itself."""
        left: list[str] = []
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "--all", "--quiet", check=False, timeout=30).stdout.split()
            if ids:
                self.docker("rm", "--force", "--volumes", *ids, check=False, timeout=120)
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                left.append(f"dockerd {self.proc.pid} (did not stop within {timeout} s)")
                self.proc.kill()
                self.proc.wait(10)
        # Its containerd and shims name the exec root on their command lines.
        marker = f"{self.run_dir}/"
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(marker in part for part in proc.info["cmdline"] or []):
                    left.append(f"process {proc.pid} ({' '.join(proc.info['cmdline'])[:120]})")
                    proc.kill()
        if self._tmpfs:
            done = _run(["umount", str(self.data_root)], check=False)
            if done.returncode != 0:
                left.append(f"the tmpfs on {self.data_root} ({done.stderr.strip()})")
            self._tmpfs = False
        # Container mounts live in dockerd's own mount namespace and went with it; anything that
        # leaked into this one would make the removal fail, so it is detached first.
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if f"{point}/".startswith((f"{self.data_root}/", marker)):
                left.append(f"mount {point}")
                subprocess.run(["umount", "--lazy", point], capture_output=True, timeout=30, check=False)
        shutil.rmtree(self.data_root, ignore_errors=True)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        for path in (self.data_root, self.run_dir):
            if path.exists():
                left.append(f"{path} could not be removed")
        return left

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of dockerd's log, without its gRPC chatter (which buries the reason it stopped)."""
        if not self.log_path.exists():
            return "(no log)"
        kept = [line for line in self.log_path.read_text(errors="replace").splitlines() if "module=grpc" not in line]
        return "\n".join(kept[-lines:])

    def __enter__(self) -> NamespaceDocker:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        left = self.stop()
        if left and kind is None:
            raise NetError(f"the engine in {self.name} left: {left}")


if __name__ == "__main__":  # pragma: no cover - a manual look: python tests/netns.py
    with Net(sys.argv[1:] or ["a", "b"]) as net:
        print(net.subnet, {name: net.address(name) for name in net.names})
