"""The route table, as Traefik's file provider reads it. Pure functions, no network.

Every sandbox gets ``PathPrefix(`/user/<id>/`)`` straight to its own address (no extra hop);
everything else falls through to the gateway with the lowest priority.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from nbpool.models import ROUTED_STATES, SandboxRecord

__all__ = ["GATEWAY", "RouteSpec", "desired_routes", "dynamic_config", "render"]

GATEWAY = "nbpool-gateway"
STATIC = "nbpool-static"
_PATH = re.compile(r"^/user/[a-z0-9]{4,40}/$")

RouteSpec = tuple[str, str]  # (path, target)


def _valid_target(target: str) -> bool:
    parts = urlsplit(target)
    return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.path in ("", "/") and not parts.query


def desired_routes(records: Iterable[SandboxRecord]) -> dict[str, RouteSpec]:
    """The routes Traefik should have: one per starting, warm or claimed sandbox.

    Records whose path or target could not be a sandbox's (they come from the bus, which anyone
    with access can write to) are left out rather than written into Traefik's rules.
    """
    routes = {}
    for rec in records:
        if rec.state in ROUTED_STATES and _PATH.match(rec.path) and rec.path == f"/user/{rec.id}/" and _valid_target(rec.target):
            routes[rec.id] = (rec.path, rec.target)
    return routes


def dynamic_config(
    routes: dict[str, RouteSpec], gateway_urls: list[str], entrypoint: str = "web", static_offload: bool = False
) -> dict[str, Any]:
    """Traefik dynamic configuration for ``routes`` plus the catch-all to the gateway replicas.

    With ``static_offload``, every sandbox's JupyterLab static files (``/user/<id>/static/lab/``,
    the same files in every sandbox of this JupyterLab version) come from the gateways instead.
    """
    routers: dict[str, Any] = {
        GATEWAY: {"rule": "PathPrefix(`/`)", "priority": 1, "service": GATEWAY, "entryPoints": [entrypoint]},
    }
    gateways = [{"url": url} for url in gateway_urls]
    services: dict[str, Any] = {GATEWAY: {"loadBalancer": {"servers": gateways, "passHostHeader": True}}}
    for sid in sorted(routes):
        path, target = routes[sid]
        name = f"sandbox-{sid}"
        routers[name] = {"rule": f"PathPrefix(`{path}`)", "priority": 100, "service": name, "entryPoints": [entrypoint]}
        services[name] = {"loadBalancer": {"servers": [{"url": target}], "passHostHeader": True}}
    config: dict[str, Any] = {"http": {"routers": routers, "services": services}}
    if static_offload:
        routers[STATIC] = {
            "rule": "PathRegexp(`^/user/[a-z0-9]+/static/lab/`)",
            "priority": 200,
            "service": GATEWAY,
            "middlewares": [f"{STATIC}-path"],
            "entryPoints": [entrypoint],
        }
        config["http"]["middlewares"] = {
            f"{STATIC}-path": {"replacePathRegex": {"regex": "^/user/[a-z0-9]+/static/lab/(.*)", "replacement": "/static/lab/$1"}},
        }
    return config


def render(config: dict[str, Any]) -> str:
    """The file's text. JSON is valid YAML, and much faster to write for 1000 routes."""
    return json.dumps(config, indent=1, sort_keys=True) + "\n"
