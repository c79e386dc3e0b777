"""Embedding: Binder's launch protocol (``/build`` events, ``/v2`` links) and the sandboxes'
CORS for other pages, on a live nbpool (process runtime; the thebe page in Chromium is in
test_browser.py, the image's side in test_docker.py)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest
import websockets.sync.client
from cluster import Cluster
from waiting import poll_until

PAGE = "http://127.0.0.1:9"  # an embedding page's origin: only ever named in headers, never reached


def _events(url: str, origin: str | None = None, timeout: float = 90) -> tuple[httpx.Response, list[dict[str, Any]]]:
    """A /build stream read to its end: the response (headers) and its events, in order."""
    events: list[dict[str, Any]] = []
    with httpx.stream("GET", url, timeout=timeout, headers={"Origin": origin} if origin else {}) as resp:
        if resp.status_code != 200:
            resp.read()
            return resp, events
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[len("data: "):]))
            else:
                assert line == "" or line.startswith(":"), f"not server-sent events: {line!r}"
    return resp, events


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


def test_build_streams_binder_events_and_the_session_serves_the_warm_kernel(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1"})
    resp, events = _events(f"{cluster.url}/build/gh/org/repo/HEAD", origin=PAGE)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["access-control-allow-origin"] in (PAGE, "*")
    assert [e["phase"] for e in events] == ["built", "launching", "ready"], events
    ready = events[-1]
    assert all(isinstance(e["message"], str) for e in events)
    sid, token = ready["session_id"], ready["token"]
    assert ready["url"] == cluster.origin(sid) + "/"
    assert cluster.record(sid)["state"] == "claimed"  # type: ignore[index]

    # thebe's calls: with the token in a header, from the page's origin.
    url = ready["url"]
    sessions = httpx.get(f"{url}api/sessions", headers=_auth(token) | {"Origin": PAGE})
    assert sessions.status_code == 200, sessions.text
    assert sessions.headers["access-control-allow-origin"] in (PAGE, "*")
    warm = {s["path"]: s["kernel"]["id"] for s in sessions.json()}
    assert "Welcome.ipynb" in warm, warm
    # A session for the pre-started notebook's path is the running kernel (thebe: kernelOptions.path).
    body = {"path": "Welcome.ipynb", "name": "Welcome.ipynb", "type": "notebook", "kernel": {"name": "python3"}}
    made = httpx.post(f"{url}api/sessions", json=body, headers=_auth(token) | {"Origin": PAGE})
    assert made.status_code in (200, 201), made.text
    assert made.json()["kernel"]["id"] == warm["Welcome.ipynb"]
    # A page view later, thebe checks its saved server with GET api/kernels: a preflight, then the call.
    preflight = httpx.options(f"{url}api/kernels", headers={
        "Origin": PAGE, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code < 300, preflight.text
    assert preflight.headers["access-control-allow-origin"] in (PAGE, "*")
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    # The browser keeps the grant (Chromium's default is 5 s: a second round trip for each call).
    assert int(preflight.headers["access-control-max-age"]) >= 600
    assert httpx.get(f"{url}api/kernels", headers=_auth(token) | {"Origin": PAGE}).status_code == 200
    # JupyterLab may be framed by any page (the default), and never sends credentials' grant.
    lab = httpx.get(f"{url}lab?token={token}")
    assert "frame-ancestors 'self' *" in lab.headers["content-security-policy"]
    assert "access-control-allow-credentials" not in {k.lower() for k in preflight.headers}


def test_another_origins_page_needs_the_token_not_the_cookie(make_cluster: Any) -> None:
    """The visitor's login cookie never opens the sandbox to another origin's page: CORS is for
    pages that hold the token (the other sandboxes' pages are same-site and would get the cookie)."""
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1"})
    session = cluster.new_session()
    base = cluster.base(session)
    with httpx.Client() as browser:
        opened = browser.get(f"{base}lab?token={session['token']}")  # as the visitor's browser: the cookie is set
        assert opened.status_code == 200 and browser.cookies, opened.headers
        assert browser.get(f"{base}api/kernels").status_code == 200  # the sandbox's own page
        assert browser.get(f"{base}api/kernels", headers={"Origin": cluster.origin(session["id"])}).status_code == 200
        for foreign in (PAGE, cluster.origin("0000aaaa0000"), "null"):
            refused = browser.get(f"{base}api/kernels", headers={"Origin": foreign})
            assert refused.status_code == 403, (foreign, refused.status_code)
            kernel_ws = browser.get(f"{base}api/kernels/{session['kernel_id']}/channels", headers={
                "Origin": foreign, "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
            assert kernel_ws.status_code == 403, (foreign, kernel_ws.status_code)
        framed = browser.get(f"{base}lab", headers={"Sec-Fetch-Dest": "iframe", "Sec-Fetch-Site": "cross-site",
                                                    "Sec-Fetch-Mode": "navigate"})
        assert framed.status_code in (302, 403) and "/lab" not in framed.headers.get("location", "/login"), framed
        # A file included as a script by another sandbox's page (same-site: the cookie would come along).
        included = browser.get(f"{base}files/Welcome.ipynb", headers={
            "Sec-Fetch-Dest": "script", "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"})
        assert included.status_code in (302, 403), included.status_code
        # The visitor following a link to their own server keeps the cookie.
        followed = browser.get(f"{base}api/kernels", headers={
            "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
        assert followed.status_code == 200
        # Such requests leave the visitor signed in.
        assert browser.get(f"{base}api/kernels").status_code == 200
        # With the token, the same foreign page gets in.
        allowed = browser.get(f"{base}api/kernels", headers={"Origin": PAGE} | _auth(session["token"]))
        assert allowed.status_code == 200


def test_a_narrowed_embed_setting_grants_only_its_origins(make_cluster: Any) -> None:
    allowed, refused = "http://book.example.test:8080", "http://other.example.test"
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_EMBED_ORIGINS": f"{allowed}, https://*.docs.test"})
    session = cluster.new_session()
    base, auth = cluster.base(session), _auth(session["token"])
    for origin in (allowed, "https://a.b.docs.test"):
        pre = httpx.options(f"{base}api/kernels", headers={
            "Origin": origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
        assert pre.headers.get("access-control-allow-origin") == origin, (origin, dict(pre.headers))
        assert httpx.get(f"{base}api/kernels", headers={"Origin": origin} | auth).status_code == 200
    for origin in (refused, "https://docs.test", "https://docs.test.evil.test"):
        pre = httpx.options(f"{base}api/kernels", headers={
            "Origin": origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"})
        assert "access-control-allow-origin" not in pre.headers, (origin, dict(pre.headers))
        assert "access-control-max-age" not in pre.headers, (origin, dict(pre.headers))
        assert httpx.get(f"{base}api/kernels", headers={"Origin": origin} | auth).status_code in (403, 404)
    # Kernel websockets with the token: from an allowed origin only (Jupyter alone lets any
    # origin in once the token is given).
    channels = f"ws://{session['id']}.sb.localhost:{cluster.proxy_port}/api/kernels/{session['kernel_id']}/channels"
    with websockets.sync.client.connect(f"{channels}?token={session['token']}", origin=allowed, open_timeout=30):  # type: ignore[arg-type]
        pass
    with pytest.raises(websockets.exceptions.InvalidStatus) as refused_ws:
        websockets.sync.client.connect(f"{channels}?token={session['token']}", origin=refused, open_timeout=30)  # type: ignore[arg-type]
    assert refused_ws.value.response.status_code in (403, 404)
    csp = httpx.get(f"{base}lab?token={session['token']}").headers["content-security-policy"]
    assert f"frame-ancestors 'self' {allowed} https://*.docs.test" in csp
    # The launch stream grants the same origins, and only them.
    assert _events(f"{cluster.url}/build/gh/o/r/HEAD", origin=allowed)[0].headers["access-control-allow-origin"] == allowed
    assert "access-control-allow-origin" not in _events(f"{cluster.url}/build/gh/o/r/HEAD", origin=refused)[0].headers
    # The gateway's other endpoints and the admin grant nothing, to anyone.
    for url in (f"{cluster.url}/sessions", f"{cluster.url}/api/stats", f"{cluster.admin_url}/admin",
                f"{cluster.url}/sessions/{session['id']}"):
        pre = httpx.options(url, headers={"Origin": allowed, "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "authorization"})
        assert "access-control-allow-origin" not in pre.headers, (url, dict(pre.headers))
        got = httpx.get(url, headers={"Origin": allowed})
        assert "access-control-allow-origin" not in got.headers, url


def test_the_line_over_the_event_stream(make_cluster: Any) -> None:
    """An empty pool: waiting, then ready; a client that goes away leaves the line; a full
    nbpool: failed, and the stream ends."""
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_MAX_SANDBOXES": "2"})
    taken = cluster.new_session()  # the warm one; the next is starting
    # Held stopped, so that the pool stays empty while the line is looked at (its start deadline
    # is 60 s); without this the race against its start decides what the first event is.
    starting = poll_until(lambda: next((p for sid, p in cluster.server_processes().items() if sid != taken["id"]), None),
                          60, "the next sandbox's server")
    starting.suspend()
    try:
        # A client that reads one event and goes away.
        with httpx.stream("GET", f"{cluster.url}/build/gh/org/repo/HEAD", timeout=30) as gone:
            # (Held in a name: an iterator of httpx's that is dropped closes the connection.)
            lines = gone.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["phase"] == "waiting"
            assert httpx.get(f"{cluster.url}/api/stats").json()["waiting"] >= 1
        poll_until(lambda: httpx.get(f"{cluster.url}/api/stats").json()["waiting"] == 0, 15, "the gone client left the line")

        events: list[dict[str, Any]] = []
        with httpx.stream("GET", f"{cluster.url}/build/gh/org/repo/HEAD", timeout=90) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: "):]))
                    if len(events) == 1:
                        starting.resume()  # the client waits in line: now let the sandbox come up
    finally:
        starting.resume()
    phases = [e["phase"] for e in events]
    assert phases[0] == "waiting" and phases[-1] == "ready" and "failed" not in phases, events
    assert events[0]["position"] == 1  # the client that went away kept no place
    assert cluster.record(events[-1]["session_id"])["state"] == "claimed"  # type: ignore[index]
    claimed = [r for r in cluster.status()["sandboxes"] if r["state"] == "claimed"]
    assert len(claimed) == 2, claimed  # nothing was claimed for the client that went away

    began = time.monotonic()
    _, events = _events(f"{cluster.url}/build/gh/org/repo/HEAD")
    assert [e["phase"] for e in events][-1] == "failed" and "in use" in events[-1]["message"], events
    assert time.monotonic() - began < 20
    poll_until(lambda: httpx.get(f"{cluster.url}/api/stats").json()["waiting"] == 0, 10, "the failed client left the line")


def test_binder_specs_choose_profiles_and_links_open_pages(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({
        "NBPOOL_PROFILES": json.dumps({"default": {"pool_size": 1}, "course": {"pool_size": 1, "description": "a course"}}),
        "NBPOOL_BINDER_SPECS": json.dumps({"gh/org/course/*": "course", "gh/org/lab/HEAD": "default"}),
        "NBPOOL_BINDER_REFUSE_UNKNOWN": "true",
    }, warm=2)
    _, events = _events(f"{cluster.url}/build/gh/org/course/main")
    assert events[-1]["phase"] == "ready" and events[-1]["profile"] == "course", events
    assert cluster.record(events[-1]["session_id"])["pool"] == "course"  # type: ignore[index]
    for url, status in ((f"{cluster.url}/build/gh/org/unknown/HEAD", 404), (f"{cluster.url}/build/xx/org/lab/HEAD", 404),
                        (f"{cluster.url}/v2/gh/other/repo/HEAD", 404)):
        got = httpx.get(url)
        assert got.status_code == status and got.json()["detail"], (url, got.text)
    link = httpx.get(f"{cluster.url}/v2/gh/org/lab/HEAD?urlpath=lab/tree/Welcome.ipynb")
    assert link.status_code == 302, link.text
    assert link.headers["location"].split("?")[0].endswith(f".sb.localhost:{cluster.proxy_port}/lab/tree/Welcome.ipynb")
    for query in ("labpath=Welcome.ipynb", "filepath=Welcome.ipynb"):
        cluster.wait_warm(1)
        link = httpx.get(f"{cluster.url}/v2/gh/org/course/HEAD?{query}")
        assert link.status_code in (200, 302), link.text  # 200: the waiting page, while the pool refills
    cluster.wait_warm(1)
    first = httpx.get(f"{cluster.url}/v2/gh/org/course/HEAD?urlpath=lab/tree/a.ipynb&labpath=b.ipynb")
    assert first.status_code in (200, 302), first.text  # urlpath, then labpath, then filepath: the first decides
    if first.status_code == 302:
        assert first.headers["location"].split("?")[0].endswith("/lab/tree/a.ipynb")
    assert httpx.get(f"{cluster.url}/v2/gh/org/lab/HEAD?labpath=../../etc/passwd").status_code == 422


def test_two_clients_at_once_each_get_their_own_server(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "2"}, warm=2)
    results: list[list[dict[str, Any]]] = []
    threads = [threading.Thread(target=lambda: results.append(_events(f"{cluster.url}/build/gh/o/r/HEAD")[1]))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ready = [events[-1] for events in results]
    assert [e["phase"] for e in ready] == ["ready", "ready"]
    assert len({e["session_id"] for e in ready}) == 2 and len({e["token"] for e in ready}) == 2
