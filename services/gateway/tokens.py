"""Tokens as clients send them: where to find one, and comparing it without leaking timing."""

from __future__ import annotations

import hmac

__all__ = ["from_authorization", "same"]


def same(given: str, expected: str) -> bool:
    """Constant-time comparison of any two strings.

    ``hmac.compare_digest`` raises on ``str`` with non-ASCII characters; a client can send any
    text, so both sides are compared as UTF-8 bytes.
    """
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


def from_authorization(header: str | None) -> str | None:
    """The token of ``Authorization: token <t>`` or ``Bearer <t>``; None for any other header."""
    scheme, _, value = (header or "").partition(" ")
    value = value.strip()
    return value if scheme.lower() in ("token", "bearer") and value else None
