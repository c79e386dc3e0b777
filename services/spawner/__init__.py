"""The spawner: owns the sandboxes on its host, keeps the warm pool full and answers claims."""

from __future__ import annotations

__all__: list[str] = []
