"""The sessions API: launch (``POST /sessions``), look at and end a session, the pool's figures, health."""

from __future__ import annotations

from typing import Annotated, Any

import nats.js.errors
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from nbpool import __version__
from nbpool.culler.policy import expires_at
from nbpool.gateway.errors import error_responses
from nbpool.gateway.links import lab_path
from nbpool.gateway.sandbox_files import SandboxUnreachable
from nbpool.gateway.schemas import SESSION_ID, SessionCreated, SessionInfo, SessionRequest, Stats, iso
from nbpool.gateway.state import Gateway, the_gateway
from nbpool.gateway.tokens import from_authorization, same
from nbpool.models import Activity, BadMessage, SandboxRecord, State, decode
from nbpool.snapshots import SnapshotError

__all__ = ["router"]

router = APIRouter()
TheGateway = Annotated[Gateway, Depends(the_gateway)]


_SNAPSHOT_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {**error_responses(404)[404], "description": "no such snapshot (with snapshot)"},
    410: {**error_responses(404)[404], "description": "the snapshot has expired (with snapshot)"},
}


@router.post("/sessions", status_code=201, response_model=SessionCreated,
             responses={**error_responses(413, 422, 429, 503), **_SNAPSHOT_ERRORS})
async def create_session(request: Request, gw: TheGateway, body: SessionRequest | None = None) -> SessionCreated:
    """Claim a warm sandbox. The answer's ``url`` opens JupyterLab (or the profile's UI) at once.

    When no sandbox is warm, or others are already waiting, the request waits in line (first
    come, first served, with browsers) for up to ``wait`` seconds, then answers 503 with its
    ``position`` (``reason`` ``waiting``); closing the connection leaves the line.

    With ``snapshot``, the session starts with a copy of that snapshot's notebook in its home folder,
    and ``url`` opens it (remix).
    """
    body = body or SessionRequest()
    page = lab_path(body.path)
    snap, data = None, b""
    if body.snapshot is not None:
        if not gw.origins.snapshot_url:
            raise HTTPException(404, "snapshots are off on this nbpool: NBPOOL_SNAPSHOT_URL is not set")
        try:
            snap = await gw.snapshots.info(body.snapshot)
            data = await gw.snapshots.notebook(snap)
        except SnapshotError as err:
            raise HTTPException(err.status, str(err)) from None
        except Exception as err:
            raise HTTPException(503, f"the snapshot store did not answer ({err.__class__.__name__}); try again",
                                headers={"Retry-After": "5"}) from err
        page = lab_path(body.path or snap.name)
    if body.wait is not None and body.wait > gw.settings.max_wait:
        raise HTTPException(422, f"wait may be at most {gw.settings.max_wait:g} s on this nbpool (NBPOOL_MAX_WAIT); "
                                 f"{body.wait:g} was asked")
    rec = await gw.launch(request, body.profile, page, body.wait)
    if snap is not None:
        try:
            await gw.remix_into(rec, snap, data)
        except SandboxUnreachable as err:
            raise HTTPException(503, f"{err}; try again", headers={"Retry-After": "2"}) from None
    return SessionCreated(
        id=rec.id,
        url=gw.lab_url(rec, page),
        token=rec.token,
        expires_at=iso(expires_at(rec, None, gw.policy)),
        profile=rec.pool,
        kernel_id=rec.kernel_id,
    )


async def authorized_record(
    gw: TheGateway,
    session_id: Annotated[str, Path(pattern=SESSION_ID)],
    authorization: Annotated[str | None, Header()] = None,
    token: Annotated[str | None, Query(description="the session's token (or an Authorization header)")] = None,
) -> SandboxRecord:
    """The session's record, if the request carries its token (401 without one, 403 with another)."""
    given = from_authorization(authorization) or token
    if not given:
        raise HTTPException(401, "this needs the session's token: 'Authorization: token <token>' or ?token=")
    kv = await gw.bus.kv(gw.bus.names.sandboxes)
    try:
        entry = await kv.get(session_id)
        rec = decode(SandboxRecord, entry.value or b"")
    except (nats.js.errors.KeyNotFoundError, BadMessage):
        raise HTTPException(404, f"no session {session_id} (it may have ended)") from None
    if rec.state not in (State.CLAIMED, State.ENDING) or not same(given, rec.token):
        raise HTTPException(403, "wrong token for this session")
    return rec


Authorized = Annotated[SandboxRecord, Depends(authorized_record)]


@router.get("/sessions/{session_id}", response_model=SessionInfo, responses=error_responses(401, 403, 404, 422))
async def get_session(rec: Authorized, gw: TheGateway) -> SessionInfo:
    """A session's state and times (needs the session's token)."""
    activity = None
    try:
        entry = await (await gw.bus.kv(gw.bus.names.activity)).get(rec.id)
        activity = decode(Activity, entry.value or b"")
    except (nats.js.errors.KeyNotFoundError, BadMessage):
        pass
    last = rec.claimed_at if activity is None else max(activity.last_activity, rec.claimed_at or 0)
    return SessionInfo(
        id=rec.id,
        state=rec.state,
        profile=rec.pool,
        created=iso(rec.created_at),
        claimed=iso(rec.claimed_at),
        last_activity=iso(last),
        expires_at=iso(expires_at(rec, activity, gw.policy)),
        url=gw.lab_url(rec),
    )


@router.delete("/sessions/{session_id}", status_code=204, responses=error_responses(401, 403, 404, 422))
async def delete_session(rec: Authorized, gw: TheGateway) -> Response:
    """End a session now: its server and its route are gone when this returns."""
    await gw.end_session(rec.id, "deleted")
    return Response(status_code=204)


@router.get("/api/stats", response_model=Stats)
async def stats(gw: TheGateway) -> Stats:
    """The pool at a glance (as tmpnb's ``/stats``)."""
    live = gw.claimer.live_spawners()
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
        waiting=sum(b.waiting for b in live) + gw.queue.waiting(),
        spawners=len(live),
        healthy_spawners=sum(1 for b in live if b.healthy),
        profiles=profiles,
    )


@router.get("/healthz", responses={503: {"description": "not connected to the bus"}})
async def healthz(gw: TheGateway) -> JSONResponse:
    """200 while the gateway is connected to the bus."""
    ok = gw.connected
    return JSONResponse({"ok": ok, "version": __version__}, 200 if ok else 503)
