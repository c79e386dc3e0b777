"""The router service: writes Traefik's dynamic config from the sandbox records and reports ready routes.

Traefik reads the file through its file provider (``providers.file.directory``, watched), so
routes survive a router restart, and a restarted router rebuilds the file from the bus.
A route is *ready* once a request through Traefik reaches the sandbox's own server; the router
then writes it to the routes bucket, which is what the spawner waits for before pooling it.
A route is *gone* once Traefik sends the sandbox's requests elsewhere (to the gateway, which
answers 404 "this server has ended"); only then does the router delete it from the bucket, which
is what the spawner waits for before it stops the server: a visitor of an ended session never
meets the proxy's 502 for a server that is no longer there.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import httpx
import nats.errors
import nats.js.errors

from nbpool import logs
from nbpool.aio import cancel_and_wait, poll_ready
from nbpool.bus import Bus, KVMirror
from nbpool.clients import sandbox_client
from nbpool.metrics import ROUTE_SECONDS, ROUTES
from nbpool.models import Route, SandboxRecord, encode
from nbpool.router.routes import RouteSpec, desired_routes, dynamic_config, render
from nbpool.settings import RouterSettings

__all__ = ["Router"]

log = logs.get("nbpool.router")

ROUTES_FILE = "nbpool-routes.yml"


class Router:
    """Keeps ``<state_dir>/traefik/dynamic/nbpool-routes.yml`` equal to the routable sandboxes."""

    def __init__(self, settings: RouterSettings, bus: Bus) -> None:
        self.settings = settings
        self.bus = bus
        self.records: KVMirror[SandboxRecord] = KVMirror(bus, bus.names.sandboxes, SandboxRecord, self._changed)
        self.routes: KVMirror[Route] = KVMirror(bus, bus.names.routes, Route, self._route_changed)
        self.applied: dict[str, RouteSpec] | None = None
        self._dirty = asyncio.Event()
        self._probing: dict[str, asyncio.Task[None]] = {}
        self._unrouting: dict[str, asyncio.Task[None]] = {}
        # Probes at once: a thousand new routes must not swamp the HTTP client's connection pool.
        self._probe_slots = asyncio.Semaphore(32)
        self._http = sandbox_client(timeout=httpx.Timeout(3.0, connect=1.0))

    def _changed(self, key: str, rec: SandboxRecord | None) -> None:
        self._dirty.set()

    def _route_changed(self, key: str, route: Route | None) -> None:
        """A route put for a sandbox no longer routed (a probe that finished after its record went, or
        another router's) is forgotten at the next sync; the routes the sync itself wrote need none
        (a sync per route write is O(routes) each: a thousand new routes made the router busy)."""
        if route is not None and key not in (self.applied or {}):
            self._dirty.set()

    async def serve(self, stop: asyncio.Event) -> None:
        """Follow the records until ``stop`` is set."""
        mirrors = [asyncio.ensure_future(self.records.run()), asyncio.ensure_future(self.routes.run())]
        try:
            await asyncio.gather(self.records.ready.wait(), self.routes.ready.wait())
            self._dirty.set()
            loop = asyncio.ensure_future(self._loop())
            await stop.wait()
            await cancel_and_wait(loop)
        finally:
            await cancel_and_wait(*mirrors, *self._probing.values(), *self._unrouting.values())
            await self._http.aclose()

    async def _loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(0.02)  # a burst of changes becomes one file write
            self._dirty.clear()
            try:
                await self.sync()
            except (TimeoutError, nats.errors.Error, OSError) as err:
                log.warning("sync failed, retrying", extra={"error": repr(err)})
                await asyncio.sleep(0.5)
                self._dirty.set()

    async def sync(self) -> None:
        """Write the file if the table changed, probe new routes, and forget removed ones once the proxy has."""
        desired = desired_routes(self.records.values(), self.settings.origins)
        if desired != self.applied:
            self._write(desired)
            added = desired.keys() - (self.applied or {}).keys()
            removed = (self.applied or {}).keys() - desired.keys()
            self.applied = desired
            ROUTES.set(len(desired))
            log.info("routes written", extra={"routes": len(desired), "added": len(added), "removed": len(removed)})
            for sid in removed:
                await self.bus.event("route.removed", sid)
        for sid, spec in desired.items():
            route = self.routes.get(sid)
            ready = route is not None and route.ready_at is not None and (route.path, route.target) == spec
            if not ready and sid not in self._probing:
                self._probing[sid] = asyncio.ensure_future(self._probe(sid, spec))
        for sid in [sid for sid in self._probing if sid not in desired]:
            self._probing.pop(sid).cancel()
        for sid in self.routes.items.keys() - desired.keys() - self._unrouting.keys():
            self._unrouting[sid] = asyncio.ensure_future(self._unroute(sid))

    def _write(self, routes: dict[str, RouteSpec]) -> None:
        folder = self.settings.dynamic_dir
        folder.mkdir(parents=True, exist_ok=True)
        settings = self.settings
        text = render(dynamic_config(routes, settings.gateway_urls, settings.origins, settings.static_offload,
                                     settings.proxy_compress))
        # Written beside the watched folder, then renamed in: Traefik never reads half a file.
        tmp = folder.parent / f".{ROUTES_FILE}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, folder / ROUTES_FILE)

    def _through_proxy(self, sid: str, path: str) -> tuple[str, dict[str, str]]:
        """The URL and headers of the sandbox's ``api`` through Traefik's own address, naming the
        sandbox's origin: no DNS needed here."""
        origins = self.settings.origins
        return f"{self.settings.proxy_url}{path}api", {"Host": origins.sandbox_netloc(sid)} if origins.by_host else {}

    async def _probe(self, sid: str, spec: RouteSpec) -> None:
        """Wait until a request through the proxy reaches the sandbox itself, then report the route ready."""
        path, target = spec
        url, host = self._through_proxy(sid, path)
        began = time.monotonic()

        async def answers() -> bool | None:
            return True if await self._answers(url, host) else None

        try:
            await poll_ready(answers, deadline=began + self.settings.route_check_timeout, first=0.02)
            kv = await self.bus.kv(self.bus.names.routes)
            await kv.put(sid, encode(Route(id=sid, path=path, target=target, ready_at=time.time())))
            took = round(time.monotonic() - began, 3)
            ROUTE_SECONDS.observe(took)
            log.info("route ready", extra={"sandbox": sid, "took_s": took})
            await self.bus.event("route.ready", sid, data={"path": path, "took_s": took})
        except TimeoutError:
            log.warning("route never answered", extra={"sandbox": sid, "url": url})
            await self.bus.event("route.failed", sid, cause="no answer through the proxy", data={"path": path})
        finally:
            self._probing.pop(sid, None)

    async def _unroute(self, sid: str) -> None:
        """Wait (up to the route check timeout) until the proxy no longer sends the sandbox's requests to
        it, then delete its route from the bucket; a failed delete is tried again at the next sync."""
        route = self.routes.get(sid)
        url, host = self._through_proxy(sid, route.path if route else self.settings.origins.base_path(sid))

        async def gone() -> bool | None:
            try:
                async with self._probe_slots:
                    resp = await self._http.get(url, headers=host)
            except httpx.HTTPError:
                return None
            return True if resp.status_code == 404 else None  # the gateway's "ended", not the sandbox or a 502

        try:
            try:
                await poll_ready(gone, deadline=time.monotonic() + self.settings.route_check_timeout, first=0.01, most=0.2)
            except TimeoutError:
                log.warning("the proxy still sends a removed route's requests on; forgetting it anyway",
                            extra={"sandbox": sid, "url": url})
            await (await self.bus.kv(self.bus.names.routes)).delete(sid)
        except (TimeoutError, nats.errors.Error, OSError) as err:
            log.warning("route not forgotten, retrying", extra={"sandbox": sid, "error": repr(err)})
            self._dirty.set()
        finally:
            self._unrouting.pop(sid, None)

    async def _answers(self, url: str, headers: dict[str, str]) -> bool:
        try:
            async with self._probe_slots:
                resp = await self._http.get(url, headers=headers)
        except httpx.HTTPError:
            return False
        if resp.status_code != 200:
            return False
        # The gateway answers for sandboxes without a route too; only Jupyter's own /api has "version".
        try:
            body: Any = resp.json()
        except ValueError:
            return False
        return isinstance(body, dict) and "version" in body
