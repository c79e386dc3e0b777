"""The culler: decides, from heartbeats and ages, which sandboxes to end."""

from __future__ import annotations

__all__: list[str] = []
