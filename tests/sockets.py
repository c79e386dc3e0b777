"""Look at another process's TCP sockets from the outside (root; Linux 5.6+ for pidfd_getfd)."""

from __future__ import annotations

import ctypes
import os
import socket
from typing import Any

import websockets
from kernel import execute_on

_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture
_libc = ctypes.CDLL(None, use_errno=True)


def nodelay_of_peer(pid: int, peer_port: int) -> bool:
    """TCP_NODELAY of the socket of process ``pid`` whose remote end has port ``peer_port``.

    Each of the process's sockets is duplicated into this process with pidfd_getfd, which works
    across network and PID namespaces (a container's server, seen from the host).
    """
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                    continue
            except OSError:
                continue  # closed meanwhile
            dup = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, int(name), 0)
            if dup < 0:
                continue
            with socket.socket(fileno=dup) as sock:
                if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
                    continue
                try:
                    peer = sock.getpeername()
                except OSError:
                    continue  # a listening socket
                if peer[1] == peer_port:
                    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
    finally:
        os.close(pidfd)
    raise LookupError(f"process {pid} has no TCP connection from port {peer_port}")


async def kernel_websocket_nodelay(server_pid: int, base: str, session: dict[str, Any]) -> bool:
    """Open the session's kernel websocket straight to its server at ``base`` (no proxy), run
    ``1+1``, and return TCP_NODELAY of the server's end of that connection."""
    url = base.replace("http://", "ws://", 1) + f"api/kernels/{session['kernel_id']}/channels?token={session['token']}"
    async with websockets.connect(url) as ws:
        assert await execute_on(ws, "1+1") == "2"
        return nodelay_of_peer(server_pid, ws.local_address[1])
