"""The runtime interface a spawner drives, in the spirit of JupyterHub's ``Spawner``.

A runtime knows how to start, find and stop Jupyter servers on one host. It knows nothing of
pools, claims or the bus: the spawner decides, the runtime carries out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["HasImages", "ReportsEvents", "Runtime", "StartsInBackground", "RuntimeSandbox", "RuntimeUnavailable", "SandboxSpec", "SpawnFailed"]


class SpawnFailed(Exception):
    """The runtime could not start this sandbox (bad image, no free port, the server exited...)."""


class RuntimeUnavailable(Exception):
    """The runtime itself cannot be reached (e.g. the Docker engine is down). Nothing was changed."""


@dataclass(frozen=True)
class SandboxSpec:
    """What to start: a Jupyter server serving ``base_path`` (``/``, or ``/user/<id>/`` with path
    routing), accepting ``token``. ``runtime`` names an OCI runtime of the engine (``runsc``
    for gVisor); a runtime that cannot honour it raises :class:`SpawnFailed`. ``share_url`` is
    where the sandbox's "Share a snapshot" command posts (``NBPOOL_SHARE_URL`` in its environment;
    None when snapshots are off). ``embed_origins`` is ``NBPOOL_EMBED_ORIGINS`` as the server reads it
    (:mod:`nbpool.sandbox_config`): which other pages may use the server with its token. ``ui`` is
    the page the server's ``/`` sends a visitor to (``NBPOOL_UI``): ``lab`` (JupyterLab) or
    ``notebook`` (Jupyter Notebook 7's file list)."""

    id: str
    token: str
    base_path: str
    profile: str
    image: str | None = None
    runtime: str | None = None
    share_url: str | None = None
    embed_origins: str = "*"
    ui: str = "lab"

    @property
    def default_url(self) -> str:
        """The server's own ``default_url`` (under its base path): where ``/`` goes in its UI."""
        return "/tree" if self.ui == "notebook" else "/lab"


@dataclass(frozen=True)
class RuntimeSandbox:
    """A sandbox as the runtime sees it.

    ``target`` is the base address the proxy forwards to (``http://ip:port``, no path): the
    server answers at ``target + base_path``. ``alive`` is False once its server process or
    container has exited (it may still need :meth:`Runtime.remove`).
    """

    id: str
    target: str
    profile: str
    alive: bool
    #: The id of the image it runs ("" when the runtime has no images).
    image: str = ""


class Runtime(Protocol):
    """Starts, lists, inspects and removes the sandboxes of one spawner on one host.

    Contract:

    - :meth:`create` starts the server and returns as soon as its address is known; it does not
      wait for the server to answer (the spawner checks health itself). It raises
      :class:`SpawnFailed` when this sandbox cannot start, and :class:`RuntimeUnavailable` when
      nothing can start right now. On either error nothing is left behind.
    - :meth:`remove` stops the server and everything it started and frees its resources. It is
      idempotent: removing an unknown or already removed id is not an error.
    - :meth:`list` returns every sandbox this runtime instance owns (same nbpool instance and
      spawner id), alive or not, including those created before a restart of the spawner. It
      never returns another instance's sandboxes.
    - :meth:`inspect` returns one sandbox, or None when the runtime has no such sandbox.
    - :meth:`list`, :meth:`inspect` and :meth:`remove` raise :class:`RuntimeUnavailable` when
      the runtime cannot be reached.
    - :meth:`logs` returns the last ``lines`` lines the sandbox's server printed ("" if none).
    - :meth:`close` releases the runtime's own resources; sandboxes keep running.
    """

    name: str

    async def create(self, spec: SandboxSpec) -> RuntimeSandbox: ...

    async def remove(self, sandbox_id: str) -> None: ...

    async def list(self) -> list[RuntimeSandbox]: ...

    async def inspect(self, sandbox_id: str) -> RuntimeSandbox | None: ...

    async def logs(self, sandbox_id: str, lines: int = 20) -> str: ...

    async def close(self) -> None: ...


@runtime_checkable
class ReportsEvents(Protocol):
    """A runtime that tells the moment something happens to a sandbox (the docker runtime does).

    :meth:`watch_events` calls ``report(sandbox_id, kind)`` with ``kind`` "oom" each time the
    out-of-memory killer kills a process in one of this runtime's sandboxes, and "died" when a
    sandbox's server (container) exits. It runs until cancelled and survives the runtime going
    away and coming back. Runtimes without it are watched by polling :meth:`Runtime.list`.
    """

    async def watch_events(self, report: Callable[[str, str], None]) -> None: ...


@runtime_checkable
class HasImages(Protocol):
    """A runtime whose sandboxes run images that may or may not be on its host (the docker runtime).

    :meth:`image_id` is the id of ``image`` (None: the runtime's default image) on this host, or
    None when the host does not have it. A name such as ``nbpool/profile-x:latest`` may point at
    a new id after a build: the spawner recycles warm sandboxes of the old one.
    """

    async def image_id(self, image: str | None) -> str | None: ...


@runtime_checkable
class StartsInBackground(Protocol):
    """A runtime that starts sandboxes at a low CPU priority (the docker runtime does).

    Starting a Jupyter server costs about a second of CPU; refilling the pool after a burst of
    claims would take that from the visitors who were just served. A starting sandbox therefore
    gets CPU only when the others leave some. :meth:`promote` gives it the normal priority; the
    spawner calls it once the sandbox is ready, before it joins the pool.
    """

    async def promote(self, sandbox_id: str) -> None: ...
