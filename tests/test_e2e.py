"""End to end through Traefik: a session, a kernel, a result; the rest of the public API."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import time
from typing import Any

import httpx
import psutil
import websockets
from cluster import BIN, Cluster
from kernel import execute, execute_on, execute_reply, start_kernel
from sockets import kernel_websocket_nodelay


async def test_session_runs_code_through_the_proxy(cluster: Cluster) -> None:
    session = cluster.new_session()
    assert set(session) >= {"id", "url", "token", "expires_at"}
    assert session["url"] == f"http://{session['id']}.sb.localhost:{cluster.proxy_port}/lab?token={session['token']}"
    async with httpx.AsyncClient(timeout=30) as client:
        lab = await client.get(session["url"])
        assert lab.status_code == 200 and "JupyterLab" in lab.text
        # No news pop-up asking to reach the internet from a throwaway server.
        page = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', lab.text, re.S)
        assert page is not None
        assert "@jupyterlab/apputils-extension:announcements" in json.loads(page.group(1))["disabledExtensions"]
        kernel = await start_kernel(client, cluster.base(session), session["token"])
    assert await execute(cluster.base(session), session["token"], kernel, "1+1") == "2"


async def test_session_comes_with_a_running_kernel(cluster: Cluster) -> None:
    session = cluster.new_session()
    kernel = session["kernel_id"]
    # The kernel ran a warm-up while pooled, but the visitor's first cell is still number 1 and
    # nothing is in its history.
    url = cluster.base(session).replace("http://", "ws://", 1) + f"api/kernels/{kernel}/channels?token={session['token']}"
    async with websockets.connect(url) as ws:
        reply = await execute_reply(ws, "1+1")
        assert reply["content"]["execution_count"] == 1
        assert await execute_on(ws, "len(In)") == "2"  # "" and the visitor's "1+1"
    assert await execute(cluster.base(session), session["token"], kernel, "1+1") == "2"
    # It is the Welcome notebook's kernel: JupyterLab opening the notebook attaches to it.
    async with httpx.AsyncClient(timeout=30) as client:
        sessions = (await client.get(f"{cluster.base(session)}api/sessions", params={"token": session["token"]})).json()
    assert [(s["path"], s["kernel"]["id"]) for s in sessions] == [("Welcome.ipynb", kernel)]


async def test_kernel_websocket_is_not_held_back_by_nagle(cluster: Cluster) -> None:
    """The sandbox sets TCP_NODELAY on kernel websockets: an execute's several small replies
    would otherwise wait up to 40 ms each for the client's delayed ACKs."""
    session = cluster.new_session()
    rec = cluster.record(session["id"])
    assert rec is not None
    server = cluster.server_processes()[session["id"]]
    assert await kernel_websocket_nodelay(server.pid, f"{rec['target']}{rec['path']}", session) is True


def test_an_ended_session_is_out_of_the_proxy_before_its_server_stops(cluster: Cluster) -> None:
    """Traefik applies a route's removal some time after the file changes (under load, long after).
    Held still (SIGSTOP) while a session is deleted, it must find the server still there when it
    resumes: the session's address answers from its server until the route is gone, then the
    gateway's 404 ("this server has ended"), never the proxy's 502 for a server that is gone; and
    DELETE answers only once the route is gone."""
    session = cluster.new_session()
    address = f"{cluster.base(session)}api/status"
    traefik = cluster.children()["traefik"]
    answers: list[int] = []
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        os.kill(traefik, signal.SIGSTOP)
        try:
            # Straight to the gateway: the proxy is held.
            deleting = pool.submit(httpx.delete, f"http://127.0.0.1:{cluster.gateway_port}/sessions/{session['id']}",
                                   params={"token": session["token"]}, timeout=30)
            time.sleep(1.5)  # long enough for a removal that does not wait for the proxy to stop the server
        finally:
            os.kill(traefik, signal.SIGCONT)
        deadline = time.monotonic() + 30
        while True:
            done = deleting.done()
            answers.append(httpx.get(address, timeout=10).status_code)
            if done or time.monotonic() > deadline:
                break
        assert deleting.result().status_code == 204
    assert 502 not in answers and answers[-1] == 404, answers
    assert httpx.get(address, timeout=10).status_code == 404


def test_session_info_and_delete(cluster: Cluster) -> None:
    session = cluster.new_session(path="Welcome.ipynb")
    assert session["url"].endswith(f"/lab/tree/Welcome.ipynb?token={session['token']}")
    auth = {"Authorization": f"token {session['token']}"}
    info = httpx.get(f"{cluster.url}/sessions/{session['id']}", headers=auth).json()
    assert info["state"] == "claimed" and info["expires_at"] and info["last_activity"]
    # The Welcome notebook is there, served through the proxy.
    nb = httpx.get(f"{cluster.base(session)}api/contents/Welcome.ipynb", headers=auth)
    assert nb.status_code == 200 and nb.json()["type"] == "notebook"
    pids = {p.pid for p in cluster.sandbox_processes()}

    gone = httpx.delete(f"{cluster.url}/sessions/{session['id']}", params={"token": session["token"]})
    assert gone.status_code == 204
    # Once DELETE has answered, the route is out of the proxy (the gateway says the server ended,
    # never the proxy's 502), and the server process and the record are gone.
    ended = httpx.get(f"{cluster.base(session)}api/status", headers=auth)
    assert ended.status_code == 404, ended.text
    assert session["id"] not in cluster.routes()
    assert len({p.pid for p in cluster.sandbox_processes()} & pids) < len(pids)
    assert cluster.record(session["id"]) is None
    assert httpx.get(f"{cluster.url}/sessions/{session['id']}", headers=auth).status_code == 404


def test_spawn_redirects_into_a_new_server(cluster: Cluster) -> None:
    cluster.wait_warm(2)
    resp = httpx.get(f"{cluster.url}/spawn/notebooks/Welcome.ipynb", follow_redirects=False)
    assert resp.status_code == 302
    assert "/lab/tree/Welcome.ipynb?token=" in resp.headers["location"]
    plain = httpx.get(f"{cluster.url}/spawn", follow_redirects=False)
    assert plain.status_code == 302 and "/lab?token=" in plain.headers["location"]
    # Following it lands in JupyterLab.
    assert "JupyterLab" in httpx.get(plain.headers["location"]).text


def test_stats_health_and_docs(cluster: Cluster) -> None:
    cluster.wait_warm(1)
    stats = httpx.get(f"{cluster.url}/api/stats").json()
    assert stats["available"] >= 1 and stats["capacity"] == 20 and stats["spawners"] == 1
    assert httpx.get(f"{cluster.url}/healthz").json()["ok"] is True
    assert httpx.get(f"{cluster.url}/docs").status_code == 200
    paths = httpx.get(f"{cluster.url}/openapi.json").json()["paths"]
    assert {"/sessions", "/sessions/{session_id}", "/spawn", "/api/stats"} <= set(paths)


def test_ended_link_offers_a_fresh_server(cluster: Cluster) -> None:
    again = f'href="{cluster.url}/spawn/lab/tree/x.ipynb"'
    # An old link on the gateway's origin, and the sandbox's own origin once it is gone.
    for url in (f"{cluster.url}/user/deadbeef0000/lab/tree/x.ipynb", f"{cluster.origin('deadbeef0000')}/lab/tree/x.ipynb"):
        resp = httpx.get(url, headers={"Accept": "text/html"})
        assert resp.status_code == 404
        assert "has ended" in resp.text and again in resp.text


def test_events_and_status_commands(cluster: Cluster) -> None:
    env = cluster.env | {"NBPOOL_NATS_URL": cluster.nats_url}
    # From 10 s back: the claim is among what it shows, however long it takes to subscribe.
    watcher = subprocess.Popen(
        [str(BIN / "nbpool"), "events", "--since", "10", "--timeout", "30"], env=env, stdout=subprocess.PIPE, text=True
    )
    session = cluster.new_session()
    assert watcher.stdout is not None
    seen = []
    for line in watcher.stdout:
        seen.append(line)
        if "sandbox.claimed" in line and session["id"] in line:
            break
    watcher.terminate()
    watcher.communicate(timeout=10)
    assert "sandbox.claimed" in seen[-1], seen
    recent = subprocess.run([str(BIN / "nbpool"), "events", "--since", "600", "--timeout", "2"], env=env,
                            capture_output=True, text=True, check=True).stdout
    assert "sandbox.warm" in recent and "sandbox.claimed" in recent
    # The warm event times the start's phases, each phase's end from its beginning, in order.
    warm = next(e for e in cluster.events() if e["type"] == "sandbox.warm" and e["sandbox_id"] == session["id"])
    ends = [warm["data"][key] for key in ("created_s", "answered_s", "session_s", "kernel_s", "warmed_s", "routed_s",
                                            "startup_s")]
    assert 0 < ends[0] and ends == sorted(ends), warm
    table = subprocess.run([str(BIN / "nbpool"), "status"], env=env, capture_output=True, text=True, check=True).stdout
    assert "POOL" in table and "SESSIONS" in table and session["id"] in table
    for service in ("gateway", "spawner", "router", "culler"):
        assert service in table
    assert psutil.pid_exists(cluster.children()["nats"])


def test_static_offload_serves_lab_files_from_the_gateway(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_STATIC_OFFLOAD": "true"}, warm=1)
    session = cluster.new_session()
    lab = httpx.get(session["url"])
    scripts = re.findall(r'src="([^"]*/static/lab/[^"]+)"', lab.text)
    assert scripts, "JupyterLab's page names no static script"
    path = scripts[0].split("?")[0]
    offloaded = httpx.get(f"{cluster.origin(session['id'])}{path}")
    rec = cluster.record(session["id"])
    assert rec is not None
    target = rec["target"]
    own = httpx.get(f"{target}{path}")  # the same file from the sandbox's own server
    assert offloaded.status_code == 200 and offloaded.content == own.content
    assert "uvicorn" in offloaded.headers.get("server", "")  # the gateway's, not the sandbox's Tornado


def test_what_a_sandbox_serves_is_compressed_on_its_way(cluster: Cluster) -> None:
    """Traefik compresses a sandbox's responses as the browser accepts (zstd first, else gzip):
    the same bytes as the sandbox's own server sends, a quarter of them over the network."""
    import gzip

    session = cluster.new_session()
    lab = httpx.get(session["url"])
    path = re.findall(r'src="([^"]*/static/lab/[^"]+)"', lab.text)[0]
    rec = cluster.record(session["id"])
    assert rec is not None
    own = httpx.get(f"{rec['target']}{path}", headers={"Accept-Encoding": "identity"})
    assert own.status_code == 200 and "content-encoding" not in own.headers and len(own.content) > 100_000

    def raw(encodings: str) -> tuple[str | None, bytes]:
        with httpx.stream("GET", f"{cluster.origin(session['id'])}{path}", headers={"Accept-Encoding": encodings}) as resp:
            assert resp.status_code == 200
            return resp.headers.get("content-encoding"), b"".join(resp.iter_raw())

    encoding, body = raw("gzip")
    assert encoding == "gzip" and gzip.decompress(body) == own.content
    encoding, body = raw("gzip, deflate, br, zstd")  # what Chromium asks for
    assert encoding == "zstd" and body[:4] == b"\x28\xb5\x2f\xfd" and len(body) < len(own.content) / 2
    assert raw("identity") == (None, own.content)
    # What is compressed already (here the favicon) passes as it is.
    with httpx.stream("GET", f"{cluster.origin(session['id'])}/static/favicons/favicon.ico",
                      headers={"Accept-Encoding": "zstd, gzip"}) as icon:
        assert icon.status_code == 200 and "content-encoding" not in icon.headers


def test_go_processes_run_with_a_smaller_heap(cluster: Cluster) -> None:
    """nats-server and Traefik get GOGC=50 (NBPOOL_GOGC): docs/benchmarks.md measures the memory it saves."""
    for name in ("nats", "traefik"):
        environ = psutil.Process(cluster.children()[name]).environ()
        assert environ.get("GOGC") == cluster.env.get("GOGC", "50"), name
