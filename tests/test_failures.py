"""Sandboxes that fail to start are reported, retried with backoff, and never handed out."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx

from cluster import BIN, Cluster


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
    events = subprocess.run(
        [str(BIN / "nbpool"), "events", "--json", "--all", "--timeout", "2"],
        env=cluster.env | {"NBPOOL_NATS_URL": cluster.nats_url}, capture_output=True, text=True, timeout=30,
    ).stdout
    failed = [json.loads(line) for line in events.splitlines() if '"sandbox.failed"' in line]
    assert failed, events
    assert "jupyter is broken here" in failed[0]["cause"]
    # Backoff: 1 s, 2 s, 4 s ... so a few failures in six seconds, not dozens.
    delays = [e["data"]["retry_in_s"] for e in failed]
    assert delays == sorted(delays) and delays[-1] > delays[0]
    assert len(failed) < 12
    assert not [e for e in events.splitlines() if '"sandbox.warm"' in e]
    # Nothing is left of the failed starts.
    assert cluster.status()["sandboxes"] == []
    assert not cluster.sandbox_processes()
