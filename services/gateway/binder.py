"""Binder's launch protocol, so thebe pages, Jupyter Book and Binder links work against nbpool.

- ``GET /build/{provider}/{spec}``: server-sent events in BinderHub's format, one JSON object per
  event: ``{"phase": ..., "message": ...}``, phases ``built`` or ``waiting`` (in line), then
  ``launching``, then ``ready`` with ``url`` (the sandbox's own origin, ending in ``/``) and
  ``token``, last; or ``failed`` with the reason, last. The claim goes through the same line,
  rate limit and per-client cap as ``/spawn``; a comment every few seconds keeps proxies from
  closing an idle stream; a client that goes away leaves the line.
- ``GET /v2/{provider}/{spec}?urlpath=|labpath=|filepath=``: as ``/spawn`` with that page.

nbpool builds nothing from repositories: the spec chooses a prebuilt profile through
``NBPOOL_BINDER_SPECS`` (the first pattern that matches ``<provider>/<spec>``; none: the default
profile, or 404 with ``NBPOOL_BINDER_REFUSE_UNKNOWN``). The ref is part of the spec: ignored
unless a pattern names it. CORS on ``/build`` for ``NBPOOL_EMBED_ORIGINS`` (app.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from fnmatch import fnmatchcase
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from nbpool import logs
from nbpool.gateway.errors import error_responses
from nbpool.gateway.launch import SPAWN_RESPONSES, spawn
from nbpool.gateway.queue import Ticket
from nbpool.gateway.schemas import RELATIVE_PATH
from nbpool.gateway.state import Gateway, the_gateway
from nbpool.models import SandboxRecord

__all__ = ["PROVIDERS", "router"]

log = logs.get("nbpool.gateway.binder")
router = APIRouter()
TheGateway = Annotated[Gateway, Depends(the_gateway)]

#: BinderHub's repository providers; nbpool maps their specs to profiles, whatever the provider.
PROVIDERS = ("gh", "gl", "git", "gist", "zenodo", "figshare", "hydroshare", "dataverse", "ckan")
#: A spec: printable, no backslash, bounded.
_SPEC = r"^[^\x00-\x1f\x7f\\]{1,1024}$"
_BAD_SPEC = re.compile(r"[\x00-\x1f\x7f\\]")
#: Seconds between heartbeat comments while a client waits.
HEARTBEAT_S = 5.0

Provider = Annotated[str, Path(description=f"a Binder repository provider: {', '.join(PROVIDERS)} (others: 404)",
                               json_schema_extra={"enum": list(PROVIDERS)})]
Spec = Annotated[str, Path(description="the repository and ref, as Binder links give them (e.g. org/repo/HEAD); "
                                       "NBPOOL_BINDER_SPECS maps it to a profile",
                           json_schema_extra={"pattern": _SPEC, "maxLength": 1024})]
PageQuery = Annotated[str | None, Query(max_length=1024, json_schema_extra={"pattern": RELATIVE_PATH})]
#: A file: opened as lab/tree/<file>, which must fit in 1024 characters.
FileQuery = Annotated[str | None, Query(max_length=1024 - len("lab/tree/"), json_schema_extra={"pattern": RELATIVE_PATH})]


def binder_profile(gw: Gateway, provider: str, spec: str) -> str:
    """The profile a Binder spec launches (HTTPException 404/422 when there is none or it is malformed)."""
    if provider not in PROVIDERS:
        raise HTTPException(404, f"unknown Binder provider {provider!r}; nbpool knows: {', '.join(PROVIDERS)}")
    if not spec or len(spec) > 1024 or _BAD_SPEC.search(spec):
        raise HTTPException(422, "the spec must be 1-1024 printable characters without backslashes")
    settings = gw.settings
    wanted = f"{provider}/{spec}"
    for pattern, profile in settings.binder_specs.items():
        if fnmatchcase(wanted, pattern):
            return profile
    if settings.binder_refuse_unknown:
        raise HTTPException(404, f"this nbpool launches no profile for {wanted!r} (NBPOOL_BINDER_SPECS)")
    return settings.default_profile


def _event(phase: str, message: str, **extra: Any) -> str:
    return f"data: {json.dumps({'phase': phase, 'message': message, **extra})}\n\n"


#: One event's JSON (BinderHub's fields, plus nbpool's session_id, profile and position).
BINDER_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["phase", "message"],
    "properties": {
        "phase": {"enum": ["built", "waiting", "launching", "ready", "failed"]},
        "message": {"type": "string"},
        "url": {"type": "string", "description": "ready: the server's own origin, ending in /"},
        "token": {"type": "string", "description": "ready: the server's token"},
        "session_id": {"type": "string", "description": "ready: the session (DELETE /sessions/{id} ends it)"},
        "profile": {"type": "string", "description": "ready: the profile the spec chose"},
        "position": {"type": "integer", "description": "waiting: the place in line"},
    },
}

BUILD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "server-sent events, BinderHub's format: each event's data a JSON object with phase (built, "
                         "waiting, launching, ready, failed) and message; ready (last) has url and token; failed is last",
          # OpenAPI 3.1 has no itemSchema: this is the schema of one event, its data JSON (contentSchema).
          "content": {"text/event-stream": {"schema": {
              "type": "object",
              "required": ["data"],
              "properties": {"event": {"type": "string"},
                             "data": {"type": "string", "contentMediaType": "application/json",
                                      "contentSchema": BINDER_EVENT}},
          }}}},
    **error_responses(404, 422, 429),
}


@router.get("/build/{provider}/{spec:path}", summary="Launch, Binder's way (thebe, Jupyter Book)",
            response_class=StreamingResponse, responses=BUILD_RESPONSES)
async def build(request: Request, gw: TheGateway, provider: Provider, spec: Spec) -> Response:
    """Claim a sandbox for the spec's profile and say, as server-sent events, when it is ready.

    The ``ready`` event's ``url`` is the sandbox's own origin (ending in ``/``) and ``token``
    its token, for ``Authorization: token ...`` (its REST API and websockets answer CORS for
    ``NBPOOL_EMBED_ORIGINS``). Waits in the same first-come-first-served line as ``/spawn``;
    when every sandbox is in use the stream ends with ``failed``.
    """
    profile, client = gw.admit(request, binder_profile(gw, provider, spec))
    got = await gw.claim_or_join(profile, client, "lab")
    record, ticket = (got, None) if isinstance(got, SandboxRecord) else (None, got)

    def ready(rec: SandboxRecord) -> str:
        url = gw.origins.sandbox_url(rec.id)
        log.info("binder launch", extra={"sandbox": rec.id, "spec": f"{provider}/{spec}"[:200], "profile": profile})
        return _event("ready", f"server running at {url}\n", url=url, token=rec.token, session_id=rec.id, profile=profile)

    async def stream() -> AsyncIterator[str]:
        try:
            if record is not None:
                yield _event("built", f"Found built image (nbpool profile {profile}), launching...\n")
                yield _event("launching", "Launching server...\n")
                yield ready(record)
                return
            assert ticket is not None
            async for event in _follow(request, ticket):
                yield event
        finally:
            if ticket is not None and ticket.state not in ("ready", "failed"):
                gw.queue.leave(ticket)

    async def _follow(request: Request, ticket: Ticket) -> AsyncIterator[str]:
        last = None
        while not await request.is_disconnected():
            ticket.touch()
            seen = ticket.version
            if ticket.state == "ready" and ticket.record is not None:
                yield _event("launching", "Launching server...\n")
                yield ready(ticket.record)
                return
            if ticket.state == "failed":
                yield _event("failed", ticket.message or "the launch failed; please try again")
                return
            if ticket.state == "full":
                yield _event("failed", f"{ticket.message or 'every sandbox is in use'}; please try again later")
                return
            now = (ticket.state, ticket.position, ticket.estimate_s, ticket.message)
            if now != last:
                about = f", about {ticket.estimate_s} s" if ticket.estimate_s is not None else ""
                yield _event("waiting", f"Waiting for a server: {ticket.position} in line{about}\n",
                             position=ticket.position)
                last = now
            if not await ticket.changed(timeout=HEARTBEAT_S, since=seen):
                yield ": still waiting\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/v2/{provider}/{spec:path}", summary="Launch and open, from a Binder link", response_class=Response,
            responses=SPAWN_RESPONSES | error_responses(404))
async def binder_link(request: Request, gw: TheGateway, provider: Provider, spec: Spec, urlpath: PageQuery = None,
                      labpath: FileQuery = None, filepath: FileQuery = None) -> Response:
    """A Binder badge's link: as ``/spawn`` for the spec's profile, opening ``urlpath`` (any page,
    e.g. ``lab/tree/Welcome.ipynb``), else ``labpath``, else ``filepath`` (a file, opened in
    JupyterLab): the first of them given decides."""
    for name in ("urlpath", "labpath", "filepath"):
        if len(request.query_params.getlist(name)) > 1:
            raise HTTPException(422, f"give {name} once")
    page = urlpath or (f"lab/tree/{labpath}" if labpath else f"lab/tree/{filepath}" if filepath else None)
    return await spawn(request, gw, "", binder_profile(gw, provider, spec), page)
