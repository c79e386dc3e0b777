"""Snapshots over HTTP: publish a session's notebook, read it, view it, delete it, remix it.

- ``POST /sessions/{id}/snapshots`` (the session's token; also from the session's own pages, by
  CORS): the gateway reads the notebook from the sandbox, checks it, stores it (:mod:`nbpool.snapshots`).
- ``GET /snapshots/{id}``, ``GET /snapshots/{id}/notebook``, ``DELETE /snapshots/{id}`` (its delete token).
- ``GET /s/{id}`` on the snapshot origin: the notebook rendered read-only, without scripts
  (:mod:`nbpool.gateway.snapshot_view`); rendered once per gateway and kept (:class:`RenderedViews`).
- ``GET /remix/{id}``: a launch link, as ``/spawn``, whose new session starts with the notebook.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import time
from typing import Annotated, Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from nbpool import logs
from nbpool.gateway.errors import error_responses
from nbpool.gateway.links import tree_page
from nbpool.gateway.pages import waiting_page
from nbpool.gateway.sandbox_files import (
    BadNotebook,
    NoSuchNotebook,
    SandboxUnreachable,
    TooLarge,
    check_notebook,
)
from nbpool.gateway.schemas import SnapshotCreated, SnapshotInfo, SnapshotRequest, iso
from nbpool.gateway.sessions import Authorized
from nbpool.gateway.snapshot_view import VIEW_HEADERS, missing_page, render_view
from nbpool.gateway.state import Gateway, the_gateway
from nbpool.gateway.tokens import from_authorization
from nbpool.metrics import SNAPSHOTS
from nbpool.models import SandboxRecord, Snapshot, State
from nbpool.snapshots import SNAPSHOT_ID, SnapshotError, SnapshotNotFound, StoreFull

__all__ = ["router"]

log = logs.get("nbpool.gateway.snapshots")

router = APIRouter()
TheGateway = Annotated[Gateway, Depends(the_gateway)]
SnapshotId = Annotated[str, Path(pattern=SNAPSHOT_ID, description="the snapshot's id (16 hexadecimal digits)")]

_MEANING = {
    404: "no such snapshot (never was, or deleted); or no such notebook in the session",
    410: "the snapshot has expired",
    413: "the notebook is larger than NBPOOL_SNAPSHOT_MAX_BYTES",
    503: "the session's server or the bus did not answer (see Retry-After)",
    507: "the snapshot store is full (NBPOOL_SNAPSHOT_BUDGET)",
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    answers = error_responses(*(c for c in codes if c not in _MEANING))
    for code in codes:
        if code in _MEANING:
            answers.update({code: {**error_responses(404)[404], "description": _MEANING[code]}})
    return answers


_HTML = {"text/html": {"schema": {"type": "string"}}}


def _store_failed(err: Exception) -> HTTPException:
    if isinstance(err, SnapshotError):
        return HTTPException(err.status, str(err))
    return HTTPException(503, f"the snapshot store did not answer ({err.__class__.__name__}); try again",
                         headers={"Retry-After": "5"})


async def _snapshot(gw: Gateway, snapshot_id: str) -> Snapshot:
    try:
        return await gw.snapshots.info(snapshot_id)
    except SnapshotError as err:
        raise _store_failed(err) from None
    except Exception as err:  # the bus away for longer than the retries
        raise _store_failed(err) from err


def _info(gw: Gateway, snap: Snapshot) -> dict[str, Any]:
    return {
        "id": snap.id, "name": snap.name, "created": iso(snap.created), "expires_at": iso(snap.expires_at),
        "size": snap.size, **gw.snapshot_links(snap.id),
    }


def _enabled(gw: Gateway) -> None:
    if not gw.origins.snapshot_url:
        raise HTTPException(404, "snapshots are off on this nbpool: NBPOOL_SNAPSHOT_URL is not set")


# ---- the API --------------------------------------------------------------------------------


@router.post("/sessions/{session_id}/snapshots", status_code=201, response_model=SnapshotCreated,
             responses=_responses(401, 403, 404, 413, 422, 429, 503, 507), tags=["snapshots"])
async def create_snapshot(request: Request, rec: Authorized, gw: TheGateway, body: SnapshotRequest) -> SnapshotCreated:
    """Publish a notebook of the session as a snapshot anyone with its link can view and remix.

    The notebook is read as it is saved in the session (save it first). It must be a valid notebook
    within ``NBPOOL_SNAPSHOT_MAX_BYTES``; it lives ``NBPOOL_SNAPSHOT_TTL`` unless deleted with the
    ``delete_token``, which is shown only in this answer. Sandboxes' own pages may call this (CORS).
    """
    _enabled(gw)
    if rec.state != State.CLAIMED:
        raise HTTPException(404, f"session {rec.id} has ended")
    client = gw.client_of(request)
    wait = gw.snapshot_limiter.take(client)
    if wait > 0:
        raise HTTPException(429, f"too many snapshots from {client}; try again in {wait:.0f} s",
                            headers={"Retry-After": str(max(1, round(wait)))})
    max_bytes = gw.settings.snapshot_max_bytes
    try:
        data = await gw.files.fetch(rec, body.path, max_bytes)
        await anyio.to_thread.run_sync(check_notebook, data)
    except NoSuchNotebook as err:
        raise HTTPException(404, str(err)) from None
    except BadNotebook as err:
        raise HTTPException(422, str(err)) from None
    except TooLarge as err:
        raise HTTPException(413, str(err)) from None
    except SandboxUnreachable as err:
        raise HTTPException(503, str(err), headers={"Retry-After": "5"}) from None
    try:
        made = await gw.snapshots.create(body.path.rsplit("/", 1)[-1], data, session=rec.id, owner=client)
    except StoreFull as err:
        raise HTTPException(507, str(err)) from None
    except Exception as err:
        raise _store_failed(err) from err
    SNAPSHOTS.labels("published").inc()
    await gw.bus.event("snapshot.created", rec.id, host=rec.host,
                       data={"snapshot": made.snapshot.id, "bytes": made.snapshot.size})
    return SnapshotCreated(**_info(gw, made.snapshot), delete_token=made.delete_token)


@router.get("/snapshots/{snapshot_id}", response_model=SnapshotInfo, responses=_responses(404, 410, 422, 503),
            tags=["snapshots"])
async def get_snapshot(snapshot_id: SnapshotId, gw: TheGateway) -> SnapshotInfo:
    """A snapshot's name, size, times and links (anyone with its id may see it)."""
    _enabled(gw)
    return SnapshotInfo(**_info(gw, await _snapshot(gw, snapshot_id)))


@router.get("/snapshots/{snapshot_id}/notebook", response_class=Response, tags=["snapshots"],
            responses={200: {"description": "the notebook file (a download)",
                             "content": {"application/x-ipynb+json": {"schema": {"type": "object"}}}},
                       **_responses(404, 410, 422, 503)})
async def get_snapshot_notebook(snapshot_id: SnapshotId, gw: TheGateway) -> Response:
    """The snapshot's notebook, as a file to download (never rendered on this origin)."""
    _enabled(gw)
    snap = await _snapshot(gw, snapshot_id)
    try:
        data = await gw.snapshots.notebook(snap)
    except Exception as err:
        raise _store_failed(err) from err
    filename = re.sub(r"[^A-Za-z0-9._ -]", "_", snap.name) or "notebook.ipynb"
    return Response(data, media_type="application/x-ipynb+json", headers={
        "Content-Disposition": f"attachment; filename=\"{filename}\"; filename*=UTF-8''{quote(snap.name)}",
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "Cache-Control": "private, max-age=300",
    })


@router.delete("/snapshots/{snapshot_id}", status_code=204, responses=_responses(401, 403, 404, 422, 503),
               tags=["snapshots"])
async def delete_snapshot(
    snapshot_id: SnapshotId, gw: TheGateway,
    authorization: Annotated[str | None, Header()] = None,
    token: Annotated[str | None, Query(description="the delete token (or an Authorization header)")] = None,
) -> Response:
    """Delete a snapshot with the ``delete_token`` its creation answered: its view and notebook are gone
    (the notebook stays stored while another snapshot holds the same one)."""
    _enabled(gw)
    given = from_authorization(authorization) or token
    if not given:
        raise HTTPException(401, "this needs the snapshot's delete token: 'Authorization: token <delete_token>' or ?token=")
    try:
        await gw.snapshots.delete(snapshot_id, given)
    except Exception as err:
        raise _store_failed(err) from err
    gw.rendered.drop(snapshot_id)
    SNAPSHOTS.labels("deleted").inc()
    await gw.bus.event("snapshot.deleted", data={"snapshot": snapshot_id})
    return Response(status_code=204)


# ---- pages ----------------------------------------------------------------------------------


def _missing(gw: Gateway, err: SnapshotError) -> HTMLResponse:
    status = err.status if err.status in (404, 410) else 404
    return HTMLResponse(missing_page(status, str(err), gw.settings.public_url), status,
                        headers={**VIEW_HEADERS, "Cache-Control": "no-store"})


@router.get("/s/{snapshot_id}", response_class=HTMLResponse, tags=["snapshots"], summary="View a snapshot",
            responses={200: {"description": "the notebook, rendered read-only (no script runs)", "content": _HTML},
                       307: {"description": "on the gateway's origin: the same page on the snapshot origin",
                             "headers": {"Location": {"schema": {"type": "string"}}}},
                       404: {"description": "no such snapshot", "content": _HTML},
                       410: {"description": "the snapshot has expired", "content": _HTML},
                       503: {"description": "the bus did not answer", "content": _HTML}})
async def view(snapshot_id: Annotated[str, Path(description="the snapshot's id; anything else gets the 404 page")],
               request: Request, gw: TheGateway) -> Response:
    """The snapshot's page: the notebook with its outputs, a Remix button and a download link."""
    if not re.match(SNAPSHOT_ID, snapshot_id) or not gw.origins.snapshot_url:
        return _missing(gw, SnapshotNotFound("no such snapshot"))
    try:
        snap = await gw.snapshots.info(snapshot_id)
        page = await _rendered(gw, snap)
    except SnapshotError as err:
        return _missing(gw, err)
    except BadNotebook:  # stored notebooks were checked; a damaged store is a missing snapshot
        return _missing(gw, SnapshotNotFound(f"snapshot {snapshot_id} cannot be read"))
    except Exception as err:  # the bus away for longer than the retries
        log.warning("snapshot view failed", extra={"snapshot": snapshot_id, "error": repr(err)})
        return HTMLResponse(missing_page(503, "Snapshots cannot be read right now; try again in a minute.",
                                         gw.settings.public_url), 503,
                            headers={**VIEW_HEADERS, "Cache-Control": "no-store", "Retry-After": "30"})
    left = max(0, int(snap.expires_at - time.time()))
    headers = {**VIEW_HEADERS, "Cache-Control": f"public, max-age={min(left, 3600)}", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        return HTMLResponse(page, headers={**headers, "Content-Encoding": "gzip"})
    return HTMLResponse(gzip.decompress(page), headers=headers)


async def _rendered(gw: Gateway, snap: Snapshot) -> bytes:
    """The snapshot's page, gzipped: from the cache, or rendered once however many ask at the same time
    (a big notebook takes seconds of CPU to render; its page is mostly JupyterLab's CSS, which gzip
    shrinks tenfold)."""
    page = gw.rendered.get(snap.id)
    if page is not None:
        SNAPSHOTS.labels("cached").inc()
        return page
    pending = gw.rendering.get(snap.id)
    if pending is not None:
        return await asyncio.shield(pending)

    async def render() -> bytes:
        data = await gw.snapshots.notebook(snap)
        notebook = await anyio.to_thread.run_sync(check_notebook, data)
        links = gw.snapshot_links(snap.id)
        html = await anyio.to_thread.run_sync(lambda: render_view(
            notebook, name=snap.name, created=iso(snap.created) or "", expires_at=iso(snap.expires_at) or "",
            remix_url=links["remix_url"], download_url=links["notebook_url"]))
        return await anyio.to_thread.run_sync(gzip.compress, html.encode(), 6)

    task = gw.rendering[snap.id] = asyncio.ensure_future(render())
    try:
        page = await asyncio.shield(task)
    finally:
        if task.done():
            gw.rendering.pop(snap.id, None)
    gw.rendered.put(snap.id, page)
    SNAPSHOTS.labels("rendered").inc()
    return page


@router.get("/remix/{snapshot_id}", response_class=HTMLResponse, tags=["snapshots"],
            summary="Launch with a snapshot's notebook (remix)",
            responses={200: {"description": "a waiting page: the visitor is in line", "content": _HTML},
                       302: {"description": "straight into a fresh server with the notebook open",
                             "headers": {"Location": {"schema": {"type": "string"}}}},
                       404: {"description": "no such snapshot", "content": _HTML},
                       410: {"description": "the snapshot has expired", "content": _HTML},
                       503: {"description": "no vacancy (the page keeps the visitor's place), or the bus did not "
                                            "answer", "content": _HTML},
                       **error_responses(422, 429)})
async def remix(request: Request, snapshot_id: SnapshotId, gw: TheGateway) -> Response:
    """A fresh server with a copy of the snapshot's notebook, opened in JupyterLab; as ``/spawn``,
    with a waiting page when every sandbox is taken."""
    if not gw.origins.snapshot_url:
        return _missing(gw, SnapshotNotFound("snapshots are off on this nbpool"))
    try:
        snap = await gw.snapshots.info(snapshot_id)
        data = await gw.snapshots.notebook(snap)
    except SnapshotError as err:
        return _missing(gw, err)
    except Exception as err:
        raise _store_failed(err) from err
    profile, client = gw.admit(request, None)
    page = tree_page(snap.name)

    async def prepare(rec: SandboxRecord) -> None:
        await gw.remix_into(rec, snap, data)

    got = await gw.claim_or_join(profile, client, page, prepare)
    if isinstance(got, SandboxRecord):
        await _prepared(gw, got, prepare)
        return RedirectResponse(gw.lab_url(got, page), status_code=302)
    ticket = got
    await ticket.changed(timeout=0.3, since=ticket.version)
    if ticket.state == "ready" and ticket.url:
        return RedirectResponse(ticket.url, status_code=302)
    full = ticket.state == "full"
    return HTMLResponse(
        waiting_page(ticket.id, ticket.snapshot(), full), status_code=503 if full else 200,
        headers={"Retry-After": "5", "Cache-Control": "no-store"} if full else {"Cache-Control": "no-store"},
    )


async def _prepared(gw: Gateway, rec: SandboxRecord, prepare: Any) -> None:
    try:
        await prepare(rec)
    except SandboxUnreachable as err:
        raise HTTPException(503, f"{err}; try again", headers={"Retry-After": "2"}) from None
