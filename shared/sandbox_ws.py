"""Runs inside each sandbox's Jupyter server: kernel websockets without Nagle's delay.

Tornado leaves Nagle's algorithm on for websockets, and Jupyter's kernel websocket does not
turn it off. A kernel answers an execute with several small messages in a row (busy,
execute_input, execute_result, reply, idle); with Nagle on, the second small write waits for
the peer's ACK of the first, which Linux delays by up to 40 ms. Measured on loopback with
``1+1``: 48 ms from request to result with Nagle, 4 ms without (docs/benchmarks.md).

The sandbox's server is told to use this class with
``--ServerApp.kernel_websocket_connection_class``. The notebook image ships this file as the
module ``nbpool_sandbox_ws`` (deploy/images/build.sh copies it); the process runtime imports it
as ``nbpool.sandbox_ws``. It needs only jupyter_server, never nbpool.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

__all__ = ["NoDelayKernelConnection"]


class NoDelayKernelConnection(ZMQChannelsWebsocketConnection):
    """Jupyter's kernel websocket connection with TCP_NODELAY set on the socket."""

    # Jupyter's own connect is a coroutine function, whatever its annotation says.
    async def connect(self) -> Any:  # type: ignore[override]
        self.websocket_handler.set_nodelay(True)
        return await super().connect()  # type: ignore[misc]
