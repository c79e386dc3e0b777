"""Snapshots on a live nbpool: publish a session's notebook, view it on its own origin, remix it,
delete it; every bad request refused with nothing stored; expiry; restarts of every service and NATS.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import nats
import pytest
from cluster import Cluster
from conftest import stop_checked
from kernel import execute, start_kernel
from waiting import poll_until

from nbpool.names import Names


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the module's tests that need no settings of their own (the publishing rate
    limit has its own test)."""
    c = Cluster(tmp_path_factory.mktemp("nbpool"), {"NBPOOL_POOL_SIZE": "3", "NBPOOL_SNAPSHOT_RATE": "600"})
    c.start(warm=3)
    yield c
    stop_checked(c)


def _auth(session: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"token {session['token']}"}


def _contents(cluster: Cluster, session: dict[str, Any], path: str) -> str:
    return f"{cluster.base(session)}api/contents/{path}"


def _run_welcome(cluster: Cluster, session: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Run the Welcome notebook's code cell in the session's kernel and save the notebook with its
    output, as JupyterLab does; the notebook saved and the cell's output."""
    model = httpx.get(_contents(cluster, session, "Welcome.ipynb"), headers=_auth(session), timeout=30).json()
    notebook = model["content"]
    cell = next(c for c in notebook["cells"] if c["cell_type"] == "code")

    *statements, last = cell["source"].splitlines()

    async def run() -> tuple[str, str]:
        async with httpx.AsyncClient(timeout=30) as client:
            kernel = session.get("kernel_id") or await start_kernel(client, cluster.base(session), session["token"])
        base, token = cluster.base(session), session["token"]
        return await execute(base, token, kernel, "\n".join(statements)), await execute(base, token, kernel, last)

    printed, result = asyncio.run(run())
    cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": printed},
                       {"output_type": "execute_result", "execution_count": 1, "metadata": {},
                        "data": {"text/plain": result}}]
    cell["execution_count"] = 1
    saved = httpx.put(_contents(cluster, session, "Welcome.ipynb"), headers=_auth(session), timeout=30,
                      json={"type": "notebook", "format": "json", "content": notebook})
    assert saved.status_code == 200, saved.text
    return notebook, printed


def _put_file(cluster: Cluster, session: dict[str, Any], path: str, text: str) -> None:
    put = httpx.put(_contents(cluster, session, path), headers=_auth(session), timeout=60,
                    json={"type": "file", "format": "text", "content": text})
    assert put.status_code in (200, 201), put.text


def _snapshot(cluster: Cluster, session: dict[str, Any], path: str, **kw: Any) -> httpx.Response:
    return httpx.post(f"{cluster.url}/sessions/{session['id']}/snapshots", json={"path": path},
                      headers=kw.pop("headers", _auth(session)), timeout=60, **kw)


def _index_keys(cluster: Cluster) -> set[str]:
    """The keys in the snapshot index, read straight from the bus as the operator."""

    async def keys() -> set[str]:
        creds = cluster.bus_credentials()
        nc = await nats.connect(cluster.nats_url, user=creds.user, password=creds.password)
        try:
            kv = await nc.jetstream().key_value(Names(cluster.env.get("NBPOOL_INSTANCE", "nbpool")).snapshot_index)
            try:
                return set(await kv.keys())
            except nats.js.errors.NoKeysError:
                return set()
        finally:
            await nc.close()

    return asyncio.run(keys())


def _stored_bytes(cluster: Cluster) -> int:
    async def size() -> int:
        creds = cluster.bus_credentials()
        nc = await nats.connect(cluster.nats_url, user=creds.user, password=creds.password)
        try:
            info = await nc.jetstream().stream_info(f"OBJ_{Names(cluster.env.get('NBPOOL_INSTANCE', 'nbpool')).snapshots}")
            return int(info.state.bytes)
        finally:
            await nc.close()

    return asyncio.run(size())


def _cells(notebook: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Each cell's type, source and outputs, multi-line strings joined (a file may store them as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return "".join(value)
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return [(c["cell_type"], plain(c["source"]), plain(c.get("outputs"))) for c in notebook["cells"]]


def test_publish_view_remix_and_delete(cluster: Cluster) -> None:
    session = cluster.new_session()
    notebook, printed = _run_welcome(cluster, session)
    assert printed.startswith("Python 3")

    made = _snapshot(cluster, session, "Welcome.ipynb")
    assert made.status_code == 201, made.text
    snap = made.json()
    assert re.fullmatch(r"[0-9a-f]{16}", snap["id"])
    port = cluster.proxy_port
    assert snap["view_url"] == f"http://snapshots.localhost:{port}/s/{snap['id']}"
    assert snap["remix_url"] == f"{cluster.url}/remix/{snap['id']}"
    assert snap["name"] == "Welcome.ipynb" and snap["delete_token"]

    # The view: on its own origin, through the proxy; the markdown and the cell's output; no script.
    view = httpx.get(snap["view_url"], timeout=30)
    assert view.status_code == 200, view.text
    assert "Welcome to nbpool" in view.text and printed.strip() in view.text
    assert "<script" not in view.text.lower()
    policy = view.headers["content-security-policy"]
    assert "sandbox" in policy and "default-src 'none'" in policy and "script-src" not in policy
    assert view.headers["x-robots-tag"] == "noindex" and "set-cookie" not in view.headers
    assert snap["remix_url"] in view.text and snap["notebook_url"] in view.text
    again = httpx.get(snap["view_url"], timeout=30)  # cached: the same page
    assert again.text == view.text
    # Asked of the gateway's origin, the view moves to its own; the snapshot origin serves nothing else.
    moved = httpx.get(f"{cluster.url}/s/{snap['id']}")
    assert moved.status_code == 307 and moved.headers["location"] == snap["view_url"]
    assert httpx.get(f"http://snapshots.localhost:{port}/api/stats").status_code == 404
    assert httpx.get(f"http://snapshots.localhost:{port}/admin").status_code == 404

    info = httpx.get(f"{cluster.url}/snapshots/{snap['id']}").json()
    assert info["size"] == snap["size"] and info["expires_at"] == snap["expires_at"] and "delete_token" not in info
    download = httpx.get(snap["notebook_url"])
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    assert _cells(download.json()) == _cells(notebook)

    # Remix over the API: a fresh session whose Welcome.ipynb is the snapshot's, opened.
    remixed = cluster.new_session(snapshot=snap["id"])
    assert remixed["id"] != session["id"] and remixed["url"].split("?")[0].endswith("/lab/tree/Welcome.ipynb")
    copied = httpx.get(_contents(cluster, remixed, "Welcome.ipynb"), headers=_auth(remixed)).json()["content"]
    assert _cells(copied) == _cells(notebook)
    # And from a link, as a browser follows it.
    link = httpx.get(snap["remix_url"], timeout=30)
    assert link.status_code == 302, link.text
    assert re.match(r"http://[a-z0-9]+\.sb\.localhost:\d+/lab/tree/Welcome\.ipynb\?token=", link.headers["location"])
    remix_events = [e for e in cluster.events() if e["type"] == "snapshot.remixed"]
    assert len(remix_events) == 2

    # Deleting needs the delete token; then the snapshot is gone everywhere.
    url = f"{cluster.url}/snapshots/{snap['id']}"
    assert httpx.delete(url).status_code == 401
    assert httpx.delete(url, headers=_auth(session)).status_code == 403
    assert httpx.delete(url, params={"token": snap["delete_token"]}).status_code == 204
    assert httpx.get(url).status_code == 404
    gone = httpx.get(snap["view_url"])
    assert gone.status_code == 404 and "<script" not in gone.text.lower() and "Traceback" not in gone.text
    assert httpx.post(f"{cluster.url}/sessions", json={"snapshot": snap["id"]}).status_code == 404
    assert httpx.get(snap["remix_url"]).status_code == 404


def test_the_same_notebook_is_stored_once(cluster: Cluster) -> None:
    session = cluster.new_session()
    before = _stored_bytes(cluster)
    first = _snapshot(cluster, session, "Welcome.ipynb").json()
    grown = _stored_bytes(cluster)
    assert grown > before
    second = _snapshot(cluster, session, "Welcome.ipynb").json()
    assert second["id"] != first["id"]
    # Written again (a new age), still once: the old chunks are purged.
    assert _stored_bytes(cluster) == grown
    assert httpx.delete(f"{cluster.url}/snapshots/{first['id']}", params={"token": first["delete_token"]}).status_code == 204
    assert httpx.get(second["view_url"]).status_code == 200, "the other snapshot of the same notebook stays"
    assert httpx.delete(f"{cluster.url}/snapshots/{second['id']}", params={"token": second["delete_token"]}).status_code == 204
    assert _stored_bytes(cluster) < grown, "the notebook goes with its last snapshot"


def test_a_sandbox_page_may_publish_and_no_other(cluster: Cluster) -> None:
    """The Share command in JupyterLab posts from the sandbox's origin: CORS allows exactly that."""
    session = cluster.new_session()
    url = f"{cluster.url}/sessions/{session['id']}/snapshots"
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"}
    own = cluster.origin(session["id"])
    ok = httpx.options(url, headers={"Origin": own, **preflight})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == own
    assert "access-control-allow-credentials" not in ok.headers
    for other in ("http://evil.example", f"http://admin.localhost:{cluster.proxy_port}", cluster.url):
        refused = httpx.options(url, headers={"Origin": other, **preflight})
        assert "access-control-allow-origin" not in refused.headers, other
    posted = _snapshot(cluster, session, "Welcome.ipynb", headers={**_auth(session), "Origin": own})
    assert posted.status_code == 201 and posted.headers["access-control-allow-origin"] == own
    # No other path answers CORS.
    stats = httpx.get(f"{cluster.url}/api/stats", headers={"Origin": own})
    assert "access-control-allow-origin" not in stats.headers


def test_bad_snapshot_requests_store_nothing(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_SNAPSHOT_MAX_BYTES": "65536", "NBPOOL_SNAPSHOT_RATE": "600"}, warm=1)
    session = cluster.new_session()
    _put_file(cluster, session, "junk.ipynb", "this is not JSON")
    _put_file(cluster, session, "wrong.ipynb", json.dumps({"cells": "nope", "nbformat": 4}))
    big = copy.deepcopy(httpx.get(_contents(cluster, session, "Welcome.ipynb"), headers=_auth(session)).json()["content"])
    big["cells"].append({"cell_type": "markdown", "metadata": {}, "source": "x" * 70000})
    _put_file(cluster, session, "big.ipynb", json.dumps(big))
    folder = httpx.put(_contents(cluster, session, "folder.ipynb"), headers=_auth(session), json={"type": "directory"})
    assert folder.status_code == 201, folder.text

    cases = {
        "missing.ipynb": (404, "no missing.ipynb"),
        "../etc/passwd.ipynb": (422, "'..'"),
        "a\x01b.ipynb": (422, "control characters"),
        "/home/jovyan/Welcome.ipynb": (422, "relative"),
        "Welcome.py": (422, ".ipynb"),
        "junk.ipynb": (422, "not JSON"),
        "wrong.ipynb": (422, "not a valid notebook"),
        "big.ipynb": (413, "65536"),
        "folder.ipynb": (422, "a folder"),
    }
    for path, (status, words) in cases.items():
        answer = _snapshot(cluster, session, path)
        assert answer.status_code == status, f"{path!r}: {answer.status_code} {answer.text}"
        assert words in answer.json()["detail"], f"{path!r}: {answer.text}"
    url = f"{cluster.url}/sessions/{session['id']}/snapshots"
    assert httpx.post(url, json={"path": "Welcome.ipynb"}).status_code == 401
    assert httpx.post(url, json={"path": "Welcome.ipynb"}, headers={"Authorization": "token wrong"}).status_code == 403
    assert httpx.post(url, json={"path": "Welcome.ipynb", "extra": 1}, headers=_auth(session)).status_code == 422
    assert httpx.post(f"{cluster.url}/sessions/nosuchsession/snapshots", json={"path": "Welcome.ipynb"},
                      headers=_auth(session)).status_code == 404
    assert _index_keys(cluster) == set() and _stored_bytes(cluster) == 0, "a refused request stored something"

    # Unknown and malformed snapshot ids.
    for ask in (lambda: httpx.get(f"{cluster.url}/snapshots/0123456789abcdef"),
                lambda: httpx.post(f"{cluster.url}/sessions", json={"snapshot": "0123456789abcdef"}),
                lambda: httpx.get(f"{cluster.url}/remix/0123456789abcdef")):
        assert ask().status_code == 404
    assert httpx.get(f"{cluster.url}/snapshots/NOT-AN-ID").status_code == 422
    assert httpx.post(f"{cluster.url}/sessions", json={"snapshot": "../x"}).status_code == 422
    view = httpx.get(f"http://snapshots.localhost:{cluster.proxy_port}/s/<script>")
    assert view.status_code == 404 and "<script>" not in view.text

    # An ended session's notebooks cannot be published.
    httpx.delete(f"{cluster.url}/sessions/{session['id']}", headers=_auth(session))
    assert _snapshot(cluster, session, "Welcome.ipynb").status_code in (403, 404)


def test_publishing_is_rate_limited_per_client(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_SNAPSHOT_RATE": "4"}, warm=1)
    session = cluster.new_session()
    answers = [_snapshot(cluster, session, "Welcome.ipynb") for _ in range(4)]
    assert answers[-1].status_code == 429, [a.status_code for a in answers]
    assert int(answers[-1].headers["retry-after"]) >= 1 and "too many snapshots" in answers[-1].json()["detail"]
    made = [a for a in answers if a.status_code == 201]
    assert len(made) == 2  # a burst of half the rate per minute
    assert len({k for k in _index_keys(cluster) if k.startswith("s.")}) == 2


def test_snapshots_expire(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_SNAPSHOT_TTL": "6"}, warm=1)
    session = cluster.new_session()
    snap = _snapshot(cluster, session, "Welcome.ipynb").json()
    assert httpx.get(snap["view_url"]).status_code == 200
    time.sleep(max(0.0, snap_left(snap)) + 1)
    expired = httpx.get(snap["view_url"])
    assert expired.status_code == 410 and "expired" in expired.text
    assert httpx.get(f"{cluster.url}/snapshots/{snap['id']}").status_code == 410
    assert httpx.get(snap["remix_url"]).status_code == 410
    assert httpx.post(f"{cluster.url}/sessions", json={"snapshot": snap["id"]}).status_code == 410
    # The bus lets the notebook itself go too (the object store's max age).
    poll_until(lambda: _stored_bytes(cluster) == 0, 30, "the expired notebook removed from the bus")


def snap_left(snap: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(snap["expires_at"].replace("Z", "+00:00")).timestamp() - time.time()


@pytest.mark.parametrize("victims", [("gateway", "nats", "spawner", "router", "culler", "traefik")])
def test_snapshots_survive_restarts(make_cluster: Any, victims: tuple[str, ...]) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "2"}, warm=2)
    session = cluster.new_session()
    snap = _snapshot(cluster, session, "Welcome.ipynb").json()
    page = httpx.get(snap["view_url"]).text
    for victim in victims:
        cluster.kill9(victim)
        view = poll_until(lambda: (r := httpx.get(snap["view_url"], timeout=10)).status_code == 200 and r, 60,
                          lambda v=victim: f"the view after killing {v}\n{cluster.logs()}", errors=(httpx.HTTPError,))
        assert view.text == page
    cluster.wait_warm(1, timeout=90)
    remixed = cluster.new_session(snapshot=snap["id"])
    assert httpx.get(_contents(cluster, remixed, "Welcome.ipynb"), headers=_auth(remixed)).status_code == 200
    # Published after the restarts too.
    assert _snapshot(cluster, remixed, "Welcome.ipynb").status_code == 201
