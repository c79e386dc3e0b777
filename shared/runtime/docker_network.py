"""The sandboxes' Docker network, and the host's firewall rule that keeps sandboxes off the host.

The network is a bridge with no traffic between its containers (``enable_icc`` false) and, unless
egress is allowed, no route beyond the host (``internal``). Its interface has a known name
(:func:`bridge_name`), so the host's rule can name it.

In a cluster the proxy tier, on other machines, reaches the sandboxes at their own addresses:
each host's network has a subnet of its own (``NBPOOL_DOCKER_SUBNET``), the proxy machines route
that subnet to the host, and :func:`admit_proxies` lets connections from the proxy tier's
addresses (``NBPOOL_PROXY_SOURCES``) in to the sandboxes' Jupyter port, and nothing else: an
``internal`` network otherwise drops all traffic from beyond the host, and sandboxes still
cannot open connections to anything (only replies go out). No published port, no docker-proxy:
an open kernel websocket costs the proxy tier two sockets, as on one machine.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Callable
from typing import Any

import docker
import docker.errors
import docker.types

from nbpool import logs

__all__ = ["FIREWALL_CHAIN", "PROXY_CHAIN", "admit_proxies", "bridge_name", "ensure_network", "protect_host"]

log = logs.get("nbpool.runtime.docker")

#: The host's iptables chain that drops what sandboxes open to the host (see protect_host).
FIREWALL_CHAIN = "NBPOOL-SANDBOX-IN"
#: The host's chain (jumped to from Docker's DOCKER-USER) that lets the proxy tier reach sandboxes.
PROXY_CHAIN = "NBPOOL-PROXY-IN"
_LABEL = "nbpool"


def bridge_name(network: str) -> str:
    """The host's interface for the sandboxes' network ``network``: a known name, for the firewall rule."""
    return "nbp-" + hashlib.sha1(network.encode()).hexdigest()[:10]


def ensure_network(client: docker.DockerClient, name: str, instance: str, egress: bool, subnet: str = "") -> Any:
    """The network ``name``, created if missing (on ``subnet`` if given); of twins (two spawners
    made it at once), the oldest."""
    found = [n for n in client.networks.list(names=[name]) if n.name == name]
    if not found:
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)]) if subnet else None
        client.networks.create(
            name,
            driver="bridge",
            internal=not egress,
            options={
                "com.docker.network.bridge.enable_icc": "false",
                # A known interface name, for the host's firewall rule.
                "com.docker.network.bridge.name": bridge_name(name),
            },
            labels={f"{_LABEL}.instance": instance},
            check_duplicate=True,
            ipam=ipam,
        )
        log.info("network created", extra={"network": name, "egress": egress})
        found = [n for n in client.networks.list(names=[name]) if n.name == name]
    # The engine does not stop twins: everyone settles on the oldest, and empty younger twins go.
    found.sort(key=lambda n: n.attrs.get("Created", ""))
    for twin in found[1:]:
        twin.reload()
        if not twin.attrs.get("Containers"):
            try:
                twin.remove()
            except docker.errors.APIError:
                pass
    chosen = found[0]
    if (chosen.attrs.get("Options") or {}).get("com.docker.network.bridge.enable_icc") != "false":
        log.warning("network lets sandboxes reach each other (enable_icc is not false)", extra={"network": name})
    have = [c.get("Subnet") for c in (chosen.attrs.get("IPAM") or {}).get("Config") or []]
    if subnet and subnet not in have:
        log.error("the sandbox network's subnet is not NBPOOL_DOCKER_SUBNET: the proxy tier may not reach it; "
                  "remove the network (docker network rm) once it is empty",
                  extra={"network": name, "subnet": have, "wanted": subnet})
    return chosen


def _bridge(network: Any) -> str:
    return (network.attrs.get("Options") or {}).get("com.docker.network.bridge.name") or f"br-{network.id[:12]}"


def _iptables() -> Callable[..., subprocess.CompletedProcess[str]]:
    binary = shutil.which("iptables") or "/usr/sbin/iptables"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([binary, "-w", *args], capture_output=True, text=True, timeout=30)

    return run


def admit_proxies(network: Any, sources: list[str], port: int) -> None:
    """Let connections from ``sources`` (the proxy tier's addresses, CIDR) in to the sandboxes' ``port``.

    Rules in a chain of nbpool's own, jumped to first from Docker's ``DOCKER-USER`` (which Docker
    evaluates before its own isolation rules): new connections from a source to the port, and
    the sandboxes' replies to them. The chain is rewritten each time, so it follows the setting.
    """
    bridge = _bridge(network)
    run = _iptables()
    try:
        if run("-L", "DOCKER-USER", "-n").returncode != 0:
            raise OSError("no DOCKER-USER chain: is this Docker's engine, with iptables on?")
        run("-N", PROXY_CHAIN)
        run("-F", PROXY_CHAIN)
        for source in sources:
            for rule in (["-s", source, "-o", bridge, "-p", "tcp", "--dport", str(port), "-j", "ACCEPT"],
                         ["-d", source, "-i", bridge, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]):
                done = run("-A", PROXY_CHAIN, *rule)
                if done.returncode != 0:
                    raise OSError(done.stderr.strip())
        if run("-C", "DOCKER-USER", "-j", PROXY_CHAIN).returncode != 0:
            done = run("-I", "DOCKER-USER", "1", "-j", PROXY_CHAIN)
            if done.returncode != 0:
                raise OSError(done.stderr.strip())
        log.info("proxy tier admitted to the sandboxes", extra={"bridge": bridge, "sources": sources, "port": port})
    except (OSError, subprocess.SubprocessError) as err:
        log.error("the proxy tier cannot reach the sandboxes: the firewall rule was not added",
                  extra={"bridge": bridge, "sources": sources, "error": str(err)})


def protect_host(network: Any) -> None:
    """Drop connections that sandboxes open to the host itself.

    Even on an ``internal`` network a container's default route is the bridge, which is the
    host: without this, sandboxes reach every host service listening beyond loopback. Replies
    to connections the host opened (the proxy's, the spawner's) still pass. Needs root (or
    CAP_NET_ADMIN) in the host's network namespace; without it, a loud error.
    """
    bridge = _bridge(network)
    run = _iptables()

    try:
        run("-N", FIREWALL_CHAIN)  # fails harmlessly when it exists
        established = ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
        if run("-C", FIREWALL_CHAIN, *established).returncode != 0:
            run("-I", FIREWALL_CHAIN, "1", *established)
        if run("-C", FIREWALL_CHAIN, "-j", "DROP").returncode != 0:
            run("-A", FIREWALL_CHAIN, "-j", "DROP")
        if run("-C", "INPUT", "-i", bridge, "-j", FIREWALL_CHAIN).returncode != 0:
            done = run("-I", "INPUT", "1", "-i", bridge, "-j", FIREWALL_CHAIN)
            if done.returncode != 0:
                raise OSError(done.stderr.strip())
        log.info("host protected from sandboxes", extra={"bridge": bridge})
    except (OSError, subprocess.SubprocessError) as err:
        log.error(
            "sandboxes can reach services listening on the host's own addresses: the firewall rule was not added",
            extra={"bridge": bridge, "error": str(err)},
        )
