"""The gateway's HTTP API (OpenAPI at ``/docs``).

It holds no state of its own: records and activity are read from the bus, claims go to the
spawners over request/reply, and ending a session is a compare-and-set on the record.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import nats.errors
import nats.js.errors
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from nbpool import __version__, logs
from nbpool.bus import Bus, KVMirror
from nbpool.culler.policy import CullPolicy, expires_at
from nbpool.gateway.admin import AdminSessions, EventTail, admin_router
from nbpool.gateway.claims import Claimer, NoCapacity
from nbpool.gateway.docs import add_docs
from nbpool.gateway.errors import error_responses
from nbpool.gateway.errors import install as install_error_handlers
from nbpool.gateway.links import BadLink, lab_path, spawn_link
from nbpool.gateway.origin_guard import OriginGuard
from nbpool.gateway.pages import content_security_policy, ended_page, landing_page, waiting_page
from nbpool.gateway.queue import LaunchQueue
from nbpool.gateway.ratelimit import RateLimiter
from nbpool.gateway.tokens import from_authorization, same
from nbpool.models import Activity, BadMessage, Drain, SandboxRecord, SpawnerBeat, State, decode, encode
from nbpool.names import Names
from nbpool.settings import GatewaySettings
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["create_app"]

log = logs.get("nbpool.gateway")

_ID = r"^[a-z0-9]{4,40}$"
# What links.lab_path accepts, for the OpenAPI document (the check itself is lab_path's, in Python).
RELATIVE_PATH = r"^(?!//)(?!.*://)(?!(.*/)?\.\.(/|$))[^\x00-\x1f\x7f\\]*$"
ProfileQuery = Annotated[str | None, Query(description="a configured profile")]
UrlPathQuery = Annotated[str | None, Query(description="the page to open, in any of the link forms",
                                           max_length=1024, json_schema_extra={"pattern": RELATIVE_PATH})]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# ---- request and response documents ---------------------------------------------------------


class SessionRequest(BaseModel):
    """What a launch may ask for. Every field is optional."""

    model_config = ConfigDict(extra="forbid")

    profile: str | None = Field(default=None, description="a configured profile; the default profile if absent")
    path: str = Field(default="", max_length=1024, description="a file or folder to open, relative to the home folder",
                      json_schema_extra={"pattern": RELATIVE_PATH})

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        lab_path(value)  # raises BadLink (a ValueError) with what is wrong
        return value.strip("/")


class SessionCreated(BaseModel):
    id: str
    url: str = Field(description="opens JupyterLab; carries the token")
    token: str
    expires_at: str | None = Field(description="when the session ends if left idle (ISO 8601, UTC)")
    profile: str
    kernel_id: str | None = Field(
        default=None, description="a kernel already running in the server (the Welcome notebook's), ready for code"
    )


class SessionInfo(BaseModel):
    id: str
    state: str
    profile: str
    created: str | None
    claimed: str | None
    last_activity: str | None
    expires_at: str | None
    url: str


class Stats(BaseModel):
    available: int = Field(description="warm sandboxes ready to hand out")
    capacity: int = Field(description="sandboxes the spawners may run at most")
    in_use: int
    starting: int
    waiting: int
    spawners: int
    healthy_spawners: int
    profiles: dict[str, dict[str, int]]


class _BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, before they are read into memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(send)
                return
        seen = 0
        refused = False

        async def limited() -> Message:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit and not refused:
                refused = True
                await self._refuse(send)
                # To the app it looks as if the client went away; it stops reading.
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited, guarded_send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body is larger than {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


# ---- the app --------------------------------------------------------------------------------


def create_app(settings: GatewaySettings, bus: Bus | None = None) -> FastAPI:
    """The gateway app. Without ``bus`` it connects at start-up (``NBPOOL_NATS_URL``)."""
    state: dict[str, Any] = {}
    limiter = RateLimiter(settings.rate_limit, settings.rate_burst)
    policy = CullPolicy(settings.idle_timeout, settings.max_age, float("inf"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_bus = bus is None
        the_bus = bus or await Bus.connect(
            settings.nats_url, Names(settings.instance), "gateway", credentials=settings.bus_credentials("gateway"))
        await the_bus.ensure("gateway")
        names = the_bus.names
        spawners: KVMirror[SpawnerBeat] = KVMirror(the_bus, names.spawners, SpawnerBeat)
        records: KVMirror[SandboxRecord] = KVMirror(the_bus, names.sandboxes, SandboxRecord)
        activity: KVMirror[Activity] = KVMirror(the_bus, names.activity, Activity)
        control: KVMirror[Drain] = KVMirror(the_bus, names.control, Drain)
        tail = EventTail(the_bus)
        mirrors = [spawners, records, activity, control]
        claimer = Claimer(the_bus, spawners, settings.claim_timeout)
        def estimate_full(profile: str, position: int) -> float | None:
            ends = sorted(
                expires_at(rec, activity.get(rec.id), policy) or 0
                for rec in records.values()
                if rec.state == State.CLAIMED and rec.pool == profile
            )
            return None if len(ends) < position else max(0.0, ends[position - 1] - time.time()) + 3.0

        queue = LaunchQueue(claimer, lab_url, estimate_full)
        tasks = [asyncio.ensure_future(m.run()) for m in mirrors]
        tasks += [asyncio.ensure_future(the_bus.presence("gateway")), asyncio.ensure_future(tail.run())]
        await asyncio.gather(*(m.ready.wait() for m in mirrors))
        state.update(bus=the_bus, spawners=spawners, records=records, activity=activity, control=control,
                     tail=tail, claimer=claimer, queue=queue, end_session=end_session,
                     admin_sessions=AdminSessions(the_bus, settings.admin_session_ttl))
        log.info("started", extra={"nats": settings.nats_url, "instance": settings.instance, "routing": settings.routing,
                                   "sandboxes": settings.sandbox_url, "admin": settings.admin_url})
        if not origins.by_host:
            log.warning("NBPOOL_ROUTING=path: every sandbox is served from the gateway's own origin, so a page in any "
                        "sandbox can read and drive every other sandbox and the admin in a visitor's browser; "
                        "only for people who trust each other")
        try:
            yield
        finally:
            await queue.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if own_bus:
                await the_bus.close()

    app = FastAPI(
        title="nbpool",
        version=__version__,
        summary="Instant, temporary Jupyter servers from a warm pool.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    add_docs(app)
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)
    install_error_handlers(app, unmatched={"/spawn/": "the path must be a plain relative path"})
    origins = settings.origins

    def ended_answer(rest: str, accept: str) -> Response:
        """404 for ``<a sandbox>/<rest>`` that has ended: a page (or JSON) that launches a fresh one there."""
        again = settings.public_url + spawn_link(rest)
        if "text/html" in accept:
            return HTMLResponse(ended_page(again), 404, headers={"Cache-Control": "no-store"})
        return JSONResponse({"detail": "this notebook server has ended or never existed", "spawn": again}, 404)

    app.add_middleware(
        OriginGuard,
        origins=origins,
        csp=content_security_policy(origins.sandbox_source() if origins.by_host else ""),
        ended=ended_answer,
        static_paths=("/static/lab/",) if settings.static_offload else (),
    )

    def the_bus() -> Bus:
        return state["bus"]  # type: ignore[no-any-return]

    def client_of(request: Request) -> str:
        peer = request.client.host if request.client else "unknown"
        if peer in settings.trusted_proxies:
            # Traefik sets X-Real-Ip and drops what an untrusted client sent.
            real = request.headers.get("x-real-ip")
            if real:
                return real.strip()
        return peer

    def lab_url(rec: SandboxRecord, page: str = "lab") -> str:
        """The URL that opens ``page`` (see :mod:`nbpool.gateway.links`) in the sandbox, with its token."""
        return f"{origins.sandbox_url(rec.id)}{page}?token={rec.token}"

    def admit(request: Request, profile: str | None) -> tuple[str, str]:
        """Check the profile and the client's launch rate; the profile and the client."""
        profile = settings.default_profile if profile is None else profile
        if profile not in settings.profiles:
            raise HTTPException(
                422, f"unknown profile {profile!r}; choose one of: {', '.join(sorted(settings.profiles))}"
            )
        client = client_of(request)
        live = sum(1 for rec in state["records"].values() if rec.owner == client and rec.state == State.CLAIMED)
        if live >= settings.max_sessions_per_client:
            raise HTTPException(
                429,
                f"{client} already has {live} live sessions, the most one client may hold "
                f"(NBPOOL_MAX_SESSIONS_PER_CLIENT); end one (DELETE /sessions/<id>) or wait for one to end",
                headers={"Retry-After": "60"},
            )
        wait = limiter.take(client)
        if wait > 0:
            raise HTTPException(
                429,
                f"too many launches from {client}; try again in {wait:.0f} s",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        return profile, client

    async def launch(request: Request, profile: str | None) -> SandboxRecord:
        profile, client = admit(request, profile)
        began = time.perf_counter()
        rec = await state["claimer"].claim(profile, owner=client)
        # Debug: at INFO this line cost ~12% of the gateway's CPU per claim (the spawner's
        # sandbox.claimed event already records every claim).
        log.debug("claimed", extra={"sandbox": rec.id, "client": client, "ms": round((time.perf_counter() - began) * 1000, 2)})
        return rec

    async def end_session(session_id: str, reason: str) -> bool:
        """Move a live session to ending and wait (bounded) until its server is gone; False if none."""
        kv = await the_bus().kv(the_bus().names.sandboxes)
        for _ in range(5):
            try:
                entry = await kv.get(session_id)
            except nats.js.errors.KeyNotFoundError:
                return False
            rec, rev = decode(SandboxRecord, entry.value or b""), entry.revision or 0
            if rec.state == State.ENDING:
                break
            if rec.state != State.CLAIMED:
                return False
            try:
                await kv.update(rec.id, encode(rec.moved(State.ENDING, ending_reason=reason)), last=rev)
                await the_bus().event("sandbox.ending", rec.id, host=rec.host, cause=reason)
                break
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
        # The owning spawner removes it; wait (bounded) so the caller can rely on it being gone.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                await kv.get(session_id)
            except nats.js.errors.KeyNotFoundError:
                break
            await asyncio.sleep(0.05)
        return True

    @app.exception_handler(NoCapacity)
    async def _full(request: Request, exc: NoCapacity) -> Response:
        headers = {"Retry-After": str(exc.retry_after)}
        return JSONResponse({"detail": exc.reason, "reason": "full"}, 503, headers)

    @app.post("/sessions", status_code=201, response_model=SessionCreated, responses=error_responses(413, 422, 429, 503))
    async def create_session(request: Request, body: SessionRequest | None = None) -> SessionCreated:
        """Claim a warm sandbox. The answer's ``url`` opens JupyterLab at once."""
        body = body or SessionRequest()
        rec = await launch(request, body.profile)
        return SessionCreated(
            id=rec.id,
            url=lab_url(rec, lab_path(body.path)),
            token=rec.token,
            expires_at=_iso(expires_at(rec, None, policy)),
            profile=rec.pool,
            kernel_id=rec.kernel_id,
        )

    async def authorized_record(
        session_id: Annotated[str, Path(pattern=_ID)],
        authorization: Annotated[str | None, Header()] = None,
        token: Annotated[str | None, Query(description="the session's token (or an Authorization header)")] = None,
    ) -> tuple[SandboxRecord, int]:
        given = from_authorization(authorization) or token
        if not given:
            raise HTTPException(401, "this needs the session's token: 'Authorization: token <token>' or ?token=")
        kv = await the_bus().kv(the_bus().names.sandboxes)
        try:
            entry = await kv.get(session_id)
            rec = decode(SandboxRecord, entry.value or b"")
        except (nats.js.errors.KeyNotFoundError, BadMessage):
            raise HTTPException(404, f"no session {session_id} (it may have ended)") from None
        if rec.state not in (State.CLAIMED, State.ENDING) or not same(given, rec.token):
            raise HTTPException(403, "wrong token for this session")
        return rec, entry.revision or 0

    @app.get("/sessions/{session_id}", response_model=SessionInfo, responses=error_responses(401, 403, 404, 422))
    async def get_session(found: tuple[SandboxRecord, int] = Depends(authorized_record)) -> SessionInfo:
        """A session's state and times (needs the session's token)."""
        rec, _ = found
        activity = None
        try:
            entry = await (await the_bus().kv(the_bus().names.activity)).get(rec.id)
            activity = decode(Activity, entry.value or b"")
        except (nats.js.errors.KeyNotFoundError, BadMessage):
            pass
        last = rec.claimed_at if activity is None else max(activity.last_activity, rec.claimed_at or 0)
        return SessionInfo(
            id=rec.id,
            state=rec.state,
            profile=rec.pool,
            created=_iso(rec.created_at),
            claimed=_iso(rec.claimed_at),
            last_activity=_iso(last),
            expires_at=_iso(expires_at(rec, activity, policy)),
            url=lab_url(rec),
        )

    @app.delete("/sessions/{session_id}", status_code=204, responses=error_responses(401, 403, 404, 422))
    async def delete_session(found: tuple[SandboxRecord, int] = Depends(authorized_record)) -> Response:
        """End a session now: its server and its route are gone when this returns."""
        await end_session(found[0].id, "deleted")
        return Response(status_code=204)

    @app.get("/", include_in_schema=False)
    async def landing() -> HTMLResponse:
        profiles = {name: p.description for name, p in settings.profiles.items()}
        return HTMLResponse(landing_page(profiles, settings.default_profile, round(settings.idle_timeout / 60)))

    spawn_responses: dict[int | str, dict[str, Any]] = {
        200: {"description": "a waiting page: the visitor is in line, and it opens the server when ready",
              "content": {"text/html": {"schema": {"type": "string"}}}},
        302: {"description": "straight into a warm server: Location is its URL on its own origin, with the token",
              "headers": {"Location": {"schema": {"type": "string"}}}},
        503: {"description": "no vacancy: every sandbox is in use; the page keeps the visitor's place (Retry-After)",
              "content": {"text/html": {"schema": {"type": "string"}}}},
        **error_responses(422, 429),
    }

    @app.get("/spawn", summary="Launch and open (tmpnb-style links)", response_class=HTMLResponse,
             responses=spawn_responses)
    async def spawn_plain(request: Request, profile: ProfileQuery = None, urlpath: UrlPathQuery = None) -> Response:
        """Claim a sandbox and send the browser into it (JupyterLab, or ``?urlpath=``)."""
        return await spawn(request, "", profile, urlpath)

    @app.get("/spawn/{path:path}", summary="Launch and open a path (tmpnb-style links)", response_class=HTMLResponse,
             responses=spawn_responses)
    async def spawn(request: Request, path: str, profile: ProfileQuery = None, urlpath: UrlPathQuery = None) -> Response:
        """Claim a sandbox and send the browser into it.

        ``/spawn/lab/tree/<path>``, ``/spawn/notebooks/<path>``, ``/spawn/<path>`` and
        ``?urlpath=`` open that page. With a warm sandbox this is a 302 straight there;
        otherwise the visitor joins a first-come-first-served line and gets a page that shows
        progress and opens the server when it is ready (503 "no vacancy" while every sandbox is
        in use).
        """
        for name in ("profile", "urlpath"):
            if len(request.query_params.getlist(name)) > 1:
                raise HTTPException(422, f"give {name} once")
        try:
            lab_path(path)  # a bad path is refused even when urlpath decides the page
            page = lab_path(path, urlpath)
        except BadLink as err:
            raise HTTPException(422, str(err)) from None
        profile, client = admit(request, profile)
        queue: LaunchQueue = state["queue"]
        if not queue.waiting(profile):
            try:
                rec = await state["claimer"].claim(profile, owner=client, wait=0)
                return RedirectResponse(lab_url(rec, page), status_code=302)
            except NoCapacity:
                pass
        ticket = queue.join(profile, page, client)
        await ticket.changed(timeout=0.3)  # a sandbox about to turn warm needs no waiting page
        if ticket.state == "ready" and ticket.url:
            return RedirectResponse(ticket.url, status_code=302)
        full = ticket.state == "full"
        return HTMLResponse(
            waiting_page(ticket.id, ticket.snapshot(), full),
            status_code=503 if full else 200,
            headers={"Retry-After": "5", "Cache-Control": "no-store"} if full else {"Cache-Control": "no-store"},
        )

    @app.get("/queue/{ticket_id}", include_in_schema=False)
    async def ticket_page(ticket_id: str) -> Response:
        """A visitor's place in line (the waiting page without scripts reloads this)."""
        ticket = state["queue"].get(ticket_id)
        if ticket is None:
            return RedirectResponse("/spawn", status_code=303)
        ticket.touch()
        if ticket.state == "ready" and ticket.url:
            return RedirectResponse(ticket.url, status_code=302)
        full = ticket.state == "full"
        return HTMLResponse(waiting_page(ticket.id, ticket.snapshot(), full), status_code=503 if full else 200,
                            headers={"Retry-After": "5", "Cache-Control": "no-store"})

    @app.get("/queue/{ticket_id}/events", include_in_schema=False)
    async def ticket_events(ticket_id: str, request: Request) -> Response:
        """Server-sent events: the ticket's state each time it changes, until it is ready."""
        ticket = state["queue"].get(ticket_id)
        if ticket is None:
            raise HTTPException(404, "no such place in line (it expired); launch again")

        async def stream() -> AsyncIterator[str]:
            last = None
            while not await request.is_disconnected():
                ticket.touch()
                snap = ticket.snapshot()
                if snap != last:
                    yield f"data: {json.dumps(snap)}\n\n"
                    last = snap
                if ticket.state == "ready":
                    return
                if not await ticket.changed(timeout=5.0):
                    yield ": still waiting\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/stats", response_model=Stats)
    async def stats() -> Stats:
        """The pool at a glance (as tmpnb's ``/stats``)."""
        live = state["claimer"].live_spawners()
        profiles: dict[str, dict[str, int]] = {}
        for beat in live:
            for name, counts in beat.pools.items():
                agg = profiles.setdefault(name, {"available": 0, "starting": 0, "in_use": 0})
                agg["available"] += counts.warm if beat.healthy else 0
                agg["starting"] += counts.starting
                agg["in_use"] += counts.claimed
        return Stats(
            available=sum(p["available"] for p in profiles.values()),
            capacity=sum(b.capacity for b in live if b.healthy),
            in_use=sum(p["in_use"] for p in profiles.values()),
            starting=sum(p["starting"] for p in profiles.values()),
            waiting=sum(b.waiting for b in live) + state["queue"].waiting(),
            spawners=len(live),
            healthy_spawners=sum(1 for b in live if b.healthy),
            profiles=profiles,
        )

    @app.get("/healthz", responses={503: {"description": "not connected to the bus"}})
    async def healthz() -> JSONResponse:
        """200 while the gateway is connected to the bus."""
        ok = "bus" in state and the_bus().nc.is_connected
        return JSONResponse({"ok": ok, "version": __version__}, 200 if ok else 503)

    @app.api_route("/user/{session_id}/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def ended(request: Request, session_id: str, rest: str = "") -> Response:
        # Path routing: Traefik sends /user/<id>/ here only when no sandbox has that id (any more).
        # Host routing: an old link; a live sandbox is on its own origin, never served here.
        rec = state["records"].get(session_id) if origins.by_host else None
        if rec is not None and rec.state == State.CLAIMED:
            query = request.url.query
            return RedirectResponse(origins.sandbox_url(rec.id) + rest + (f"?{query}" if query else ""), status_code=302)
        return ended_answer(rest, request.headers.get("accept", ""))

    document = app.openapi

    def openapi() -> dict[str, Any]:
        """The OpenAPI document, with what the configuration decides: the profile names."""
        if app.openapi_schema is None:
            schema = document()
            names = {"enum": sorted(settings.profiles), "type": "string"}
            schema["components"]["schemas"]["SessionRequest"]["properties"]["profile"]["anyOf"][0] = names
            for where in ("/spawn", "/spawn/{path}"):
                for param in schema["paths"][where]["get"]["parameters"]:
                    if param["name"] == "profile":
                        param["schema"]["anyOf"][0] = names
                    if param["name"] == "path":
                        param["schema"].update(pattern=RELATIVE_PATH, maxLength=1024)
                for code, answer in schema["paths"][where]["get"]["responses"].items():
                    if code >= "400":  # errors are JSON, also where the page itself is HTML
                        answer["content"].pop("text/html", None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    app.include_router(admin_router(settings, state))
    if settings.static_offload:
        # JupyterLab's own build: the same files every sandbox of this version serves itself.
        from jupyterlab.commands import get_app_dir

        app.mount("/static/lab", StaticFiles(directory=os.path.join(get_app_dir(), "static")), name="lab-static")

    return app

