"""Runs inside each sandbox's Jupyter server: which other pages may use it, and how.

A page on another origin (a book or an article with thebe, say) that holds a sandbox's token
may call its REST API and open kernel websockets, and may frame JupyterLab, when its origin is
one of ``NBPOOL_EMBED_ORIGINS``: ``*`` (the default: any page), ``none`` (no page but the
sandbox's own), or origins separated by spaces or commas (``https://book.example.org``,
``https://*.example.org``, ``http://127.0.0.1:8080``). The server then answers CORS preflights
(``Access-Control-Allow-Origin``) and lets those origins' websockets in, and its
``Content-Security-Policy`` names them in ``frame-ancestors``.

Why any page is a safe default: what lets a page in is the token, never a cookie. The identity
provider here ignores the login cookie on every request that comes from another origin (an
``Origin`` header naming another host) and on everything else another origin's page makes the
browser load but a top-level page (``Sec-Fetch-Site`` same-site or cross-site: a load into its
frame, a script or image it includes), and it never sets or clears the cookie for such a request. So a page can use a sandbox only if it was given the
token, as the page that launched it was; a page that merely knows the address (another
sandbox's page, which is same-site with this one) gets a 403 or the login page, as without
CORS. No response is readable with credentials (``Access-Control-Allow-Credentials`` is never
sent). Narrow the setting when sandboxes hold something a page that has the token should not
reach, or to keep JupyterLab from being framed by other sites.

The notebook image ships this file as the module ``nbpool_sandbox_config``, and its
``jupyter_server_config.py`` calls :func:`configure`; the process runtime writes a config file
that imports it as ``nbpool.sandbox_config``. It needs only jupyter_server, never nbpool.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["EmbedOriginsError", "configure", "frame_ancestors", "identity_provider", "origin_pattern",
           "parse_embed_origins"]

#: One origin: scheme, host (a leading ``*.`` for any subdomain), optional port; nothing after.
_ORIGIN = re.compile(r"^(https?)://(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])"
                     r"(:[0-9]{1,5})?$")


class EmbedOriginsError(ValueError):
    """``NBPOOL_EMBED_ORIGINS`` is not ``*``, ``none`` or a list of origins."""


def parse_embed_origins(text: str | None) -> tuple[str, ...] | None:
    """The origins ``text`` allows: None for any (``*``, also when unset or blank), ``()`` for
    none, else the origins, lower-cased, in order, each once."""
    text = (text or "").strip()
    if text in ("", "*"):
        return None
    if text.lower() == "none":
        return ()
    origins: list[str] = []
    for item in re.split(r"[\s,]+", text):
        origin = item.lower()
        if origin == "*":
            raise EmbedOriginsError("'*' (any page) cannot be mixed with a list of origins")
        found = _ORIGIN.match(origin)
        if not found:
            raise EmbedOriginsError(
                f"{item!r} is not an origin: give scheme://host[:port] (http or https, optionally *.host), "
                "no path and no trailing slash")
        if found.group(7) and not 0 < int(found.group(7)[1:]) < 65536:
            raise EmbedOriginsError(f"{item!r}: the port must be 1-65535")
        if origin not in origins:
            origins.append(origin)
    return tuple(origins)


def origin_pattern(origins: tuple[str, ...]) -> str:
    """A regular expression matching exactly ``origins`` (``*.`` as one or more labels)."""
    parts = []
    for origin in origins:
        scheme, rest = origin.split("://", 1)
        wildcard = rest.startswith("*.")
        host = re.escape(rest[2:] if wildcard else rest)
        parts.append(f"{scheme}://" + (r"[a-z0-9-]+(?:\.[a-z0-9-]+)*\." if wildcard else "") + host)
    return "^(?:" + "|".join(parts) + ")$" if parts else "(?!)"  # none: matches nothing


def frame_ancestors(origins: tuple[str, ...] | None) -> str:
    """The ``frame-ancestors`` directive for ``origins`` (None: any page)."""
    if origins is None:
        return "frame-ancestors 'self' *"
    return " ".join(["frame-ancestors 'self'", *origins])


def _foreign(request: Any) -> bool:
    """Whether a request comes from another origin's page: a cross-origin call or websocket
    (``Origin``), or anything but a top-level page load that the browser says another origin's
    page started (``Sec-Fetch-*``: a script, image or style included from it, a load into its
    frame). A visitor following a link to their server is a top-level load, and keeps the cookie."""
    headers = request.headers
    origin = headers.get("Origin")
    if origin is not None:
        host = urlsplit(origin).netloc.lower() if "://" in origin else ""  # "null" and the like
        if host != (request.host or "").lower():
            return True
    if headers.get("Sec-Fetch-Site", "") in ("same-site", "cross-site"):
        return bool(headers.get("Sec-Fetch-Mode", "") != "navigate" or headers.get("Sec-Fetch-Dest", "") != "document")
    return False


@functools.cache
def identity_provider() -> type:
    """Jupyter's password-or-token identity provider, with the login cookie kept to the
    sandbox's own pages (see the module docstring)."""
    from jupyter_server.auth.identity import PasswordIdentityProvider

    class EmbedIdentityProvider(PasswordIdentityProvider):
        """Token, not cookie, for another origin's pages."""

        def get_user_cookie(self, handler: Any) -> Any:
            if _foreign(handler.request):
                return None
            return super().get_user_cookie(handler)

        def set_login_cookie(self, handler: Any, user: Any) -> None:
            if not _foreign(handler.request):
                super().set_login_cookie(handler, user)

        def clear_login_cookie(self, handler: Any) -> None:
            # Another origin's request without a token must not log the visitor out either.
            if not _foreign(handler.request):
                super().clear_login_cookie(handler)

        def should_check_origin(self, handler: Any) -> bool:
            # Jupyter skips the Origin check for a request with the token, so a narrowed setting
            # would not keep other pages' websockets out: the check always runs (allow_origin
            # "*" passes everything, as meant).
            return True

    EmbedIdentityProvider.__module__ = __name__
    return EmbedIdentityProvider


#: How long a browser may keep a preflight's answer (seconds; Chromium keeps at most 7200). Without
#: it Chromium keeps one 5 s, so a page's every API call to the sandbox costs a second round trip.
PREFLIGHT_MAX_AGE = 600


def _cors_filter(allowed: re.Pattern[str] | None, narrowed: bool) -> type:
    """A Tornado output transform for answers to another origin's requests. When ``narrowed``, it
    drops ``Access-Control-Allow-*`` unless ``allowed`` matches the origin: Jupyter answers every
    preflight that asks for ``Authorization`` with the asking origin once any CORS setting is on.
    A preflight it grants gets ``Access-Control-Max-Age``."""
    from tornado.web import OutputTransform

    class EmbedCorsFilter(OutputTransform):
        def __init__(self, request: Any) -> None:
            super().__init__(request)
            self.request = request

        def transform_first_chunk(self, status_code: int, headers: Any, chunk: bytes,
                                  finishing: bool) -> tuple[int, Any, bytes]:
            origin = self.request.headers.get("Origin")
            if origin is None:
                return status_code, headers, chunk
            if narrowed and _foreign(self.request) and not (allowed and allowed.match(origin.lower())):
                for name in [n for n in headers if n.lower().startswith("access-control-allow-")]:
                    del headers[name]
            elif self.request.method == "OPTIONS" and "Access-Control-Allow-Origin" in headers:
                headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
            return status_code, headers, chunk

    return EmbedCorsFilter


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": __name__}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Jupyter's hook: granted preflights are kept by browsers for :data:`PREFLIGHT_MAX_AGE`; with
    origins narrowed (or none), answers to other origins lose the CORS grants Jupyter would give
    them."""
    origins = parse_embed_origins(os.environ.get("NBPOOL_EMBED_ORIGINS"))
    allowed = re.compile(origin_pattern(origins)) if origins else None
    serverapp.web_app.add_transform(_cors_filter(allowed, narrowed=origins is not None))


def configure(c: Any, environ: Mapping[str, str] = os.environ) -> None:
    """Set a Jupyter server's config ``c`` from ``NBPOOL_EMBED_ORIGINS`` in ``environ``.

    A bad value stops the server with the reason (the spawner checked it before, so this is a
    hand-made start)."""
    origins = parse_embed_origins(environ.get("NBPOOL_EMBED_ORIGINS"))
    c.ServerApp.identity_provider_class = identity_provider()
    extensions = dict(c.ServerApp.jpserver_extensions) if "jpserver_extensions" in c.ServerApp else {}
    c.ServerApp.jpserver_extensions = {**extensions, __name__: True}
    if origins is None:
        c.ServerApp.allow_origin = "*"
    elif origins:
        c.ServerApp.allow_origin_pat = origin_pattern(origins)
    settings = dict(c.ServerApp.tornado_settings) if "tornado_settings" in c.ServerApp else {}
    headers = dict(settings.get("headers", {}))
    headers["Content-Security-Policy"] = frame_ancestors(origins)
    settings["headers"] = headers
    c.ServerApp.tornado_settings = settings
