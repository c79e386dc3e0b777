"""The admin page and its API, behind the admin token (``NBPOOL_ADMIN_TOKEN``).

Sign-in sets a cookie holding an HMAC of the token (never the token itself), HttpOnly and
SameSite=Strict; API calls may instead send ``Authorization: token <admin token>``. State
changes are POSTs with a JSON body, which a cross-site form cannot send.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import time
from typing import Any

from fastapi import APIRouter, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from nbpool import logs
from nbpool.bus import Bus, KVMirror
from nbpool.gateway.pages import admin_page, login_page
from nbpool.models import Activity, BadMessage, Drain, Event, SandboxRecord, State, decode, encode
from nbpool.settings import GatewaySettings
from pydantic import BaseModel

__all__ = ["EventTail", "admin_router"]

log = logs.get("nbpool.gateway.admin")

COOKIE = "nbpool_admin"


class EventTail:
    """The most recent lifecycle events, for the admin page (the last 10 minutes, at most ``size``)."""

    def __init__(self, bus: Bus, size: int = 100) -> None:
        self._bus = bus
        self.events: collections.deque[Event] = collections.deque(maxlen=size)

    async def run(self) -> None:
        while True:
            try:
                sub = await self._bus.follow_events(since=time.time() - 600)
                generation = self._bus.generation
                pending: asyncio.Future[Any] | None = None
                try:
                    while self._bus.generation == generation:
                        # asyncio.wait, not next_msg's own timeout: that one can swallow a cancellation.
                        pending = pending or asyncio.ensure_future(sub.next_msg(timeout=None))
                        done, _ = await asyncio.wait({pending}, timeout=1.0)
                        if not done:
                            continue
                        msg, pending = pending.result(), None
                        try:
                            self.events.append(decode(Event, msg.data))
                        except BadMessage:
                            continue
                finally:
                    if pending is not None:
                        pending.cancel()
                await sub.unsubscribe()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the bus went away: follow again once it is back
                log.debug("event tail restarting", extra={"error": repr(err)})
                await asyncio.sleep(1.0)


class _DrainBody(BaseModel):
    draining: bool


def admin_router(settings: GatewaySettings, state: dict[str, Any]) -> APIRouter:
    """Routes under ``/admin``. ``state`` holds the bus, the mirrors and the event tail."""
    router = APIRouter(include_in_schema=False)
    secret = settings.admin_token.encode()
    cookie_value = hmac.new(secret, b"nbpool-admin", hashlib.sha256).hexdigest() if secret else ""

    def authorized(request: Request) -> bool:
        if not secret:
            return False  # no admin token set: nobody is admin
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("token", "bearer") and hmac.compare_digest(value.strip().encode(), secret):
            return True
        return hmac.compare_digest(request.cookies.get(COOKIE, ""), cookie_value)

    def require(request: Request) -> None:
        if not authorized(request):
            raise HTTPException(401, "this needs the admin token")

    @router.get("/admin")
    async def page(request: Request) -> Response:
        if not authorized(request):
            note = "" if secret else "Admin is off: set NBPOOL_ADMIN_TOKEN to use it."
            return HTMLResponse(login_page(note), 401)
        return HTMLResponse(admin_page(), headers={"Cache-Control": "no-store"})

    @router.post("/admin/login")
    async def login(token: str = Form(default="")) -> Response:
        if not secret or not hmac.compare_digest(token.encode(), secret):
            log.warning("admin sign-in refused")
            return HTMLResponse(login_page("That is not the admin token."), 401)
        response = RedirectResponse("/admin", status_code=303)
        response.set_cookie(COOKIE, cookie_value, httponly=True, samesite="strict", max_age=12 * 3600,
                            secure=settings.public_url.startswith("https://"), path="/admin")
        return response

    @router.post("/admin/logout")
    async def logout() -> Response:
        response = RedirectResponse("/admin", status_code=303)
        response.delete_cookie(COOKIE, path="/admin")
        return response

    @router.get("/admin/api/state")
    async def admin_state(request: Request) -> JSONResponse:
        require(request)
        now = time.time()
        records: KVMirror[SandboxRecord] = state["records"]
        activity: KVMirror[Activity] = state["activity"]
        live = state["claimer"].live_spawners()
        sessions = []
        for rec in sorted(records.values(), key=lambda r: r.claimed_at or 0):
            if rec.state != State.CLAIMED:
                continue
            act = activity.get(rec.id)
            last = max(rec.claimed_at or 0, act.last_activity if act else 0)
            sessions.append({"id": rec.id, "profile": rec.pool, "host": rec.host, "owner": rec.owner,
                             "age_s": now - (rec.claimed_at or now), "idle_s": now - last})
        drain = state["control"].get("drain")
        return JSONResponse({
            "spawners": [b.model_dump() for b in live],
            "available": sum(c.warm for b in live for c in b.pools.values()),
            "sessions": sessions,
            "events": [e.model_dump() for e in reversed(state["tail"].events)][:50],
            "draining": bool(drain and drain.draining),
        }, headers={"Cache-Control": "no-store"})

    @router.post("/admin/api/sessions/{session_id}/end", status_code=204)
    async def end(session_id: str, request: Request) -> Response:
        require(request)
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            raise HTTPException(415, "send JSON (Content-Type: application/json)")
        ended = await state["end_session"](session_id, "admin")
        if not ended:
            raise HTTPException(404, f"no live session {session_id}")
        return Response(status_code=204)

    @router.post("/admin/api/drain")
    async def drain(body: _DrainBody, request: Request) -> JSONResponse:
        require(request)
        bus: Bus = state["bus"]
        kv = await bus.kv(bus.names.control)
        await kv.put("drain", encode(Drain(draining=body.draining, by="admin")))
        await bus.event("pool.drain" if body.draining else "pool.resume", cause="admin")
        log.info("drain set", extra={"draining": body.draining})
        return JSONResponse({"draining": body.draining})

    return router
