"""The process runtime: one ``jupyter server`` process per sandbox on a free loopback port.

For development and machines without Docker. **Not an isolation boundary**: a sandbox's code runs
as the spawner's user, can read its files and reach every local port. Use the docker runtime for
anyone you do not trust.

Each sandbox has a folder ``<state_dir>/sandboxes/<instance>/<spawner>/servers/<id>/`` holding
its working folder (``home/``, with ``Welcome.ipynb``), its server log and ``sandbox.json``,
which lets a restarted spawner find the processes it started before. ``.../<spawner>/config/``
is the Jupyter configuration all its sandboxes share (JupyterLab's news pop-up is off: a
temporary server has no use for it, and it would reach out to the internet).
"""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import psutil

from nbpool import logs
from nbpool.runtime.base import RuntimeSandbox, SandboxSpec, SpawnFailed

__all__ = ["ProcessRuntime"]

log = logs.get("nbpool.runtime.process")

_META = "sandbox.json"
#: The servers' config file (in their JUPYTER_CONFIG_DIR), and the NBPOOL_ variables they get.
_SERVER_CONFIG = "jupyter_server_config.py"
_PASSED = ("NBPOOL_SANDBOX_ID", "NBPOOL_EMBED_ORIGINS")


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def _url(address: str, port: int) -> str:
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


class ProcessRuntime:
    """Sandboxes as local ``jupyter server`` processes (see the module docstring)."""

    name = "process"

    def __init__(self, state_dir: Path, instance: str, spawner_id: str, command: str, address: str = "127.0.0.1") -> None:
        base = state_dir / "sandboxes" / instance / spawner_id
        #: Where the servers listen: loopback on one machine; in a cluster, an address of this
        #: host that the proxy tier reaches (NBPOOL_PROCESS_ADDRESS).
        self.address = address
        self._root = base / "servers"
        self._config = base / "config"
        self._command = shlex.split(command)
        # Popen objects of the servers this process started, so they are reaped when removed.
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def _dir(self, sandbox_id: str) -> Path:
        return self._root / sandbox_id

    async def create(self, spec: SandboxSpec) -> RuntimeSandbox:
        return await asyncio.to_thread(self._create, spec)

    def _write_config(self) -> None:
        labconfig = self._config / "labconfig"
        labconfig.mkdir(parents=True, exist_ok=True)
        page = {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}
        (labconfig / "page_config.json").write_text(json.dumps(page))
        # Who may use the server from other pages (NBPOOL_EMBED_ORIGINS), as in the image.
        (self._config / _SERVER_CONFIG).write_text(
            "from nbpool.sandbox_config import configure\n\nconfigure(c)  # noqa: F821 - Jupyter's config object\n")

    def _create(self, spec: SandboxSpec) -> RuntimeSandbox:
        if spec.runtime:
            raise SpawnFailed(f"profile {spec.profile!r} asks for the container runtime {spec.runtime!r}; "
                              "the process runtime has none (use NBPOOL_RUNTIME=docker)")
        if not (self._config / _SERVER_CONFIG).exists():
            self._write_config()
        folder = self._dir(spec.id)
        home = folder / "home"
        home.mkdir(parents=True, exist_ok=False)
        welcome = resources.files("nbpool").joinpath("assets/Welcome.ipynb").read_bytes()
        (home / "Welcome.ipynb").write_bytes(welcome)
        port = _free_port(self.address)
        env = {
            **os.environ,
            "HOME": str(home),
            "JUPYTER_TOKEN": spec.token,  # not on the command line, where `ps` would show it
            "JUPYTER_RUNTIME_DIR": str(folder / "runtime"),
            "JUPYTER_CONFIG_DIR": str(self._config),
            "IPYTHONDIR": str(folder / "ipython"),
            "NBPOOL_SANDBOX_ID": spec.id,
            "NBPOOL_EMBED_ORIGINS": spec.embed_origins,
        }
        env = {k: v for k, v in env.items() if not k.startswith("NBPOOL_") or k in _PASSED}
        args = [
            *self._command,
            "--no-browser",
            f"--ServerApp.ip={self.address}",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.base_url={spec.base_path}",
            f"--ServerApp.root_dir={home}",
            # Under `jupyter server` "/" has no page of its own: the profile's UI, as in the image.
            f"--ServerApp.default_url={spec.default_url}",
            # Behind the proxy the Host header is the public one.
            "--ServerApp.allow_remote_access=True",
            "--ServerApp.trust_xheaders=True",
            # Sandboxes make no calls to the internet of their own.
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
        ]
        if self._command[0] == sys.executable:
            # Kernel websockets with TCP_NODELAY: without it each execute waits up to 40 ms for
            # ACKs. Only a Jupyter in nbpool's own environment can import the class.
            args.append("--ServerApp.kernel_websocket_connection_class=nbpool.sandbox_ws.NoDelayKernelConnection")
        if os.geteuid() == 0:
            args.append("--allow-root")
        logfile = open(folder / "server.log", "ab")
        try:
            proc = subprocess.Popen(
                args,
                cwd=home,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: removed as a whole
            )
        except OSError as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise SpawnFailed(f"cannot start {args[0]!r}: {err}") from err
        finally:
            logfile.close()
        self._children[spec.id] = proc
        created = time.time()
        meta = {
            "id": spec.id,
            "pid": proc.pid,
            "pid_started": psutil.Process(proc.pid).create_time(),
            "port": port,
            "address": self.address,
            "profile": spec.profile,
            "created_at": created,
        }
        (folder / _META).write_text(json.dumps(meta))
        return self._sandbox(meta)

    def _sandbox(self, meta: dict[str, Any]) -> RuntimeSandbox:
        return RuntimeSandbox(
            id=meta["id"],
            target=_url(meta.get("address", "127.0.0.1"), meta["port"]),
            profile=meta["profile"],
            alive=self._alive(meta),
        )

    def _alive(self, meta: dict[str, Any]) -> bool:
        child = self._children.get(meta["id"])
        if child is not None and child.poll() is not None:
            return False
        try:
            proc = psutil.Process(meta["pid"])
            # The same pid could belong to another process by now.
            started: float = meta["pid_started"]
            return abs(proc.create_time() - started) < 1 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _read(self, sandbox_id: str) -> dict[str, Any] | None:
        try:
            meta: dict[str, Any] = json.loads((self._dir(sandbox_id) / _META).read_text())
            return meta
        except (OSError, ValueError):
            return None

    async def list(self) -> list[RuntimeSandbox]:
        return await asyncio.to_thread(self._list)

    def _list(self) -> builtins.list[RuntimeSandbox]:
        found: builtins.list[RuntimeSandbox] = []
        if not self._root.is_dir():
            return found
        for folder in sorted(self._root.iterdir()):
            meta = self._read(folder.name)
            if meta is None:
                # A folder without metadata is a create that died half-way: nothing runs there.
                found.append(RuntimeSandbox(folder.name, "", "", False))
            else:
                found.append(self._sandbox(meta))
        return found

    async def inspect(self, sandbox_id: str) -> RuntimeSandbox | None:
        meta = await asyncio.to_thread(self._read, sandbox_id)
        return None if meta is None else self._sandbox(meta)

    async def remove(self, sandbox_id: str) -> None:
        await asyncio.to_thread(self._remove, sandbox_id)

    def _remove(self, sandbox_id: str) -> None:
        meta = self._read(sandbox_id)
        if meta is not None and self._alive(meta):
            _stop_tree(meta["pid"])
        child = self._children.pop(sandbox_id, None)
        if child is not None:
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        shutil.rmtree(self._dir(sandbox_id), ignore_errors=True)

    async def logs(self, sandbox_id: str, lines: int = 20) -> str:
        def tail() -> str:
            try:
                text = (self._dir(sandbox_id) / "server.log").read_text(errors="replace")
            except OSError:
                return ""
            return "\n".join(text.splitlines()[-lines:])

        return await asyncio.to_thread(tail)

    async def close(self) -> None:
        return None


def _stop_tree(pid: int, grace: float = 3.0) -> None:
    """Stop a server and everything it started (kernels run in sessions of their own)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=grace)
