"""Signed-in admins, kept on the bus so that every gateway knows them (see nbpool.gateway.admin).

A session is a random id (the cookie's value, never stored), the SHA-256 of it as the key in
``<instance>_admin_sessions``, a CSRF token, and when it ends.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import nats.errors
import nats.js.errors

from nbpool.bus import Bus
from nbpool.models import AdminSession, BadMessage, decode, encode

__all__ = ["AdminSessions"]


class AdminSessions:
    """Signed-in admins, on the bus (see the module docstring)."""

    def __init__(self, bus: Bus, ttl: float) -> None:
        self._bus = bus
        self.ttl = ttl

    @staticmethod
    def _key(session_id: str) -> str:
        return hashlib.sha256(session_id.encode()).hexdigest()

    async def start(self) -> tuple[str, AdminSession]:
        """A new session: its id (for the cookie) and its record."""
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        session = AdminSession(csrf=secrets.token_urlsafe(32), created_at=now, expires_at=now + self.ttl)
        kv = await self._bus.kv(self._bus.names.admin_sessions)
        await kv.put(self._key(session_id), encode(session))
        return session_id, session

    async def get(self, session_id: str) -> AdminSession | None:
        """The live session with this id; None if there is none (never was, ended, expired)."""
        if not session_id or len(session_id) > 100:
            return None
        kv = await self._bus.kv(self._bus.names.admin_sessions)
        try:
            entry = await kv.get(self._key(session_id))
            session = decode(AdminSession, entry.value or b"")
        except (nats.js.errors.KeyNotFoundError, BadMessage):
            return None
        if session.expires_at <= time.time():
            await self.end(session_id)
            return None
        return session

    async def end(self, session_id: str) -> None:
        """Revoke a session (sign-out); ending an unknown one is not an error."""
        kv = await self._bus.kv(self._bus.names.admin_sessions)
        try:
            await kv.delete(self._key(session_id))
        except (nats.js.errors.KeyNotFoundError, nats.errors.Error):
            pass
