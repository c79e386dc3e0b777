"""The route table, as Traefik's file provider reads it. Pure functions, no network.

Every sandbox gets a route straight to its own address (no extra hop): ``Host(`<id>.<sandbox
domain>`)`` (its own origin; see :mod:`nbpool.origins`), or ``PathPrefix(`/user/<id>/`)`` with
``NBPOOL_ROUTING=path``. Everything else, the admin's host and the hosts of sandboxes that have
ended included, falls through to the gateway with the lowest priority. Routes name no entry
point: they serve Traefik's default ones (``asDefault``), never the health check's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from nbpool.models import ROUTED_STATES, SandboxRecord
from nbpool.origins import Origins

__all__ = ["GATEWAY", "RouteSpec", "desired_routes", "dynamic_config", "render", "rule"]

GATEWAY = "nbpool-gateway"
STATIC = "nbpool-static"
COMPRESS = "nbpool-compress"
#: How Traefik compresses what sandboxes serve: the encodings best first (the browser's
#: Accept-Encoding picks), and only text that compresses well. No Brotli: compressed on the fly, it
#: cost Traefik about ten times zstd's CPU for JupyterLab's core bundle (2.6 MB: 110 ms against
#: 10 ms here) for a file 14 % smaller. Not the rest: images, media, archives and fonts are
#: compressed already, a range of a video or a PDF must stay a range of its bytes (Traefik would
#: compress a 206 as well), and an event stream must not be held back.
COMPRESSION = {
    "encodings": ["zstd", "gzip"],
    "includedContentTypes": [
        "text/html", "text/css", "text/plain", "text/csv", "text/markdown", "text/xml", "text/javascript",
        "application/javascript", "application/json", "application/x-ipynb+json", "application/xml",
        "application/manifest+json", "image/svg+xml",
    ],
}
_ID = re.compile(r"^[a-z0-9]{4,40}$")

RouteSpec = tuple[str, str]  # (the server's base path, target)


def _valid_target(target: str) -> bool:
    parts = urlsplit(target)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path in ("", "/") and not parts.query


def desired_routes(records: Iterable[SandboxRecord], origins: Origins) -> dict[str, RouteSpec]:
    """The routes Traefik should have: one per starting, warm or claimed sandbox.

    Records whose id, path or target could not be a sandbox's under this routing (they come from
    the bus, which anyone with access can write to) are left out rather than written into
    Traefik's rules. So is a sandbox started under the other routing: with host routing nothing
    a sandbox serves may appear on the gateway's origin.
    """
    routes = {}
    for rec in records:
        if (rec.state in ROUTED_STATES and _ID.match(rec.id) and rec.path == origins.base_path(rec.id)
                and _valid_target(rec.target)):
            routes[rec.id] = (rec.path, rec.target)
    return routes


def rule(sandbox_id: str, origins: Origins) -> str:
    """The Traefik rule that sends a sandbox's requests to it."""
    if origins.by_host:
        return f"Host(`{origins.sandbox_host(sandbox_id)}`)"
    return f"PathPrefix(`{origins.base_path(sandbox_id)}`)"


def dynamic_config(
    routes: dict[str, RouteSpec], gateway_urls: list[str], origins: Origins, static_offload: bool = False,
    compress: bool = False,
) -> dict[str, Any]:
    """Traefik dynamic configuration for ``routes`` plus the catch-all to the gateway replicas.

    With ``static_offload``, every sandbox's JupyterLab static files (``<base>/static/lab/``,
    the same files in every sandbox of this JupyterLab version) come from the gateways instead.
    With ``compress``, the text every sandbox serves is compressed on its way (:data:`COMPRESSION`);
    everything else, websockets included, passes as it is.
    """
    routers: dict[str, Any] = {GATEWAY: _router("PathPrefix(`/`)", 1, GATEWAY)}
    gateways = [{"url": url} for url in gateway_urls]
    services: dict[str, Any] = {GATEWAY: {"loadBalancer": {"servers": gateways, "passHostHeader": True}}}
    middlewares: dict[str, Any] = {COMPRESS: {"compress": COMPRESSION}} if compress else {}
    compressed = [COMPRESS] if compress else []
    for sid in sorted(routes):
        _, target = routes[sid]
        name = f"sandbox-{sid}"
        routers[name] = _router(rule(sid, origins), 100, name, compressed)
        services[name] = {"loadBalancer": {"servers": [{"url": target}], "passHostHeader": True}}
    if static_offload and origins.by_host:
        domain = re.escape(origins.sandbox_domain)
        routers[STATIC] = _router(f"HostRegexp(`^[a-z0-9]+\\.{domain}$`) && PathPrefix(`/static/lab/`)", 200, GATEWAY,
                                  compressed)
    elif static_offload:
        routers[STATIC] = _router("PathRegexp(`^/user/[a-z0-9]+/static/lab/`)", 200, GATEWAY,
                                  [f"{STATIC}-path", *compressed])
        middlewares[f"{STATIC}-path"] = {
            "replacePathRegex": {"regex": "^/user/[a-z0-9]+/static/lab/(.*)", "replacement": "/static/lab/$1"},
        }
    config: dict[str, Any] = {"http": {"routers": routers, "services": services}}
    if middlewares:
        config["http"]["middlewares"] = middlewares
    return config


def _router(rule: str, priority: int, service: str, middlewares: list[str] | None = None) -> dict[str, Any]:
    """One Traefik router; its middlewares only when it has any."""
    router: dict[str, Any] = {"rule": rule, "priority": priority, "service": service}
    if middlewares:
        router["middlewares"] = middlewares
    return router


def render(config: dict[str, Any]) -> str:
    """The file's text. JSON is valid YAML, and much faster to write for 1000 routes."""
    return json.dumps(config, indent=1, sort_keys=True) + "\n"
