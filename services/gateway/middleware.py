"""ASGI middleware of the gateway (the origin guard has a module of its own)."""

from __future__ import annotations

import json
import re
from collections.abc import Collection

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit", "PathCors"]


class PathCors:
    """Starlette's CORS for the paths ``paths`` (a regular expression) only, from origins matching
    ``origins``; every other path answers no preflight and sends no CORS header.

    The calls it allows carry a token in a header, never cookies (no credentials).
    """

    def __init__(self, app: ASGIApp, paths: str, origins: str, methods: Collection[str]) -> None:
        self.app = app
        self.paths = re.compile(paths)
        self.cors = CORSMiddleware(app, allow_origin_regex=origins, allow_methods=methods,
                                   allow_headers=["authorization", "content-type"], allow_credentials=False, max_age=3600)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.paths.match(scope["path"]):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class BodyLimit:
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
