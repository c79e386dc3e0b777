"""Runtimes: where sandboxes run. See :class:`nbpool.runtime.base.Runtime` for the contract."""

from __future__ import annotations

from nbpool.runtime.base import Runtime, RuntimeSandbox, RuntimeUnavailable, SandboxSpec, SpawnFailed

__all__ = ["Runtime", "RuntimeSandbox", "RuntimeUnavailable", "SandboxSpec", "SpawnFailed"]
