"""A tiny, fast HTTP server that looks just enough like a Jupyter server for nbpool's control plane.

It answers every ``GET …/api`` with ``{"version": "stub"}`` (what the spawner and the router wait
for), ``…/api/status`` and ``…/api/kernels`` with an idle server's answers (what the spawner's
activity poll reads), and everything else with 404. Keep-alive, no framework: one process
serves tens of thousands of small requests a second, so whatever it sits behind is what a load
test measures.

The bench uses it in three ways:

- as the sandbox command of the process runtime (``NBPOOL_JUPYTER_COMMAND``) for claim latency,
  where every claim consumes a sandbox and only the control plane is being timed;
- as the target of synthetic sandbox records (control plane at scale, route propagation);
- as a backend faster than the proxy, to measure the proxy's own capacity.

Run as ``stub.py --port N`` or with the Jupyter arguments the process runtime passes
(``--ServerApp.port=N``; the others are ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from datetime import UTC, datetime

_STARTED = datetime.now(UTC).isoformat().replace("+00:00", "Z")
_VERSION = json.dumps({"version": "stub"}).encode()
_KERNELS = b"[]"
_NOT_FOUND = b'{"message": "not found"}'


def _status() -> bytes:
    return json.dumps({"started": _STARTED, "last_activity": _STARTED, "connections": 0, "kernels": 0}).encode()


def _answer(method: bytes, target: bytes) -> tuple[int, bytes]:
    path = target.split(b"?", 1)[0].rstrip(b"/")
    if method not in (b"GET", b"HEAD"):
        return 404, _NOT_FOUND
    if path.endswith(b"/api") or path == b"/api":
        return 200, _VERSION
    if path.endswith(b"/api/status"):
        return 200, _status()
    if path.endswith(b"/api/kernels"):
        return 200, _KERNELS
    return 404, _NOT_FOUND


class _HTTP(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and pipelining; bodies are skipped by Content-Length."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        close = False
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buffer[:end].split(b"\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(b":")
                lowered = name.strip().lower()
                if lowered == b"content-length":
                    length = int(value.strip() or 0)
                elif lowered == b"connection" and value.strip().lower() == b"close":
                    close = True
            if len(self.buffer) < end + 4 + length:
                break
            self.buffer = self.buffer[end + 4 + length:]
            parts = head[0].split(b" ")
            status, body = _answer(parts[0], parts[1] if len(parts) > 1 else b"/")
            reason = b"OK" if status == 200 else b"Not Found"
            out.append(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (status, reason, len(body), body if parts[0] != b"HEAD" else b"")
            )
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
            if close:
                self.transport.close()


def _port(argv: list[str]) -> tuple[str, int]:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ServerApp.port", dest="jupyter_port", type=int, default=0)
    known, _ = parser.parse_known_args(argv)
    return known.host, known.jupyter_port or known.port


async def _serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_HTTP, host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()[1]
    print(json.dumps({"listening": bound, "at": time.time()}), flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    import sys

    host, port = _port(sys.argv[1:] if argv is None else argv)
    asyncio.run(_serve(host, port))


if __name__ == "__main__":
    main()
