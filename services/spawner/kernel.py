"""A kernel started ahead of the visitor: the pooled sandbox's Welcome notebook session.

Starting a Python kernel takes most of a second; doing it while the sandbox waits in the pool
takes that second off the visitor's first run. The session is the notebook's own, so JupyterLab
opening ``Welcome.ipynb`` finds its kernel already running, and the API hands out its id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import websockets

from nbpool.models import SandboxRecord

__all__ = ["prestart_kernel"]


async def prestart_kernel(client: httpx.AsyncClient, rec: SandboxRecord, notebook: str, timeout: float,
                         mark: Callable[[str], None] = lambda phase: None) -> str:
    """Start the notebook session's kernel and wait until it answers; the kernel's id.

    ``mark`` is called as each step ends: ``"session"`` (the server made the session and launched the
    kernel's process), ``"kernel"`` (the kernel answered its first request), then the warm-up's end is
    the function's return. Raises ``httpx.HTTPError``, ``OSError`` or ``TimeoutError`` when the kernel
    does not come up.
    """
    base = f"{rec.target}{rec.path}"
    resp = await client.post(
        f"{base}api/sessions",
        headers={"Authorization": f"token {rec.token}"},
        json={"path": notebook, "name": notebook, "type": "notebook", "kernel": {}},
        timeout=timeout,
    )
    resp.raise_for_status()
    kernel_id = str(resp.json()["kernel"]["id"])
    mark("session")
    # Jupyter connects to the kernel's channels on the first websocket; do that now as well.
    url = base.replace("http", "ws", 1) + f"api/kernels/{kernel_id}/channels"
    session = uuid.uuid4().hex
    async with websockets.connect(url, additional_headers={"Authorization": f"token {rec.token}"},
                                  open_timeout=timeout, close_timeout=2) as ws:
        await _ask(ws, session, "kernel_info_request", {}, "kernel_info_reply")
        mark("kernel")
        # A kernel's first execution costs about three times a later one (IPython sets up its
        # display hook and formatters then); pay it now. Not in the history and no execution
        # count: the visitor's first cell is still [1].
        await _ask(ws, session, "execute_request", WARM_UP, "execute_reply")
    return kernel_id


#: The warm-up execution: an expression, so that the display hook and formatters run.
WARM_UP: dict[str, Any] = {"code": "0", "silent": False, "store_history": False, "user_expressions": {},
                           "allow_stdin": False, "stop_on_error": False}


async def _ask(ws: Any, session: str, msg_type: str, content: dict[str, Any], reply_type: str) -> dict[str, Any]:
    """Send a request on the shell channel; its reply."""
    msg_id = uuid.uuid4().hex
    await ws.send(json.dumps({
        "header": {"msg_id": msg_id, "session": session, "username": "nbpool", "msg_type": msg_type, "version": "5.3"},
        "parent_header": {}, "metadata": {}, "content": content, "channel": "shell",
    }))
    while True:
        msg = json.loads(await ws.recv())
        if msg.get("msg_type") == reply_type and msg.get("parent_header", {}).get("msg_id") == msg_id:
            return msg  # type: ignore[no-any-return]
