"""Each sandbox on its own origin; the gateway and the admin on theirs (NBPOOL_ROUTING=host).

The browser side (a sandbox's page trying to read another sandbox and the admin) is in
test_browser.py; here the same boundaries as a program sees them, and the admin's sessions.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import websockets
from cluster import Cluster
from kernel import execute_on

TOKEN = "an-admin-token-for-tests"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def test_two_sandboxes_two_origins_neither_the_gateways_nor_the_admins(cluster: Cluster) -> None:
    one, two = cluster.new_session(), cluster.new_session()
    origins = {_origin(one["url"]), _origin(two["url"])}
    assert origins == {f"http://{s['id']}.sb.localhost:{cluster.proxy_port}" for s in (one, two)}
    assert _origin(cluster.url) not in origins and _origin(cluster.admin_url) not in origins
    # Each origin serves its own sandbox, and only with its own token.
    for session, other in ((one, two), (two, one)):
        base = cluster.base(session)
        assert httpx.get(f"{base}api/status", params={"token": session["token"]}).status_code == 200
        assert httpx.get(f"{base}api/status", params={"token": other["token"]}).status_code == 403


async def test_a_program_uses_the_url_it_was_given_unchanged(cluster: Cluster) -> None:
    """httpx and websockets, with the names resolved by the machine itself (*.localhost)."""
    session = httpx.post(f"{cluster.url}/sessions", timeout=30).json()
    async with httpx.AsyncClient(timeout=30) as client:
        lab = await client.get(session["url"])
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    parts = urlsplit(session["url"])
    ws_url = f"ws://{parts.netloc}/api/kernels/{session['kernel_id']}/channels?{parts.query}"
    async with websockets.connect(ws_url, open_timeout=30) as ws:
        assert await execute_on(ws, "1+1") == "2"


def test_the_gateways_origin_never_serves_a_sandbox(cluster: Cluster) -> None:
    session = cluster.new_session()
    old = f"{cluster.url}/user/{session['id']}/lab/tree/Welcome.ipynb?token={session['token']}"
    moved = httpx.get(old, follow_redirects=False)
    assert moved.status_code == 302
    assert moved.headers["location"] == f"{cluster.base(session)}lab/tree/Welcome.ipynb?token={session['token']}"
    for path in ("lab", "api/contents", "api/status", "files/Welcome.ipynb"):
        resp = httpx.get(f"{cluster.url}/user/{session['id']}/{path}", params={"token": session["token"]},
                         headers={"Accept": "text/html"})
        assert resp.status_code == 302 and "jupyter" not in resp.text.lower(), path
    httpx.delete(f"{cluster.url}/sessions/{session['id']}", params={"token": session["token"]})
    gone = httpx.get(old, headers={"Accept": "text/html"}, follow_redirects=False)
    assert gone.status_code == 404 and "has ended" in gone.text and "JupyterLab" not in gone.text


def test_pages_send_strict_headers(cluster: Cluster) -> None:
    for url in (f"{cluster.url}/", f"{cluster.url}/spawn?profile=nope", f"{cluster.url}/api/stats",
                f"{cluster.admin_url}/admin", f"{cluster.origin('deadbeef0000')}/lab"):
        resp = httpx.get(url, headers={"Accept": "text/html"})
        csp = resp.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp, url
        assert resp.headers["x-content-type-options"] == "nosniff", url
        assert resp.headers["referrer-policy"] == "no-referrer", url
    # Every script of the landing page is one the policy names by its hash.
    landing = httpx.get(f"{cluster.url}/")
    scripts = re.findall(r"<script>(.*?)</script>", landing.text, re.S)
    assert scripts and all(_hash(js) in landing.headers["content-security-policy"] for js in scripts)


def _hash(js: str) -> str:
    import base64
    import hashlib

    return "sha256-" + base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()


def test_admin_lives_on_its_own_origin(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_ADMIN_TOKEN": TOKEN}, warm=1)
    moved = httpx.get(f"{cluster.url}/admin?x=1", follow_redirects=False)
    assert moved.status_code == 307 and moved.headers["location"] == f"{cluster.admin_url}/admin?x=1"
    # The admin's origin serves the admin only.
    assert httpx.get(f"{cluster.admin_url}/", follow_redirects=False).headers["location"] == "/admin"
    assert httpx.post(f"{cluster.admin_url}/sessions").status_code == 404
    assert httpx.get(f"{cluster.admin_url}/api/stats").status_code == 404


def _sign_in(client: httpx.Client) -> str:
    """Sign a browser-like client in to the admin; the CSRF token its page carries."""
    signed = client.post("/admin/login", data={"token": TOKEN}, follow_redirects=False)
    assert signed.status_code == 303
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Domain" not in cookie and "Path=/admin" in cookie
    page = client.get("/admin")
    assert page.status_code == 200
    found = re.search(r'"csrf": "([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def test_admin_sessions_expire_end_and_cannot_be_forged(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster(
        {"NBPOOL_POOL_SIZE": "2", "NBPOOL_ADMIN_TOKEN": TOKEN, "NBPOOL_ADMIN_SESSION_TTL": "4"}, warm=2
    )
    live = cluster.new_session()
    # Without a session.
    assert httpx.get(f"{cluster.admin_url}/admin/api/state").status_code == 401
    assert httpx.get(f"{cluster.admin_url}/admin").status_code == 401
    # A forged cookie: what the old scheme derived from the token, and a random one.
    import hashlib
    import hmac

    for forged in (hmac.new(TOKEN.encode(), b"nbpool-admin", hashlib.sha256).hexdigest(), "x" * 43):
        resp = httpx.get(f"{cluster.admin_url}/admin/api/state", cookies={"nbpool_admin": forged})
        assert resp.status_code == 401
    # Signed in: the state; a change without the CSRF token is refused and changes nothing.
    client = httpx.Client(base_url=cluster.admin_url, timeout=30)
    csrf = _sign_in(client)
    assert client.get("/admin/api/state").json()["sessions"][0]["id"] == live["id"]
    refused = client.post(f"/admin/api/sessions/{live['id']}/end", json={})
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    refused = client.post("/admin/api/drain", json={"draining": True}, headers={"X-CSRF-Token": "not-it"})
    assert refused.status_code == 403
    assert client.get("/admin/api/state").json()["draining"] is False
    assert httpx.get(f"{cluster.url}/sessions/{live['id']}", params={"token": live["token"]}).status_code == 200
    assert client.post("/admin/logout", data={}, follow_redirects=False).status_code == 403
    # With it, the change is made.
    ended = client.post(f"/admin/api/sessions/{live['id']}/end", json={}, headers={"X-CSRF-Token": csrf})
    assert ended.status_code == 204
    assert httpx.get(f"{cluster.url}/sessions/{live['id']}", params={"token": live["token"]}).status_code == 404
    # Sign-out revokes the session itself, not only the cookie in this browser.
    cookie = client.cookies["nbpool_admin"]
    assert client.post("/admin/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert httpx.get(f"{cluster.admin_url}/admin/api/state", cookies={"nbpool_admin": cookie}).status_code == 401
    client.close()
    # A session ends by itself after NBPOOL_ADMIN_SESSION_TTL.
    with httpx.Client(base_url=cluster.admin_url, timeout=30) as client:
        _sign_in(client)
        assert client.get("/admin/api/state").status_code == 200
        time.sleep(4.5)
        assert client.get("/admin/api/state").status_code == 401


def test_odd_admin_tokens_are_refused(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "0", "NBPOOL_ADMIN_TOKEN": TOKEN}, warm=0)
    with httpx.Client(base_url=cluster.admin_url, timeout=30) as client:
        for token in ["é", "", " ", "x" * 5000, "\x00\x01", TOKEN + "x"]:
            login = client.post("/admin/login", data={"token": token})
            assert login.status_code == 401, repr(token)
        for header in ["token é".encode(), b"token", b"token  x", b"Bearer " + b"x" * 5000, b"token \xff\xfe", b"basic abc"]:
            api = client.get("/admin/api/state", headers={"Authorization": header})
            assert api.status_code == 401, header


async def test_path_routing_is_an_explicit_opt_in_that_warns(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_ROUTING": "path"}, warm=1)
    session = cluster.new_session()
    assert session["url"].startswith(f"{cluster.url}/user/{session['id']}/lab?token=")
    parts = urlsplit(session["url"])
    ws_url = f"ws://{parts.netloc}/user/{session['id']}/api/kernels/{session['kernel_id']}/channels?{parts.query}"
    async with websockets.connect(ws_url, open_timeout=30) as ws:
        assert await execute_on(ws, "1+1") == "2"
    assert "NBPOOL_ROUTING=path" in cluster.logs(tail=400)
