"""The gateway's HTTP API (OpenAPI at ``/docs``).

It holds no state of its own: records and activity are read from the bus, claims go to the
spawners over request/reply, and ending a session is a compare-and-set on the record.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

import nats.errors
import nats.js.errors
from fastapi import Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nbpool import __version__, logs
from nbpool.bus import Bus, KVMirror
from nbpool.culler.policy import CullPolicy, expires_at
from nbpool.gateway.claims import Claimer, NoCapacity
from nbpool.gateway.ratelimit import RateLimiter
from nbpool.models import Activity, BadMessage, SandboxRecord, SpawnerBeat, State, decode, encode
from nbpool.names import Names
from nbpool.settings import GatewaySettings

__all__ = ["create_app"]

log = logs.get("nbpool.gateway")

_ID = r"^[a-z0-9]{4,40}$"
_PATH_OK = re.compile(r"^[^\x00-\x1f\\]*$")


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# ---- request and response documents ---------------------------------------------------------


class SessionRequest(BaseModel):
    """What a launch may ask for. Every field is optional."""

    model_config = ConfigDict(extra="forbid")

    profile: str | None = Field(default=None, description="a configured profile; the default profile if absent")
    path: str = Field(default="", max_length=1024, description="a file or folder to open, relative to the home folder")

    @field_validator("path")
    @classmethod
    def _relative_path(cls, value: str) -> str:
        value = value.strip("/")
        if not _PATH_OK.match(value) or ".." in value.split("/"):
            raise ValueError("path must be relative, without '..', backslashes or control characters")
        return value


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
        the_bus = bus or await Bus.connect(settings.nats_url, Names(settings.instance), "gateway")
        await the_bus.ensure()
        spawners: KVMirror[SpawnerBeat] = KVMirror(the_bus, the_bus.names.spawners, SpawnerBeat)
        mirror = asyncio.ensure_future(spawners.run())
        presence = asyncio.ensure_future(the_bus.presence("gateway"))
        await spawners.ready.wait()
        state.update(bus=the_bus, spawners=spawners, claimer=Claimer(the_bus, spawners, settings.claim_timeout))
        log.info("started", extra={"nats": settings.nats_url, "instance": settings.instance})
        try:
            yield
        finally:
            mirror.cancel()
            presence.cancel()
            await asyncio.gather(mirror, presence, return_exceptions=True)
            if own_bus:
                await the_bus.close()

    app = FastAPI(
        title="nbpool",
        version=__version__,
        summary="Instant, temporary Jupyter servers from a warm pool.",
        lifespan=lifespan,
    )
    app.add_middleware(_BodyLimit, limit=settings.max_body_bytes)

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

    def lab_url(rec: SandboxRecord, path: str = "", suffix: str = "lab") -> str:
        where = suffix if not path else f"{suffix}/tree/{quote(path)}"
        return f"{settings.public_url}{rec.path}{where}?token={rec.token}"

    async def launch(request: Request, profile: str | None) -> SandboxRecord:
        profile = profile or settings.default_profile
        if profile not in settings.profiles:
            raise HTTPException(
                422, f"unknown profile {profile!r}; choose one of: {', '.join(sorted(settings.profiles))}"
            )
        client = client_of(request)
        wait = limiter.take(client)
        if wait > 0:
            raise HTTPException(
                429,
                f"too many launches from {client}; try again in {wait:.0f} s",
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        began = time.perf_counter()
        rec = await state["claimer"].claim(profile, owner=client)
        log.info("claimed", extra={"sandbox": rec.id, "client": client, "ms": round((time.perf_counter() - began) * 1000, 2)})
        return rec

    @app.exception_handler(NoCapacity)
    async def _full(request: Request, exc: NoCapacity) -> Response:
        headers = {"Retry-After": str(exc.retry_after)}
        if "text/html" in request.headers.get("accept", "") and request.method == "GET":
            return HTMLResponse(_page("No vacancy", f"<p>{html.escape(exc.reason)}.</p><p>This page tries again "
                                      f"in {exc.retry_after} seconds.</p>", refresh=exc.retry_after), 503, headers)
        return JSONResponse({"detail": exc.reason, "reason": "full"}, 503, headers)

    @app.post(
        "/sessions",
        status_code=201,
        response_model=SessionCreated,
        responses={422: {"description": "bad input"}, 429: {"description": "rate limited"}, 503: {"description": "full"}},
    )
    async def create_session(request: Request, body: SessionRequest | None = None) -> SessionCreated:
        """Claim a warm sandbox. The answer's ``url`` opens JupyterLab at once."""
        body = body or SessionRequest()
        rec = await launch(request, body.profile)
        return SessionCreated(
            id=rec.id,
            url=lab_url(rec, body.path),
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
        given = token
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() in ("token", "bearer") and value:
                given = value.strip()
        if not given:
            raise HTTPException(401, "this needs the session's token: 'Authorization: token <token>' or ?token=")
        kv = await the_bus().kv(the_bus().names.sandboxes)
        try:
            entry = await kv.get(session_id)
            rec = decode(SandboxRecord, entry.value or b"")
        except (nats.js.errors.KeyNotFoundError, BadMessage):
            raise HTTPException(404, f"no session {session_id} (it may have ended)") from None
        if rec.state not in (State.CLAIMED, State.ENDING) or not hmac.compare_digest(rec.token, given):
            raise HTTPException(403, "wrong token for this session")
        return rec, entry.revision or 0

    @app.get("/sessions/{session_id}", response_model=SessionInfo, responses={401: {}, 403: {}, 404: {}})
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

    @app.delete("/sessions/{session_id}", status_code=204, responses={401: {}, 403: {}, 404: {}})
    async def delete_session(found: tuple[SandboxRecord, int] = Depends(authorized_record)) -> Response:
        """End a session now: its server and its route are gone when this returns."""
        rec, rev = found
        kv = await the_bus().kv(the_bus().names.sandboxes)
        for _ in range(5):
            if rec.state == State.ENDING:
                break
            try:
                await kv.update(rec.id, encode(rec.moved(State.ENDING, ending_reason="deleted")), last=rev)
                await the_bus().event("sandbox.ending", rec.id, host=rec.host, cause="deleted")
                break
            except nats.js.errors.KeyWrongLastSequenceError:
                try:
                    entry = await kv.get(rec.id)
                except nats.js.errors.KeyNotFoundError:
                    return Response(status_code=204)
                rec, rev = decode(SandboxRecord, entry.value or b""), entry.revision or 0
        # The owning spawner removes it; wait (bounded) so the caller can rely on it being gone.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            try:
                await kv.get(rec.id)
            except nats.js.errors.KeyNotFoundError:
                break
            await asyncio.sleep(0.05)
        return Response(status_code=204)

    @app.get("/spawn", include_in_schema=True, summary="Launch and open (tmpnb-style links)")
    @app.get("/spawn/{path:path}", summary="Launch and open a path (tmpnb-style links)")
    async def spawn(request: Request, path: str = "", profile: str | None = None) -> Response:
        """Claim a sandbox and redirect the browser into it (``/spawn/<path>`` opens that file)."""
        try:
            target = SessionRequest(path=path)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        rec = await launch(request, profile)
        return RedirectResponse(lab_url(rec, target.path), status_code=302)

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
            waiting=sum(b.waiting for b in live),
            spawners=len(live),
            healthy_spawners=sum(1 for b in live if b.healthy),
            profiles=profiles,
        )

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 while the gateway is connected to the bus."""
        ok = "bus" in state and the_bus().nc.is_connected
        return JSONResponse({"ok": ok, "version": __version__}, 200 if ok else 503)

    @app.api_route("/user/{session_id}/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def ended(request: Request, session_id: str, rest: str = "") -> Response:
        # Traefik sends /user/<id>/ here only when no sandbox has that id (any more).
        again = "/spawn" + (f"/{quote(rest[len('lab/tree/'):])}" if rest.startswith("lab/tree/") else "")
        if "text/html" in request.headers.get("accept", ""):
            body = (f"<p>This notebook server has ended (or never existed).</p>"
                    f"<p><a class=button href=\"{html.escape(again)}\">Start a new one</a></p>")
            return HTMLResponse(_page("Server ended", body), 404)
        return JSONResponse({"detail": "this notebook server has ended or never existed", "spawn": again}, 404)

    return app


def _page(title: str, body: str, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{meta}<title>{html.escape(title)} · nbpool</title>"
        "<style>body{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;line-height:1.5}"
        "a.button{display:inline-block;padding:.6rem 1.2rem;background:#f37626;color:#fff;border-radius:.4rem;"
        "text-decoration:none}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
