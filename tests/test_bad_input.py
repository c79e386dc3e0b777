"""Bad input gets a clear 4xx, and nothing changes."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from cluster import Cluster


def _snapshot(cluster: Cluster) -> dict[str, Any]:
    status = cluster.status()
    return {r["id"]: r["state"] for r in status["sandboxes"] if r["state"] != "starting"}


@pytest.mark.parametrize(
    ("body", "headers", "status", "words"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 422, "JSON"),
        (b'{"profile": "gpu-monster"}', {"Content-Type": "application/json"}, 422, "unknown profile"),
        (b'{"profile": 7}', {"Content-Type": "application/json"}, 422, "string"),
        (b'{"colour": "red"}', {"Content-Type": "application/json"}, 422, "colour"),
        (b'{"path": "../../etc/passwd"}', {"Content-Type": "application/json"}, 422, "path"),
        (b'{"wait": true}', {"Content-Type": "application/json"}, 422, "number"),
        (b'{"wait": "5"}', {"Content-Type": "application/json"}, 422, "number"),
        (b'{"wait": -1}', {"Content-Type": "application/json"}, 422, "wait"),
        (b'["a list"]', {"Content-Type": "application/json"}, 422, ""),
        (b'{"path": "' + b"x" * 40_000 + b'"}', {"Content-Type": "application/json"}, 413, "larger than"),
    ],
)
def test_bad_launch_requests(cluster: Cluster, body: bytes, headers: dict[str, str], status: int, words: str) -> None:
    cluster.wait_warm(2)
    before = _snapshot(cluster)
    resp = httpx.post(f"{cluster.url}/sessions", content=body, headers=headers)
    assert resp.status_code == status, resp.text
    assert words in resp.text
    assert resp.json()["detail"]
    assert _snapshot(cluster) == before


def test_oversized_body_without_length_header(cluster: Cluster) -> None:
    def chunks() -> Any:
        for _ in range(64):
            yield b"x" * 1024

    resp = httpx.post(f"{cluster.url}/sessions", content=chunks(), headers={"Content-Type": "application/json"})
    assert resp.status_code == 413


def test_wrong_or_missing_token(cluster: Cluster) -> None:
    session = cluster.new_session()
    url = f"{cluster.url}/sessions/{session['id']}"
    missing = httpx.get(url)
    assert missing.status_code == 401 and "token" in missing.json()["detail"]
    wrong = httpx.delete(url, headers={"Authorization": "token not-the-token"})
    assert wrong.status_code == 403 and "wrong token" in wrong.json()["detail"]
    assert httpx.get(f"{cluster.url}/sessions/nosuchsession0", params={"token": "x"}).status_code == 404
    assert httpx.get(f"{cluster.url}/sessions/BAD!id", params={"token": "x"}).status_code in (404, 422)
    # The session is untouched by all of that.
    info = httpx.get(url, headers={"Authorization": f"Bearer {session['token']}"})
    assert info.status_code == 200 and info.json()["state"] == "claimed"
    # Another session's token does not open it either.
    other = cluster.new_session()
    assert httpx.get(url, params={"token": other["token"]}).status_code == 403


def test_unknown_profile_on_spawn_link(cluster: Cluster) -> None:
    resp = httpx.get(f"{cluster.url}/spawn", params={"profile": "nope"}, follow_redirects=False)
    assert resp.status_code == 422 and "unknown profile" in resp.text


def test_rate_limit(make_cluster: Any) -> None:
    c = make_cluster({"NBPOOL_RATE_LIMIT": "6", "NBPOOL_RATE_BURST": "2", "NBPOOL_POOL_SIZE": "3"}, warm=3)
    codes = [httpx.post(f"{c.url}/sessions").status_code for _ in range(3)]
    assert codes[:2] == [201, 201]
    assert codes[2] == 429
    limited = httpx.post(f"{c.url}/sessions")
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert "too many launches" in limited.json()["detail"]
