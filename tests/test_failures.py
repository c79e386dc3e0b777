"""Sandboxes that fail to start are reported, retried with backoff, and never handed out."""

from __future__ import annotations

import sys
import time
from typing import Any

import httpx
from cluster import Cluster


def test_failing_server_is_never_pooled(make_cluster: Any) -> None:
    broken = f"{sys.executable} -c 'import sys; print(\"jupyter is broken here\"); sys.exit(3)'"
    cluster: Cluster = make_cluster(
        {"NBPOOL_JUPYTER_COMMAND": broken, "NBPOOL_POOL_SIZE": "2", "NBPOOL_CLAIM_TIMEOUT": "1"}, warm=0
    )
    time.sleep(6)
    resp = httpx.post(f"{cluster.url}/sessions")
    assert resp.status_code == 503 and resp.json()["reason"] == "full" and "Retry-After" in resp.headers
    stats = httpx.get(f"{cluster.url}/api/stats").json()
    assert stats["available"] == 0
    events = cluster.events()
    failed = [e for e in events if e["type"] == "sandbox.failed"]
    assert failed, events
    assert "jupyter is broken here" in failed[0]["cause"]
    # Backoff: 1 s, 2 s, 4 s ... so a few failures in six seconds, not dozens.
    delays = [e["data"]["retry_in_s"] for e in failed]
    assert delays == sorted(delays) and delays[-1] > delays[0]
    assert len(failed) < 12
    assert not [e for e in events if e["type"] == "sandbox.warm"]
    # Nothing is left of the failed starts.
    assert cluster.status()["sandboxes"] == []
    assert not cluster.sandbox_processes()
