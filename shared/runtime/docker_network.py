"""The sandboxes' Docker network, and the host's firewall rule that keeps sandboxes off the host.

The network is a bridge with no traffic between its containers (``enable_icc`` false) and, unless
egress is allowed, no route beyond the host (``internal``). Its interface has a known name
(:func:`bridge_name`), so the host's rule can name it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from typing import Any

import docker
import docker.errors

from nbpool import logs

__all__ = ["FIREWALL_CHAIN", "bridge_name", "ensure_network", "protect_host"]

log = logs.get("nbpool.runtime.docker")

#: The host's iptables chain that drops what sandboxes open to the host (see protect_host).
FIREWALL_CHAIN = "NBPOOL-SANDBOX-IN"
_LABEL = "nbpool"


def bridge_name(network: str) -> str:
    """The host's interface for the sandboxes' network ``network``: a known name, for the firewall rule."""
    return "nbp-" + hashlib.sha1(network.encode()).hexdigest()[:10]


def ensure_network(client: docker.DockerClient, name: str, instance: str, egress: bool) -> Any:
    """The network ``name``, created if missing; of twins (two spawners made it at once), the oldest."""
    found = [n for n in client.networks.list(names=[name]) if n.name == name]
    if not found:
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
    return chosen


def protect_host(network: Any) -> None:
    """Drop connections that sandboxes open to the host itself.

    Even on an ``internal`` network a container's default route is the bridge, which is the
    host: without this, sandboxes reach every host service listening beyond loopback. Replies
    to connections the host opened (the proxy's, the spawner's) still pass. Needs root (or
    CAP_NET_ADMIN) in the host's network namespace; without it, a loud error.
    """
    bridge = (network.attrs.get("Options") or {}).get("com.docker.network.bridge.name") or f"br-{network.id[:12]}"
    iptables = shutil.which("iptables") or "/usr/sbin/iptables"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([iptables, "-w", *args], capture_output=True, text=True, timeout=30)

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
