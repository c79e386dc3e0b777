"""The admin API: the token, draining the pool and resuming."""

from __future__ import annotations

from typing import Any

import httpx
from cluster import Cluster
from waiting import poll_until

TOKEN = "an-admin-token-for-tests"


def test_admin_api_needs_the_token(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_ADMIN_TOKEN": TOKEN}, warm=1)
    admin = cluster.admin_url
    assert httpx.get(f"{admin}/admin/api/state").status_code == 401
    assert httpx.get(f"{admin}/admin/api/state", headers={"Authorization": "token nope"}).status_code == 401
    state = httpx.get(f"{admin}/admin/api/state", headers={"Authorization": f"token {TOKEN}"}).json()
    assert state["available"] == 1 and state["draining"] is False
    # A form post from another site cannot end sessions: JSON only.
    session = cluster.new_session()
    form = httpx.post(f"{admin}/admin/api/sessions/{session['id']}/end",
                      headers={"Authorization": f"token {TOKEN}"}, data={"x": "1"})
    assert form.status_code == 415


def test_drain_and_resume(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "2", "NBPOOL_ADMIN_TOKEN": TOKEN}, warm=2)
    auth = {"Authorization": f"token {TOKEN}"}
    live = cluster.new_session()
    assert httpx.post(f"{cluster.admin_url}/admin/api/drain", json={"draining": True}, headers=auth).status_code == 200

    def only_claimed() -> list[dict[str, Any]] | None:
        records: list[dict[str, Any]] = cluster.status()["sandboxes"]
        return records if [r["state"] for r in records] == ["claimed"] else None

    records = poll_until(only_claimed, 20, "the warm sandboxes ended")
    assert [r["id"] for r in records] == [live["id"]]  # and the live session goes on
    refused = httpx.post(f"{cluster.url}/sessions")
    assert refused.status_code == 503 and "draining" in refused.json()["detail"]
    assert httpx.get(f"{cluster.base(live)}api/status", params={"token": live["token"]}).status_code == 200
    assert httpx.post(f"{cluster.admin_url}/admin/api/drain", json={"draining": False}, headers=auth).status_code == 200
    cluster.wait_warm(2, timeout=60)
    assert httpx.post(f"{cluster.url}/sessions").status_code == 201
