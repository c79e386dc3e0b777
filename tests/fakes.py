"""Fakes for testing the spawner without Jupyter or Docker, in the spirit of JupyterHub's MockSpawner.

:class:`FakeRuntime` keeps the :class:`nbpool.runtime.Runtime` contract (the contract suite in
test_runtimes.py runs against it too) and can be made to misbehave: slow to start, never
answering, refusing to start, or gone altogether (as a stopped Docker engine). Each sandbox is a
stand-in server on a loopback port that answers the few Jupyter API calls the spawner makes.
:func:`route_everything` does the router's part on the bus without a proxy.
A fake never replaces the real component in a test that claims to test that component.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nbpool.bus import KVMirror
from nbpool.models import ROUTED_STATES, Route, SandboxRecord, State, encode
from nbpool.runtime import RuntimeSandbox, RuntimeUnavailable, SandboxSpec, SpawnFailed

__all__ = ["FakeRuntime", "StandIn", "route_everything"]


async def route_everything(records: KVMirror[SandboxRecord], routes: Any) -> None:
    """The router's part on the bus, without a proxy (the fakes need none): each starting sandbox's
    route is ready at once, and is deleted once its record is no longer routed (ending, failed,
    gone), as the real router does when the proxy has let go of it. Runs until cancelled; a bus
    error (an election) is tried again next round."""
    routed: set[str] = set()
    while True:
        live = {rec.id: rec for rec in records.values()}
        for rec in live.values():
            if rec.state == State.STARTING and rec.id not in routed:
                try:
                    await routes.put(rec.id, encode(Route(id=rec.id, path=rec.path, target=rec.target, ready_at=time.time())))
                    routed.add(rec.id)
                except Exception:  # noqa: BLE001 - the bus is electing: next round
                    pass
        for sid in [sid for sid in routed if sid not in live or live[sid].state not in ROUTED_STATES]:
            try:
                await routes.delete(sid)
                routed.discard(sid)
            except Exception:  # noqa: BLE001 - as above
                pass
        await asyncio.sleep(0.05)


class StandIn:
    """A stand-in Jupyter server: ``<base>api``, ``api/status`` and ``api/kernels``, ``<base>`` sent on to
    its default page, or 503 for all."""

    def __init__(self, base_path: str, answers: bool, default_url: str = "/lab") -> None:
        self.base_path = base_path
        self.answers = answers
        self.default_url = default_url
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> StandIn:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def target(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    def _answer(self, path: str) -> tuple[int, object]:
        if not self.answers:
            return 503, {"message": "not answering (fake)"}
        now = datetime.now(UTC).isoformat()
        route = path.split("?", 1)[0].removeprefix(self.base_path)
        return {
            "": (302, {"location": self.base_path.rstrip("/") + self.default_url}),
            "api": (200, {"version": "fake"}),
            "api/status": (200, {"last_activity": now, "started": now, "connections": 0, "kernels": 0}),
            "api/kernels": (200, []),
        }.get(route, (404, {"message": "not found (fake)"}))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readline()
                if not request:
                    break
                while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # headers: not needed
                status, doc = self._answer(request.split()[1].decode())
                body = json.dumps(doc).encode()
                location = f"Location: {doc['location']}\r\n" if status == 302 and isinstance(doc, dict) else ""
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n{location}"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (ConnectionError, IndexError):
            pass
        finally:
            writer.close()


@dataclass
class _Sandbox:
    spec: SandboxSpec
    server: StandIn
    owner: tuple[str, str]
    alive: bool = True


class FakeRuntime:
    """A runtime of stand-in servers (see the module docstring); its knobs can change at any time."""

    name = "fake"

    def __init__(self, start_delay: float = 0.0, answers: bool = True, refuse: bool = False,
                 engine: dict[str, _Sandbox] | None = None, owner: tuple[str, str] = ("nbpool", "s1")) -> None:
        self.start_delay = start_delay
        self.answers = answers
        self.refuse = refuse
        #: As if the engine were stopped: every call raises RuntimeUnavailable.
        self.gone = False
        #: The "engine": shared by fakes of several spawners or instances, each sees only its own.
        self.engine: dict[str, _Sandbox] = {} if engine is None else engine
        self.owner = owner
        self.created = 0

    @property
    def sandboxes(self) -> dict[str, _Sandbox]:
        """This runtime's own sandboxes (instance, spawner id), by id."""
        return {sid: sb for sid, sb in self.engine.items() if sb.owner == self.owner}

    def _reachable(self) -> None:
        if self.gone:
            raise RuntimeUnavailable("the fake engine is gone")

    def _view(self, sandbox: _Sandbox) -> RuntimeSandbox:
        return RuntimeSandbox(sandbox.spec.id, sandbox.server.target, sandbox.spec.profile, sandbox.alive)

    async def create(self, spec: SandboxSpec) -> RuntimeSandbox:
        self._reachable()
        if spec.runtime:
            raise SpawnFailed(f"the fake runtime has no container runtime {spec.runtime!r}")
        if self.refuse:
            raise SpawnFailed("the fake runtime refuses to start sandboxes")
        await asyncio.sleep(self.start_delay)
        server = await StandIn(spec.base_path, self.answers, spec.default_url).start()
        self.engine[spec.id] = _Sandbox(spec, server, self.owner)
        self.created += 1
        return self._view(self.sandboxes[spec.id])

    async def remove(self, sandbox_id: str) -> None:
        self._reachable()
        if sandbox_id in self.sandboxes:
            await self.engine.pop(sandbox_id).server.close()

    async def list(self) -> list[RuntimeSandbox]:
        self._reachable()
        return [self._view(s) for s in self.sandboxes.values()]

    async def inspect(self, sandbox_id: str) -> RuntimeSandbox | None:
        self._reachable()
        sandbox = self.sandboxes.get(sandbox_id)
        return None if sandbox is None else self._view(sandbox)

    async def logs(self, sandbox_id: str, lines: int = 20) -> str:
        return ""

    async def close(self) -> None:
        pass

    async def kill(self, sandbox_id: str) -> None:
        """The sandbox's server dies (the runtime still lists it, not alive)."""
        sandbox = self.sandboxes[sandbox_id]
        sandbox.alive = False
        await sandbox.server.close()

    async def close_all(self) -> None:
        for sandbox in self.sandboxes.values():
            await sandbox.server.close()
