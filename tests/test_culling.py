"""The culler ends idle sessions, and only those: a busy kernel or websocket traffic keeps one alive."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import websockets
from cluster import Cluster, sandbox_of
from kernel import _request, execute_on, start_kernel
from waiting import poll_until

IDLE = 4.0


def _alive(cluster: Cluster, session: dict[str, Any]) -> bool:
    resp = httpx.get(f"{cluster.url}/sessions/{session['id']}", params={"token": session["token"]})
    return resp.status_code == 200 and resp.json()["state"] == "claimed"


async def test_idle_is_culled_busy_and_chatty_are_not(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster(
        {
            "NBPOOL_IDLE_TIMEOUT": str(IDLE),
            "NBPOOL_CULL_INTERVAL": "0.5",
            "NBPOOL_ACTIVITY_INTERVAL": "0.5",
            "NBPOOL_POOL_SIZE": "3",
            "NBPOOL_SPAWN_CONCURRENCY": "3",
        },
        warm=3,
    )
    idle, busy, chatty = cluster.new_session(), cluster.new_session(), cluster.new_session()
    async with httpx.AsyncClient(timeout=30) as client:
        busy_kernel = await start_kernel(client, cluster.base(busy), busy["token"])
        chatty_kernel = await start_kernel(client, cluster.base(chatty), chatty["token"])

    # A cell that runs for 4 idle timeouts, printing nothing; the visitor closes the tab meanwhile.
    ws_url = cluster.base(busy).replace("http", "ws", 1) + f"api/kernels/{busy_kernel}/channels?token={busy['token']}"
    async with websockets.connect(ws_url) as ws:
        await ws.send(json.dumps(_request(f"import time; time.sleep({4 * IDLE})", uuid.uuid4().hex)))
        await asyncio.sleep(0.5)

    # Websocket traffic: a cell every second, for 3 idle timeouts.
    ws_url = cluster.base(chatty).replace("http", "ws", 1) + f"api/kernels/{chatty_kernel}/channels?token={chatty['token']}"
    async with websockets.connect(ws_url) as ws:
        began = time.monotonic()
        while time.monotonic() - began < 3 * IDLE:
            assert await execute_on(ws, "1+1") == "2"
            await asyncio.sleep(1.0)

    assert not _alive(cluster, idle), "the idle session should have been culled"
    assert _alive(cluster, busy), "a session running a cell was culled"
    assert _alive(cluster, chatty), "a session with websocket traffic was culled"

    # The idle one is really gone: no process, its link answers 404, and the decision is on the bus.
    assert idle["id"] not in {sandbox_of(p) for p in cluster.sandbox_processes()}
    assert httpx.get(f"{cluster.base(idle)}api/status", params={"token": idle["token"]}).status_code == 404
    events = cluster.events()
    decisions = [e for e in events if e["type"] == "cull.decision"]
    assert {(e["sandbox_id"], e["cause"]) for e in decisions} >= {(idle["id"], "idle")}
    assert busy["id"] not in {e["sandbox_id"] for e in decisions}
    assert idle["id"] in {e["sandbox_id"] for e in events if e["type"] == "sandbox.ended"}

    # Once quiet, the others go too.
    poll_until(lambda: not _alive(cluster, busy) and not _alive(cluster, chatty), 6 * IDLE,
               "the busy and chatty sessions culled once quiet", interval=0.5)
