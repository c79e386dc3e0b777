"""The docker runtime: one container per sandbox, the production runtime.

Each sandbox is a container of the notebook image (``deploy/images/``) on a bridge network that
nbpool creates: traffic between containers off (``enable_icc=false``), and no route beyond the
host unless egress is allowed (``internal``). The proxy reaches a container at its own IP: no
published ports, no docker-proxy hop. The host's firewall drops connections that sandboxes open
to the host itself (chain ``NBPOOL-SANDBOX-IN``). Containers run as uid 1000 with every capability dropped,
``no-new-privileges``, memory, CPU and pid limits, no Docker socket, and are removed when they
stop. Labels carry the nbpool instance, spawner, sandbox id and profile; this runtime only ever
lists or removes containers labelled with its own instance and spawner. A profile may name
another OCI runtime of the engine (``runsc``: gVisor, a kernel of its own between the sandbox
and the host's).

Disk: the container's root filesystem is read-only, and all it can write lives on size-limited
tmpfs mounts: its home (``disk``, with the Welcome notebook copied in at start) and ``/tmp``
(64 MiB). A write past the size fails inside the sandbox with ENOSPC; nothing lands on the
host's disk. tmpfs pages are memory of the container's cgroup, so the memory limit is
``memory + disk``: files take at most ``disk`` of it, and processes have ``memory`` plus
whatever the files leave. Logs: Docker keeps at most 1 MiB of each container's output.

The Docker SDK is blocking: every call runs in a bounded thread pool (like tmpnb's
``max_dock_workers``) under a timeout. An engine that cannot be reached raises
:class:`RuntimeUnavailable`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors
import docker.types
import requests.exceptions
from docker.models.containers import Container

from nbpool import logs
from nbpool.runtime.base import RuntimeSandbox, RuntimeUnavailable, SandboxSpec, SpawnFailed
from nbpool.runtime.docker_network import admit_proxies, ensure_network, protect_host

__all__ = ["LABEL", "DockerRuntime", "size_bytes"]

log = logs.get("nbpool.runtime.docker")

LABEL = "nbpool"
_PORT = 8888
_NORMAL_CPU_SHARES = 1024  # what Docker gives a container that sets none
_HOME = "/home/jovyan"
_TMP_SIZE = "64m"
# Docker keeps this much of a container's output (the spawner reads its last lines on failure).
_LOG_CONFIG = docker.types.LogConfig(type="json-file", config={"max-size": "1m", "max-file": "1"})
_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def size_bytes(size: str) -> int:
    """Bytes in a Docker-style size: ``512m``, ``1g``, ``65536``."""
    size = size.strip().lower()
    unit = _UNITS.get(size[-1:], 0)
    return int(size[:-1]) * unit if unit else int(size)
_T = TypeVar("_T")


class DockerRuntime:
    """Sandboxes as Docker containers (see the module docstring)."""

    name = "docker"

    def __init__(
        self,
        instance: str,
        spawner_id: str,
        image: str,
        network: str,
        egress: bool = False,
        memory: str = "512m",
        disk: str = "1g",
        cpus: float = 1.0,
        pids: int = 256,
        start_cpu_shares: int = 128,
        workers: int = 8,
        timeout: float = 30.0,
        subnet: str = "",
        proxy_sources: list[str] | None = None,
    ) -> None:
        self.instance = instance
        self.spawner_id = spawner_id
        self.image = image
        self.network = network
        self.egress = egress
        self.memory = memory
        self.disk = disk
        self.cpus = cpus
        self.pids = pids
        self.start_cpu_shares = start_cpu_shares
        self.timeout = timeout
        self.subnet = subnet
        self.proxy_sources = proxy_sources or []
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="docker")
        self._client: docker.DockerClient | None = None
        self._network_id = ""
        self._network_lock = threading.Lock()
        # Sandboxes started at the normal CPU share (another OCI runtime): nothing to promote.
        self._full_share: set[str] = set()

    # ---- plumbing --------------------------------------------------------------------------

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.from_env(timeout=int(self.timeout))
        return self._client

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeout + 5):
                return await loop.run_in_executor(self._pool, fn, *args)
        except TimeoutError:
            raise RuntimeUnavailable(f"the Docker engine did not answer within {self.timeout:g} s") from None
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as err:
            self._client = None
            self._network_id = ""
            raise RuntimeUnavailable(f"the Docker engine cannot be reached: {err.__class__.__name__}") from None
        except docker.errors.DockerException as err:
            if isinstance(err, docker.errors.APIError):
                raise
            self._client = None
            self._network_id = ""
            raise RuntimeUnavailable(f"the Docker engine cannot be reached: {err}") from None

    def _labels(self) -> dict[str, str]:
        return {f"{LABEL}.instance": self.instance, f"{LABEL}.spawner": self.spawner_id}

    def _filters(self) -> dict[str, Any]:
        return {"label": [f"{k}={v}" for k, v in self._labels().items()]}

    def _name(self, sandbox_id: str) -> str:
        return f"{self.instance}-{self.spawner_id}-{sandbox_id}"

    # ---- network ---------------------------------------------------------------------------

    def _ensure_network(self) -> str:
        """The id of the sandbox network, created (and the host protected from it) if missing."""
        with self._network_lock:
            if not self._network_id:
                network = ensure_network(self._docker(), self.network, self.instance, self.egress, self.subnet)
                protect_host(network)
                if self.proxy_sources:
                    admit_proxies(network, self.proxy_sources, _PORT)
                self._network_id = str(network.id)
            return self._network_id

    # ---- the interface ---------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> RuntimeSandbox:
        try:
            return await self._call(self._create, spec)
        except docker.errors.ImageNotFound:
            image = spec.image or self.image
            raise SpawnFailed(f"image {image} does not exist on this engine; build it with `make image`") from None
        except docker.errors.APIError as err:
            raise SpawnFailed(f"Docker refused the container: {err.explanation or err}") from None

    def _create(self, spec: SandboxSpec) -> RuntimeSandbox:
        network = self._ensure_network()
        client = self._docker()
        labels = {**self._labels(), f"{LABEL}.sandbox": spec.id, f"{LABEL}.profile": spec.profile,
                  f"{LABEL}.host": socket.gethostname()}
        container: Container = client.containers.run(
            spec.image or self.image,
            detach=True,
            name=self._name(spec.id),
            hostname=f"sandbox-{spec.id}",
            environment={"NBPOOL_TOKEN": spec.token, "NBPOOL_BASE_URL": spec.base_path,
                         "NBPOOL_EMBED_ORIGINS": spec.embed_origins, "NBPOOL_UI": spec.ui,
                         **({"NBPOOL_SHARE_URL": spec.share_url} if spec.share_url else {})},
            network=network,
            labels=labels,
            user="1000:1000",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            # Files on the tmpfs mounts below are memory of this cgroup: see the module docstring.
            mem_limit=size_bytes(self.memory) + size_bytes(self.disk),
            memswap_limit=size_bytes(self.memory) + size_bytes(self.disk),  # no swap: past it the kernel is killed
            read_only=True,
            tmpfs={
                _HOME: f"size={self.disk},uid=1000,gid=1000,mode=0755,nosuid,nodev",
                "/tmp": f"size={_TMP_SIZE},mode=1777,nosuid,nodev",
            },
            log_config=_LOG_CONFIG,
            runtime=spec.runtime,  # None: the engine's default (runc); "runsc": gVisor
            nano_cpus=int(self.cpus * 1e9),
            pids_limit=self.pids,
            # See promote(). runsc cannot change a running container's limits: such sandboxes
            # start at the normal share.
            cpu_shares=_NORMAL_CPU_SHARES if spec.runtime else self.start_cpu_shares,
            auto_remove=True,
        )
        if spec.runtime:
            self._full_share.add(spec.id)
        try:
            container.reload()
            return self._sandbox(container)
        except (docker.errors.NotFound, KeyError):
            raise SpawnFailed("the container exited at once") from None

    def _sandbox(self, container: Container) -> RuntimeSandbox:
        attrs = container.attrs
        state = attrs.get("State") or {}
        return self._described(attrs["Config"]["Labels"], attrs["NetworkSettings"]["Networks"],
                               state.get("Status") == "running", attrs.get("Image"))

    def _described(self, labels: dict[str, str] | None, networks: dict[str, Any] | None, running: bool,
                   image: str | None) -> RuntimeSandbox:
        """A sandbox from what Docker says of its container (an inspection or a listing)."""
        labels = labels or {}
        ip = ((networks or {}).get(self.network) or {}).get("IPAddress") or ""
        return RuntimeSandbox(
            id=labels.get(f"{LABEL}.sandbox", ""),
            target=f"http://{ip}:{_PORT}" if ip else "",
            profile=labels.get(f"{LABEL}.profile", ""),
            alive=running and bool(ip),
            image=str(image or ""),
        )

    async def image_id(self, image: str | None) -> str | None:
        def inspecting() -> str | None:
            try:
                return str(self._docker().images.get(image or self.image).id)
            except docker.errors.APIError:  # not found, or not a valid image name: not here either way
                return None

        return await self._call(inspecting)

    async def promote(self, sandbox_id: str) -> None:
        """The started sandbox gets the normal CPU share (1024); it started at ``start_cpu_shares``."""
        if self.start_cpu_shares == _NORMAL_CPU_SHARES or sandbox_id in self._full_share:
            self._full_share.discard(sandbox_id)
            return
        try:
            await self._call(self._promote, sandbox_id)
        except docker.errors.NotFound:
            raise SpawnFailed("the container is gone") from None

    def _promote(self, sandbox_id: str) -> None:
        self._docker().api.update_container(self._name(sandbox_id), cpu_shares=_NORMAL_CPU_SHARES)

    async def list(self) -> list[RuntimeSandbox]:
        def listing() -> list[RuntimeSandbox]:
            # One request: the listing's summaries say all a sandbox needs (the SDK's
            # containers.list would inspect each container too: a request per sandbox, which
            # made listing most of the spawner's CPU during a refill of 40).
            found = [self._described(c.get("Labels"), (c.get("NetworkSettings") or {}).get("Networks"),
                                     c.get("State") == "running", c.get("ImageID"))
                     for c in self._docker().api.containers(all=True, filters=self._filters())]
            return [sb for sb in found if sb.id]

        try:
            return await self._call(listing)
        except docker.errors.APIError as err:
            raise RuntimeUnavailable(f"Docker could not list containers: {err.explanation or err}") from None

    async def inspect(self, sandbox_id: str) -> RuntimeSandbox | None:
        def inspecting() -> RuntimeSandbox | None:
            try:
                return self._sandbox(self._docker().containers.get(self._name(sandbox_id)))
            except docker.errors.NotFound:
                return None

        return await self._call(inspecting)

    async def remove(self, sandbox_id: str) -> None:
        def removing() -> None:
            try:
                container = self._docker().containers.get(self._name(sandbox_id))
                labels = container.labels or {}
                if labels.get(f"{LABEL}.instance") != self.instance or labels.get(f"{LABEL}.spawner") != self.spawner_id:
                    return  # never touch another instance's containers, whatever their name
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as err:
                if err.status_code not in (404, 409):  # 409: removal already in progress (auto-remove)
                    raise

        await self._call(removing)

    async def logs(self, sandbox_id: str, lines: int = 20) -> str:
        def reading() -> str:
            try:
                raw = self._docker().containers.get(self._name(sandbox_id)).logs(tail=lines)
                return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
            except docker.errors.NotFound:
                return ""

        try:
            return await self._call(reading)
        except (RuntimeUnavailable, docker.errors.APIError):
            return ""

    async def watch_events(self, report: Callable[[str, str], None]) -> None:
        """Report out-of-memory kills ("oom") and exits ("died") of this runtime's containers."""
        loop = asyncio.get_running_loop()
        stopping = threading.Event()

        def follow() -> None:
            # The event stream blocks: it gets a thread of its own, not a place in the worker pool.
            lost = False
            while not stopping.is_set():
                try:
                    client = docker.from_env(timeout=int(self.timeout))
                    filters = {"type": "container", "event": ["oom", "die"], **self._filters()}
                    stream = client.events(decode=True, filters=filters)
                    lost = False
                    for event in stream:
                        sandbox = (event.get("Actor", {}).get("Attributes") or {}).get(f"{LABEL}.sandbox")
                        kind = "oom" if event.get("Action") == "oom" else "died"
                        if sandbox:
                            loop.call_soon_threadsafe(report, sandbox, kind)
                        if stopping.is_set():
                            break
                    client.close()
                except Exception as err:  # the engine went away: try again shortly (said once an outage)
                    if not stopping.is_set() and not lost:
                        log.warning("not following the engine's events; trying every 2 s", extra={"error": repr(err)})
                    lost = True
                    stopping.wait(2.0)

        thread = threading.Thread(target=follow, name="docker-oom-events", daemon=True)
        thread.start()
        try:
            await asyncio.Event().wait()
        finally:
            stopping.set()

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()
