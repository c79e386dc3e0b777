"""Launching from a link: the landing page, ``/spawn`` (tmpnb-style links), the line, and old links."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse, StreamingResponse

from nbpool.gateway.errors import error_responses
from nbpool.gateway.links import BadLink, lab_path
from nbpool.gateway.pages import landing_page, waiting_page
from nbpool.gateway.schemas import ProfileQuery, UrlPathQuery
from nbpool.gateway.state import Gateway, the_gateway
from nbpool.models import SandboxRecord, State

__all__ = ["router"]

router = APIRouter()
TheGateway = Annotated[Gateway, Depends(the_gateway)]

SPAWN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "a waiting page: the visitor is in line, and it opens the server when ready",
          "content": {"text/html": {"schema": {"type": "string"}}}},
    302: {"description": "straight into a warm server: Location is its URL on its own origin, with the token",
          "headers": {"Location": {"schema": {"type": "string"}}}},
    503: {"description": "no vacancy: every sandbox is in use; the page keeps the visitor's place (Retry-After)",
          "content": {"text/html": {"schema": {"type": "string"}}}},
    **error_responses(422, 429),
}


@router.get("/", include_in_schema=False)
async def landing(gw: TheGateway) -> HTMLResponse:
    settings = gw.settings
    profiles = {name: p.description for name, p in settings.profiles.items()}
    return HTMLResponse(landing_page(profiles, settings.default_profile, round(settings.idle_timeout / 60)))


@router.get("/spawn", summary="Launch and open (tmpnb-style links)", response_class=HTMLResponse,
            responses=SPAWN_RESPONSES)
async def spawn_plain(request: Request, gw: TheGateway, profile: ProfileQuery = None, urlpath: UrlPathQuery = None) -> Response:
    """Claim a sandbox and send the browser into it (JupyterLab, or ``?urlpath=``)."""
    return await spawn(request, gw, "", profile, urlpath)


@router.get("/spawn/{path:path}", summary="Launch and open a path (tmpnb-style links)", response_class=HTMLResponse,
            responses=SPAWN_RESPONSES)
async def spawn(request: Request, gw: TheGateway, path: str, profile: ProfileQuery = None,
                urlpath: UrlPathQuery = None) -> Response:
    """Claim a sandbox and send the browser into it.

    ``/spawn/lab/tree/<path>``, ``/spawn/notebooks/<path>``, ``/spawn/edit/<path>``, ``/spawn/<path>``
    and ``?urlpath=`` open that page, in JupyterLab or, for a profile with ``"ui": "notebook"``,
    in Jupyter Notebook 7. With a warm sandbox this is a 302 straight there;
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
    profile, client = gw.admit(request, profile)
    got = await gw.claim_or_join(profile, client, page)
    if isinstance(got, SandboxRecord):
        return RedirectResponse(gw.lab_url(got, page), status_code=302)
    ticket = got
    await ticket.changed(timeout=0.3, since=ticket.version)  # a sandbox about to turn warm needs no waiting page
    if ticket.state == "ready" and ticket.url:
        return RedirectResponse(ticket.url, status_code=302)
    full = ticket.state == "full"
    return HTMLResponse(
        waiting_page(ticket.id, ticket.snapshot(), full),
        status_code=503 if full else 200,
        headers={"Retry-After": "5", "Cache-Control": "no-store"} if full else {"Cache-Control": "no-store"},
    )


@router.get("/queue/{ticket_id}", include_in_schema=False)
async def ticket_page(ticket_id: str, gw: TheGateway) -> Response:
    """A visitor's place in line (the waiting page without scripts reloads this)."""
    ticket = gw.queue.get(ticket_id)
    if ticket is None:
        return RedirectResponse("/spawn", status_code=303)
    ticket.touch()
    if ticket.state == "ready" and ticket.url:
        return RedirectResponse(ticket.url, status_code=302)
    full = ticket.state == "full"
    return HTMLResponse(waiting_page(ticket.id, ticket.snapshot(), full), status_code=503 if full else 200,
                        headers={"Retry-After": "5", "Cache-Control": "no-store"})


@router.get("/queue/{ticket_id}/events", include_in_schema=False)
async def ticket_events(ticket_id: str, request: Request, gw: TheGateway) -> Response:
    """Server-sent events: the ticket's state each time it changes, until it is ready."""
    ticket = gw.queue.get(ticket_id)
    if ticket is None:
        raise HTTPException(404, "no such place in line (it expired); launch again")

    async def stream() -> AsyncIterator[str]:
        last = None
        while not await request.is_disconnected():
            ticket.touch()
            seen = ticket.version
            snap = ticket.snapshot()
            if snap != last:
                yield f"data: {json.dumps(snap)}\n\n"
                last = snap
            if ticket.state in ("ready", "failed"):
                return
            if not await ticket.changed(timeout=5.0, since=seen):
                yield ": still waiting\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.api_route("/user/{session_id}/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def ended(request: Request, gw: TheGateway, session_id: str, rest: str = "") -> Response:
    # Path routing: Traefik sends /user/<id>/ here only when no sandbox has that id (any more).
    # Host routing: an old link; a live sandbox is on its own origin, never served here.
    rec = gw.records.get(session_id) if gw.origins.by_host else None
    if rec is not None and rec.state == State.CLAIMED:
        query = request.url.query
        return RedirectResponse(gw.origins.sandbox_url(rec.id) + rest + (f"?{query}" if query else ""), status_code=302)
    return gw.ended_answer(session_id, rest, request.headers.get("accept", ""))
