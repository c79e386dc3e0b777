"""The gateway: nbpool's public HTTP API and the visitor's pages. It keeps no state of its own."""

from __future__ import annotations

__all__: list[str] = []
