"""Reading a sandbox's activity from its own Jupyter server (``/api/status`` and ``/api/kernels``)."""

from __future__ import annotations

import time
from datetime import datetime

import httpx

from nbpool.models import Activity, SandboxRecord

__all__ = ["read_activity"]


def _epoch(text: str | None) -> float:
    if not text:
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def read_activity(client: httpx.AsyncClient, record: SandboxRecord) -> Activity:
    """What the sandbox is doing now. A busy kernel counts as activity at this moment.

    Raises ``httpx.HTTPError`` when the server does not answer.
    """
    base = f"{record.target}{record.path}api"
    headers = {"Authorization": f"token {record.token}"}
    # no_track_activity: our own polling must not count as the visitor's activity.
    params = {"no_track_activity": "1"}
    status = await client.get(f"{base}/status", headers=headers, params=params)
    status.raise_for_status()
    kernels = await client.get(f"{base}/kernels", headers=headers, params=params)
    kernels.raise_for_status()
    now = time.time()
    info = status.json()
    last = _epoch(info.get("last_activity"))
    busy = 0
    for kernel in kernels.json():
        last = max(last, _epoch(kernel.get("last_activity")))
        if kernel.get("execution_state") == "busy":
            busy += 1
    if busy:
        last = now
    return Activity(
        id=record.id,
        last_activity=last,
        connections=int(info.get("connections", 0)),
        kernels=int(info.get("kernels", 0)),
        busy_kernels=busy,
        at=now,
    )
