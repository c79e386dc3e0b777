"""A minimal Jupyter kernel client for tests and benchmarks: start a kernel, run code over its websocket."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import websockets


async def start_kernel(client: httpx.AsyncClient, base: str, token: str) -> str:
    """Start a kernel on the server at ``base`` (``http://<id>.sb.localhost:<port>/``); its id."""
    resp = await client.post(f"{base}api/kernels", headers={"Authorization": f"token {token}"}, json={"name": "python3"})
    resp.raise_for_status()
    return str(resp.json()["id"])


def _request(code: str, session: str, store_history: bool = False) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "username": "test",
            "session": session,
            "msg_type": "execute_request",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"code": code, "silent": False, "store_history": store_history, "user_expressions": {},
                    "allow_stdin": False},
        "channel": "shell",
    }


async def execute(base: str, token: str, kernel_id: str, code: str, timeout: float = 30.0,
                  via: tuple[str, int] | None = None) -> str:
    """Run ``code`` and return its result (``execute_result`` text/plain, or stdout).

    ``via``: connect to this (address, port) instead of the URL's host, which still names the
    server (the Host header), as a proxy reached by address rather than by name.
    """
    ws_url = base.replace("http://", "ws://", 1) + f"api/kernels/{kernel_id}/channels?token={token}"
    where = {"host": via[0], "port": via[1]} if via else {}
    async with websockets.connect(ws_url, open_timeout=timeout, close_timeout=2, **where) as ws:
        return await execute_on(ws, code, timeout)


async def execute_on(ws: Any, code: str, timeout: float = 30.0) -> str:
    """Run ``code`` on an open kernel websocket and return its result."""
    import asyncio

    request = _request(code, uuid.uuid4().hex)
    await ws.send(json.dumps(request))
    msg_id = request["header"]["msg_id"]
    output = []

    async def collect() -> str:
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            if kind == "execute_result":
                return str(msg["content"]["data"]["text/plain"])
            if kind == "stream":
                output.append(msg["content"]["text"])
            if kind == "error":
                raise RuntimeError(f"{msg['content']['ename']}: {msg['content']['evalue']}")
            if kind == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(output)

    return await asyncio.wait_for(collect(), timeout)


async def execute_reply(ws: Any, code: str, store_history: bool = True) -> dict[str, Any]:
    """Run ``code`` as a notebook cell does (in the history by default); the ``execute_reply``."""
    request = _request(code, uuid.uuid4().hex, store_history=store_history)
    await ws.send(json.dumps(request))
    while True:
        msg = json.loads(await ws.recv())
        if msg["msg_type"] == "execute_reply" and msg["parent_header"].get("msg_id") == request["header"]["msg_id"]:
            return msg  # type: ignore[no-any-return]
