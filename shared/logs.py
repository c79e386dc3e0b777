"""Structured logs: one event per line, ``key=value`` (text) or JSON, sandbox id included where known."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["get", "hush_tls_eof", "setup"]

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class _Formatter(logging.Formatter):
    def __init__(self, service: str, as_json: bool) -> None:
        super().__init__()
        self._service = service
        self._json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "event": record.getMessage(),
        }
        fields.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            fields["error"] = self.formatException(record.exc_info)
        if self._json:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="\n'):
        return json.dumps(text)
    return text


def _not_tls_eof_chatter(record: logging.LogRecord) -> bool:
    # asyncio warns when a protocol asks to keep a TLS connection half-open, which nats-py's does
    # on every closed connection to a cluster's (TLS) servers: not a fault, and not ours to fix.
    return "eof_received()" not in record.getMessage()


def setup(service: str, level: str = "INFO", fmt: str = "text") -> None:
    """Send this process's logs to stderr, one structured line per event."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(service, fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries chat at INFO about every request; keep their warnings only.
    for noisy in ("httpx", "httpcore", "uvicorn.access", "nats"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    hush_tls_eof()


def hush_tls_eof() -> None:
    """Drop asyncio's warning about half-closed TLS connections (see :func:`_not_tls_eof_chatter`)."""
    asyncio_log = logging.getLogger("asyncio")
    if _not_tls_eof_chatter not in asyncio_log.filters:
        asyncio_log.addFilter(_not_tls_eof_chatter)


def get(name: str) -> logging.Logger:
    """A logger; pass fields with ``extra={"sandbox": sid, ...}``."""
    return logging.getLogger(name)
