"""Every error the gateway answers has one shape, documented in the OpenAPI document.

``{"detail": "<what was wrong, for a person>"}``, plus ``errors`` (each invalid field, for 422)
or ``reason`` (why there is no sandbox, for 503). Routes name their error statuses with
:func:`error_responses`; :func:`install` makes FastAPI's own answers (invalid input, unknown
path, wrong method) take the same shape, and a wrong method's ``Allow`` header list every
method the path has.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import Match, Route

__all__ = ["ErrorBody", "error_responses", "install"]


class Problem(BaseModel):
    """One invalid part of a request."""

    loc: list[str | int] = Field(description="where: body, query, path or header, then the field")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """What every error answer carries."""

    detail: str = Field(description="what was wrong and what to do, for a person")
    reason: str | None = Field(default=None, description="503 only: full (nbpool cannot serve it now), or waiting "
                               "(a POST /sessions waited its `wait` in line)")
    position: int | None = Field(default=None, description="503 waiting only: the place in line it had (it has left)")
    estimate_s: int | None = Field(default=None, description="503 waiting only: about how long the wait would still "
                                   "have been, in seconds, when the line has been moving")
    errors: list[Problem] | None = Field(default=None, description="422 only: each invalid part")


_MEANING = {
    400: "a request nbpool cannot read",
    401: "no token, or a wrong admin token",
    403: "a token that is not this session's",
    404: "no such session (it may have ended)",
    405: "the path does not take this method (see Allow)",
    413: "the body is larger than NBPOOL_MAX_BODY_BYTES",
    422: "invalid input: malformed JSON, an unknown field or profile, a bad path or id",
    429: "over the launch rate limit (see Retry-After)",
    503: "no sandbox free in time (waited in line: reason waiting, with the position), or nbpool is draining or "
         "unhealthy (see Retry-After)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each a JSON :class:`ErrorBody` (also on
    routes whose own answers are HTML)."""
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    return {code: {"model": ErrorBody, "description": _MEANING[code], "content": body} for code in codes}


def _allowed(app: FastAPI, request: Request) -> str:
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, Route) and route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


def _readable(problems: list[dict[str, Any]]) -> str:
    parts = []
    for p in problems[:5]:
        where = ".".join(str(x) for x in p.get("loc", ()))
        parts.append(f"{where}: {p.get('msg', 'invalid')}" if where else str(p.get("msg", "invalid")))
    return "invalid request: " + "; ".join(parts)


def install(app: FastAPI, unmatched: dict[str, str] | None = None) -> None:
    """Make FastAPI's and Starlette's own error answers take the documented shape.

    ``unmatched`` maps a path prefix to the 422 message for paths under it that no route
    matches (a route's ``{path:path}`` does not match a line break, say), instead of 404.
    """

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        return JSONResponse({"detail": _readable(problems), "errors": problems}, 422)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot decode (not UTF-8, not JSON): invalid input, 422.
            return JSONResponse({"detail": "the request body is not valid JSON (in UTF-8): send a JSON object, "
                                 'like {"profile": "default"}'}, 422)
        if exc.status_code == 404 and not request.scope.get("route"):
            prefix = next((p for p in (unmatched or {}) if request.url.path.startswith(p)), None)
            if prefix is not None:
                return JSONResponse({"detail": (unmatched or {})[prefix]}, 422)
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = _allowed(app, request)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"detail": detail}, exc.status_code, headers)
