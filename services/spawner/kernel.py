"""A kernel started ahead of the visitor: the pooled sandbox's Welcome notebook session.

Starting a Python kernel takes most of a second; doing it while the sandbox waits in the pool
takes that second off the visitor's first run. The session is the notebook's own, so JupyterLab
opening ``Welcome.ipynb`` finds its kernel already running, and the API hands out its id.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import websockets
from nbpool.models import SandboxRecord

__all__ = ["prestart_kernel"]


async def prestart_kernel(client: httpx.AsyncClient, rec: SandboxRecord, notebook: str, timeout: float) -> str:
    """Start the notebook session's kernel and wait until it answers; the kernel's id.

    Raises ``httpx.HTTPError``, ``OSError`` or ``TimeoutError`` when the kernel does not come up.
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
    # Jupyter connects to the kernel's channels on the first websocket; do that now as well.
    url = base.replace("http", "ws", 1) + f"api/kernels/{kernel_id}/channels"
    request: dict[str, Any] = {
        "header": {"msg_id": uuid.uuid4().hex, "session": uuid.uuid4().hex, "username": "nbpool",
                   "msg_type": "kernel_info_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "content": {}, "channel": "shell",
    }
    async with websockets.connect(url, additional_headers={"Authorization": f"token {rec.token}"},
                                  open_timeout=timeout, close_timeout=2) as ws:
        await ws.send(json.dumps(request))
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("msg_type") == "kernel_info_reply":
                return kernel_id
