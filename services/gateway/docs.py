"""The API's documentation page, ``/docs`` (Swagger UI), served from this machine.

FastAPI's own pages load their scripts from a CDN, which the gateway's Content-Security-Policy
(and a machine without the internet) would refuse. The ``fastapi-offline`` package ships the
same scripts; here they are served from ``/docs-assets/`` and the page carries a policy that
allows them, its own inline start-up script (by hash) and nothing else. Swagger UI styles its
elements inline, so this page, which shows nothing but the public API, allows inline style.
(ReDoc is left out: it loads a logo from its maker's site.)
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

__all__ = ["add_docs"]

_ASSETS = "/docs-assets"
_INLINE = re.compile(r"<script>(.*?)</script>", re.S)


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    body = bytes(page.body).decode()
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(js.encode()).digest()).decode() + "'" for js in _INLINE.findall(body)
    )
    page.headers["Content-Security-Policy"] = "; ".join([
        "default-src 'none'",
        f"script-src 'self' {hashes}",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ])
    return page


def add_docs(app: FastAPI) -> None:
    """Serve ``/docs`` for ``app`` (created with ``docs_url=None, redoc_url=None``)."""
    static = Path(fastapi_offline.__file__).parent / "static"
    app.mount(_ASSETS, StaticFiles(directory=static), name="docs-assets")
    openapi = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return _with_policy(get_swagger_ui_html(
            openapi_url=openapi, title=f"{app.title} API", swagger_js_url=f"{_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{_ASSETS}/swagger-ui.css", swagger_favicon_url=f"{_ASSETS}/favicon.png",
            oauth2_redirect_url=None,
        ))
