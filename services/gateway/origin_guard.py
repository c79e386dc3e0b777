"""What the gateway answers on each origin, and the headers every answer carries.

Traefik sends the gateway every request no sandbox route takes, whatever its ``Host``
(see :mod:`nbpool.origins`):

- the gateway's own host: the API and the visitor's pages; ``/admin...`` is sent on to the
  admin's origin;
- the admin's host: ``/admin...`` only;
- the snapshot views' host: ``/s/<id>`` only (:mod:`nbpool.gateway.snapshots`); ``/s/...`` asked
  of the gateway's host is sent on there;
- a sandbox's host (the sandbox has ended, or never was): the "this server has ended" page,
  whatever the path, with a link that starts a fresh server at the same page.

Every answer carries ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``
(sandbox URLs carry tokens), and a Content-Security-Policy unless the route set its own.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nbpool.origins import Origins

__all__ = ["OriginGuard"]


def _is_admin_path(path: str) -> bool:
    return path == "/admin" or path.startswith("/admin/")


def _raw_path(scope: Scope) -> str:
    """The path as the client sent it (percent-encoded): fit for a Location header, whatever it decodes to."""
    raw = scope.get("raw_path")
    return raw.decode("latin-1") if raw else str(scope["path"])


class OriginGuard:
    """ASGI middleware: each origin gets only its own part of the gateway (see the module docstring).

    ``ended(sandbox_id, rest, accept)`` is the answer for ``<ended sandbox origin>/<rest>``. With
    ``static_paths`` (static offload), those paths are served on sandbox hosts as they are.
    """

    def __init__(
        self,
        app: ASGIApp,
        origins: Origins,
        csp: str,
        ended: Callable[[str, str, str], Response],
        static_paths: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.origins = origins
        self.csp = csp.encode()
        self.ended = ended
        self.static_paths = static_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        kind = self.origins.kind(headers.get("host", ""))
        path: str = scope["path"]
        send = self._with_headers(send)
        static = bool(self.static_paths) and path.startswith(self.static_paths)
        if kind == "sandbox" and not static:
            sandbox_id = headers.get("host", "").split(".", 1)[0]
            await self.ended(sandbox_id, path.lstrip("/"), headers.get("accept", ""))(scope, receive, send)
        elif kind == "admin" and path == "/":
            await self._redirect(send, "/admin")
        elif kind == "admin" and not (_is_admin_path(path) or path == "/healthz"):
            await self._not_here(send, "the admin's origin serves only /admin")
        elif kind == "snapshot" and not path.startswith("/s/"):
            await self._not_here(send, "the snapshot origin serves only snapshot views, /s/<id>")
        elif (kind == "public" and self.origins.by_host and self.origins.snapshot_url and path.startswith("/s/")
              and scope["method"] in ("GET", "HEAD")):
            await self._redirect(send, self.origins.snapshot_url + _raw_path(scope))
        elif kind == "public" and self.origins.by_host and _is_admin_path(path):
            query = scope.get("query_string", b"").decode("latin-1")
            await self._redirect(send, self.origins.admin_url + _raw_path(scope) + (f"?{query}" if query else ""))
        else:
            await self.app(scope, receive, send)

    def _with_headers(self, send: Send) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                names = {name.lower() for name, _ in raw}
                raw.append((b"x-content-type-options", b"nosniff"))
                raw.append((b"referrer-policy", b"no-referrer"))
                if b"content-security-policy" not in names:
                    raw.append((b"content-security-policy", self.csp))
                message = {**message, "headers": raw}
            await send(message)

        return sending

    async def _not_here(self, send: Send, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})

    async def _redirect(self, send: Send, location: str) -> None:
        # 307: a POST stays a POST (and keeps its body) on the other origin.
        await send({"type": "http.response.start", "status": 307,
                    "headers": [(b"location", location.encode("latin-1", "replace")), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})
