"""The admin page and its API, on the admin's own origin (``NBPOOL_ADMIN_URL``).

Signing in with the admin token (``NBPOOL_ADMIN_TOKEN``) starts a server-side admin session: a
random id in a host-only, HttpOnly, SameSite=Strict cookie, its SHA-256 and a CSRF token on the
bus, so every gateway knows it. It ends after ``NBPOOL_ADMIN_SESSION_TTL`` or at sign-out.
Every change a session asks for carries the CSRF token (header ``X-CSRF-Token``, or the form
field ``csrf``), which only the admin page itself can read. Programs send
``Authorization: token <admin token>`` instead, a header no other page can send without a
CORS grant, and the admin sends none.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Form, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from nbpool import logs
from nbpool.gateway.pages import admin_page, login_page
from nbpool.gateway.schemas import RequestBody
from nbpool.gateway.state import gateway_of
from nbpool.gateway.tokens import from_authorization, same
from nbpool.models import AdminSession, Drain, State, encode
from nbpool.settings import GatewaySettings

__all__ = ["admin_router"]

log = logs.get("nbpool.gateway.admin")

COOKIE = "nbpool_admin"
CSRF_HEADER = "x-csrf-token"


class _DrainBody(RequestBody):
    draining: bool


def admin_router(settings: GatewaySettings) -> APIRouter:
    """Routes under ``/admin``; each finds the app's :class:`Gateway` (its bus, mirrors, tail, sessions)."""
    router = APIRouter(include_in_schema=False)
    secret = settings.admin_token
    secure = settings.admin_url.startswith("https://")

    async def signed_in(request: Request) -> AdminSession | None:
        return await gateway_of(request).admin_sessions.get(request.cookies.get(COOKIE, ""))

    async def require(request: Request, change: bool = False, form_csrf: str | None = None) -> None:
        """401 unless the admin token or a live admin session; 403 for a change without the CSRF token."""
        if not secret:
            raise HTTPException(401, "admin is off: set NBPOOL_ADMIN_TOKEN")
        given_token = from_authorization(request.headers.get("authorization"))
        if given_token is not None:
            if same(given_token, secret):
                return
            raise HTTPException(401, "wrong admin token")
        session = await signed_in(request)
        if session is None:
            raise HTTPException(401, "this needs an admin session (sign in at /admin) or the admin token")
        given = request.headers.get(CSRF_HEADER) or form_csrf or ""
        if change and not same(given, session.csrf):
            raise HTTPException(403, "a change needs the admin page's CSRF token (header X-CSRF-Token)")

    @router.get("/admin")
    async def page(request: Request) -> Response:
        session = await signed_in(request) if secret else None
        if session is None:
            note = "" if secret else "Admin is off: set NBPOOL_ADMIN_TOKEN to use it."
            return HTMLResponse(login_page(note), 401, headers={"Cache-Control": "no-store"})
        return HTMLResponse(admin_page(session.csrf), headers={"Cache-Control": "no-store"})

    @router.post("/admin/login")
    async def login(request: Request, token: str = Form(default="")) -> Response:
        if not secret or not same(token, secret):
            log.warning("admin sign-in refused")
            return HTMLResponse(login_page("That is not the admin token."), 401)
        session_id, session = await gateway_of(request).admin_sessions.start()
        response = RedirectResponse("/admin", status_code=303)
        # Host-only (no Domain): no other host, a sandbox least of all, ever gets it.
        response.set_cookie(COOKIE, session_id, httponly=True, samesite="strict", secure=secure, path="/admin",
                            max_age=int(session.expires_at - session.created_at))
        log.info("admin signed in")
        return response

    @router.post("/admin/logout")
    async def logout(request: Request, csrf: str = Form(default="")) -> Response:
        await require(request, change=True, form_csrf=csrf)
        await gateway_of(request).admin_sessions.end(request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/admin", status_code=303)
        response.delete_cookie(COOKIE, path="/admin", secure=secure, httponly=True, samesite="strict")
        log.info("admin signed out")
        return response

    @router.get("/admin/api/state")
    async def admin_state(request: Request) -> JSONResponse:
        await require(request)
        now = time.time()
        gw = gateway_of(request)
        live = gw.claimer.live_spawners()
        sessions = []
        for rec in sorted(gw.records.values(), key=lambda r: r.claimed_at or 0):
            if rec.state != State.CLAIMED:
                continue
            act = gw.activity.get(rec.id)
            last = max(rec.claimed_at or 0, act.last_activity if act else 0)
            sessions.append({"id": rec.id, "profile": rec.pool, "host": rec.host, "owner": rec.owner,
                             "age_s": now - (rec.claimed_at or now), "idle_s": now - last})
        drain = gw.control.get("drain")
        return JSONResponse({
            "spawners": [b.model_dump() for b in live],
            "available": sum(c.warm for b in live for c in b.pools.values()),
            "sessions": sessions,
            "events": [e.model_dump() for e in reversed(gw.tail.events)][:50],
            "draining": bool(drain and drain.draining),
        }, headers={"Cache-Control": "no-store"})

    @router.post("/admin/api/sessions/{session_id}/end", status_code=204)
    async def end(session_id: str, request: Request) -> Response:
        await require(request, change=True)
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            raise HTTPException(415, "send JSON (Content-Type: application/json)")
        ended = await gateway_of(request).end_session(session_id, "admin")
        if not ended:
            raise HTTPException(404, f"no live session {session_id}")
        return Response(status_code=204)

    @router.post("/admin/api/drain")
    async def drain(body: _DrainBody, request: Request) -> JSONResponse:
        await require(request, change=True)
        bus = gateway_of(request).bus
        kv = await bus.kv(bus.names.control)
        await kv.put("drain", encode(Drain(draining=body.draining, by="admin")))
        await bus.event("pool.drain" if body.draining else "pool.resume", cause="admin")
        log.info("drain set", extra={"draining": body.draining})
        return JSONResponse({"draining": body.draining})

    return router
