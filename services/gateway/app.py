"""The gateway app: its API and pages (OpenAPI at ``/docs``), the admin, and the middleware that
keeps each origin to its own (see :mod:`nbpool.gateway.origin_guard`).

The parts: ``state`` (the :class:`Gateway`: bus, mirrors, line; what routes share), ``sessions``
(the API), ``launch`` (links, the line, old links), ``binder`` (Binder's launch protocol),
``snapshots``, ``admin``, ``schemas``, ``middleware``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.staticfiles import StaticFiles

from nbpool import __version__
from nbpool.bus import Bus
from nbpool.gateway import binder, launch, sessions, snapshots
from nbpool.gateway.admin import admin_router
from nbpool.gateway.claims import NoCapacity
from nbpool.gateway.docs import add_docs
from nbpool.gateway.errors import install as install_error_handlers
from nbpool.gateway.middleware import BodyLimit, PathCors
from nbpool.gateway.origin_guard import OriginGuard
from nbpool.gateway.pages import content_security_policy
from nbpool.gateway.schemas import RELATIVE_PATH
from nbpool.gateway.state import Gateway, StillWaiting
from nbpool.sandbox_config import origin_pattern
from nbpool.settings import GatewaySettings

__all__ = ["create_app"]


def create_app(settings: GatewaySettings, bus: Bus | None = None) -> FastAPI:
    """The gateway app. Without ``bus`` it connects at start-up (``NBPOOL_NATS_URL``)."""
    gateway = Gateway(settings, bus)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.close()

    app = FastAPI(
        title="nbpool",
        version=__version__,
        summary="Instant, temporary Jupyter servers from a warm pool.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gateway
    add_docs(app)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    install_error_handlers(app, unmatched={"/spawn/": "the path must be a plain relative path"})
    origins = settings.origins
    app.add_middleware(
        OriginGuard,
        origins=origins,
        csp=content_security_policy(origins.sandbox_source() if origins.by_host else ""),
        ended=gateway.ended_answer,
        static_paths=("/static/lab/",) if settings.static_offload else (),
    )
    if origins.by_host and origins.snapshot_url:
        # A sandbox's "Share a snapshot" command posts from the sandbox's own origin, with its token.
        app.add_middleware(PathCors, paths=r"^/sessions/[a-z0-9]{4,40}/snapshots$",
                           origins=origins.sandbox_origin_pattern(), methods=["POST"])

    embed = settings.embed_origin_list
    if embed != ():
        # Pages that embed live code (thebe) launch with an EventSource from their own origin.
        app.add_middleware(PathCors, paths=r"^/build/", methods=["GET"],
                           origins=".*" if embed is None else origin_pattern(embed))

    @app.exception_handler(NoCapacity)
    async def _full(request: Request, exc: NoCapacity) -> Response:
        headers = {"Retry-After": str(exc.retry_after)}
        return JSONResponse({"detail": exc.reason, "reason": "full"}, 503, headers)

    @app.exception_handler(StillWaiting)
    async def _waited(request: Request, exc: StillWaiting) -> Response:
        body = {"detail": str(exc), "reason": "waiting", "position": exc.position, "estimate_s": exc.estimate_s}
        return JSONResponse(body, 503, {"Retry-After": str(exc.retry_after)})

    app.include_router(sessions.router)
    app.include_router(launch.router)
    app.include_router(binder.router)
    app.include_router(snapshots.router)
    app.include_router(admin_router(settings))
    document = app.openapi

    def openapi() -> dict[str, Any]:
        """The OpenAPI document, with what the configuration decides: the profile names."""
        if app.openapi_schema is None:
            schema = document()
            names = {"enum": sorted(settings.profiles), "type": "string"}
            request = schema["components"]["schemas"]["SessionRequest"]["properties"]
            request["profile"]["anyOf"][0] = names
            request["wait"]["anyOf"][0]["maximum"] = settings.max_wait
            for where in ("/spawn", "/spawn/{path}", "/v2/{provider}/{spec}"):
                for param in schema["paths"][where]["get"]["parameters"]:
                    if param["name"] == "profile":
                        param["schema"]["anyOf"][0] = names
                    if param["name"] == "path":
                        param["schema"].update(pattern=RELATIVE_PATH, maxLength=1024)
                for code, answer in schema["paths"][where]["get"]["responses"].items():
                    if code >= "400":  # errors are JSON, also where the page itself is HTML
                        answer["content"].pop("text/html", None)
            _add_links(schema)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
    if settings.static_offload:
        # JupyterLab's own build: the same files every sandbox of this version serves itself.
        from jupyterlab.commands import get_app_dir

        app.mount("/static/lab", StaticFiles(directory=os.path.join(get_app_dir(), "static")), name="lab-static")

    return app


def _add_links(schema: dict[str, Any]) -> None:
    """OpenAPI links: how a session's and a snapshot's answers lead to the requests that use them
    (clients read them; the fuzz test follows them with real ids and tokens)."""
    paths = schema["paths"]

    def op(path: str, method: str) -> str:
        return str(paths[path][method]["operationId"])

    session = {"session_id": "$response.body#/id", "token": "$response.body#/token"}
    snapshot = {"snapshot_id": "$response.body#/id"}
    paths["/sessions"]["post"]["responses"]["201"]["links"] = {
        "GetSession": {"operationId": op("/sessions/{session_id}", "get"), "parameters": session},
        "PublishWelcome": {"operationId": op("/sessions/{session_id}/snapshots", "post"), "parameters": session,
                           "requestBody": {"path": "Welcome.ipynb"}},
        "EndSession": {"operationId": op("/sessions/{session_id}", "delete"), "parameters": session},
    }
    paths["/sessions/{session_id}/snapshots"]["post"]["responses"]["201"]["links"] = {
        "GetSnapshot": {"operationId": op("/snapshots/{snapshot_id}", "get"), "parameters": snapshot},
        "GetNotebook": {"operationId": op("/snapshots/{snapshot_id}/notebook", "get"), "parameters": snapshot},
        "View": {"operationId": op("/s/{snapshot_id}", "get"), "parameters": snapshot},
        "Remix": {"operationId": op("/remix/{snapshot_id}", "get"), "parameters": snapshot},
        "DeleteSnapshot": {"operationId": op("/snapshots/{snapshot_id}", "delete"),
                           "parameters": {**snapshot, "token": "$response.body#/delete_token"}},
    }
