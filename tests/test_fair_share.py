"""One client cannot hold the pool: a cap on live sessions per client, sandboxes only for
visitors who are there, and claimed sessions nobody opens ended soon."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
from cluster import Cluster
from waiting import poll_until


def test_a_client_at_its_cap_gets_429_another_client_still_a_sandbox(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "3", "NBPOOL_SPAWN_CONCURRENCY": "3",
                                     "NBPOOL_MAX_SESSIONS_PER_CLIENT": "2"}, warm=3)
    mine = [cluster.new_session(), cluster.new_session()]
    refused = httpx.post(f"{cluster.url}/sessions")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "NBPOOL_MAX_SESSIONS_PER_CLIENT" in refused.json()["detail"]
    assert httpx.get(f"{cluster.url}/spawn", follow_redirects=False).status_code == 429
    # Another address (Traefik tells the gateway the client's own: ::1 here) is not held back.
    other = httpx.post(f"http://[::1]:{cluster.proxy_port}/sessions")
    assert other.status_code == 201, other.text
    # Ending one of its sessions gives the first client room again.
    httpx.delete(f"{cluster.url}/sessions/{mine[0]['id']}", params={"token": mine[0]["token"]})
    cluster.wait_warm(1, timeout=60)
    assert httpx.post(f"{cluster.url}/sessions").status_code == 201


def test_a_spawn_link_nobody_follows_gets_no_sandbox(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_MAX_SANDBOXES": "1"}, warm=1)
    taken = cluster.new_session()
    # A crawler or link preview: one GET, never followed up.
    page = httpx.get(f"{cluster.url}/spawn", follow_redirects=False)
    assert page.status_code == 503
    found = re.search(r'href="/queue/([^"]+)"', page.text)
    assert found is not None
    httpx.delete(f"{cluster.url}/sessions/{taken['id']}", params={"token": taken["token"]})
    cluster.wait_warm(1, timeout=60)
    time.sleep(3)  # time enough for the line to hand the sandbox to anyone who wanted it
    assert cluster.wait_warm(1)["in_use"] == 0
    # A visitor whose page is there (the page without scripts reloads this) gets it.
    resp = poll_until(lambda: (r := httpx.get(f"{cluster.url}/queue/{found.group(1)}", follow_redirects=False)).status_code == 302 and r,
                      30, "the watched ticket sent on to its sandbox", interval=1)
    assert ".sb.localhost:" in resp.headers["location"]


def test_a_claimed_session_nobody_opens_is_ended(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "2", "NBPOOL_UNOPENED_TIMEOUT": "4",
                                     "NBPOOL_CULL_INTERVAL": "0.5", "NBPOOL_ACTIVITY_INTERVAL": "0.5"}, warm=2)
    unopened, opened = cluster.new_session(), cluster.new_session()
    assert httpx.get(f"{cluster.base(opened)}api/contents", params={"token": opened["token"]}).status_code == 200
    poll_until(lambda: httpx.get(f"{cluster.url}/sessions/{unopened['id']}", params={"token": unopened["token"]}).status_code == 404,
               30, "the unopened session ended", interval=0.5)
    info = httpx.get(f"{cluster.url}/sessions/{opened['id']}", params={"token": opened["token"]})
    assert info.status_code == 200 and info.json()["state"] == "claimed"
    decisions = [e for e in cluster.events() if e["type"] == "cull.decision"]
    assert [(e["sandbox_id"], e["cause"]) for e in decisions] == [(unopened["id"], "unopened")]
