"""The router: keeps Traefik's routes equal to the sandboxes that should be reachable."""

from __future__ import annotations

__all__: list[str] = []
