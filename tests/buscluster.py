"""A real NATS JetStream cluster for tests, made the way the README says: ``nbpool cluster init``,
then ``nbpool up --role bus`` once per node (here all on loopback, each node on ports of its own).

A node can be killed (its nats-server gets SIGKILL while its supervisor is paused, so nothing
restarts it) and revived (the supervisor goes on, sees its child dead and restarts it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

from cluster import BIN, free_ports
from waiting import poll_until

from nbpool.busauth import OPERATOR, Credentials, load

__all__ = ["BusCluster"]

#: Which folder of ``cluster init`` holds each role's password.
FOLDER_OF = {"spawner": "host", "gateway": "proxy", "router": "proxy", "culler": "proxy", OPERATOR: "operator"}


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
        codes = []
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.send_signal(signal.SIGINT)
        for proc in self.procs.values():
            try:
                codes.append(proc.wait(timeout=30))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes.append(proc.wait())
        return codes
