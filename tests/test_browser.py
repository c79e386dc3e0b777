"""The visitor's path in a real headless Chromium (Debian's), driven by Playwright.

A failing test leaves a screenshot in test-artifacts/. Without Chromium these fail under CI
(CI=true) and are skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import Cluster

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).parent.parent
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
LAB = ".jp-LabShell"
TIMEOUT = 60_000


@pytest.fixture
async def page(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A fresh browser page; a screenshot of it is kept when the test fails."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI") == "true":
            pytest.fail("the browser tests need Debian's chromium; make test installs it as root")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--no-first-run", "--disable-sync"],
        )
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        tab = await context.new_page()
        tab.set_default_timeout(TIMEOUT)
        yield tab
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            ARTIFACTS.mkdir(exist_ok=True)
            await tab.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
        await browser.close()


async def _run_welcome_cell(page: Any) -> None:
    """In an open Welcome.ipynb: run its code cell, see its output."""
    # On a loaded machine JupyterLab may open the notebook before it has the kernel list, and then
    # asks which kernel to use (seen under CI load; the pre-started kernel is attached anyway).
    # A visitor would press Select; so does the test.
    from playwright.async_api import TimeoutError as PlaywrightTimeout

    try:
        await page.locator(".jp-Dialog", has_text="Select Kernel").get_by_role("button", name="Select").click(timeout=3000)
    except PlaywrightTimeout:
        pass
    cell = page.locator(".jp-Notebook .jp-CodeCell").first
    await cell.locator(".cm-content").click()
    await page.keyboard.press("Shift+Enter")
    output = cell.locator(".jp-OutputArea-output")
    await output.filter(has_text="45").first.wait_for()
    assert "Python 3" in await cell.locator(".jp-OutputArea").inner_text()


async def test_launch_open_welcome_and_run_a_cell(make_cluster: Any, page: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1"}, warm=1)
    await page.goto(cluster.url + "/")
    await page.get_by_text("server ready now").wait_for()  # live availability
    await page.get_by_role("button", name="Launch").click()
    await page.locator(LAB).wait_for()
    # Its own origin: <id>.sb.localhost, never the gateway's.
    assert re.match(rf"http://[a-z0-9]+\.sb\.localhost:{cluster.proxy_port}/lab", page.url), page.url
    await page.locator(".jp-DirListing-item", has_text="Welcome.ipynb").dblclick()
    await _run_welcome_cell(page)


async def test_waiting_page_shows_progress_then_opens_lab(make_cluster: Any, page: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_MAX_SANDBOXES": "1"}, warm=1)
    taken = cluster.new_session()  # the only sandbox: the visitor must wait for it to free up
    response = await page.goto(cluster.url + "/spawn/lab/tree/Welcome.ipynb")
    assert response is not None and response.status == 503
    await page.get_by_role("heading", name="No vacancy").wait_for()
    await page.get_by_text("You are number 1 in line").wait_for()
    assert "min to go" in await page.locator("#status").inner_text()
    httpx.delete(f"{cluster.url}/sessions/{taken['id']}", params={"token": taken["token"]})
    await page.locator(LAB).wait_for()
    assert "/lab/tree/Welcome.ipynb" in page.url
    await _run_welcome_cell(page)


async def test_ended_link_offers_a_new_server(make_cluster: Any, page: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "2"}, warm=2)
    old = cluster.new_session()
    httpx.delete(f"{cluster.url}/sessions/{old['id']}", params={"token": old["token"]})
    await page.goto(f"{cluster.base(old)}lab/tree/Welcome.ipynb?token={old['token']}")
    await page.get_by_role("heading", name="This server has ended").wait_for()
    await page.get_by_role("link", name="Start a new server").click()
    await page.locator(LAB).wait_for()
    assert old["id"] not in page.url and "/lab/tree/Welcome.ipynb" in page.url


async def test_admin_needs_the_token_and_shows_live_sessions(make_cluster: Any, page: Any) -> None:
    token = "an-admin-token-for-tests"
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_ADMIN_TOKEN": token}, warm=1)
    session = cluster.new_session()
    response = await page.goto(cluster.url + "/admin")  # sent on to the admin's own origin
    assert page.url == cluster.admin_url + "/admin"
    assert response is not None and response.status == 401
    assert await page.locator("#sessions").count() == 0
    await page.get_by_label("Admin token").fill("wrong")
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_text("That is not the admin token").wait_for()
    await page.get_by_label("Admin token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    row = page.locator("#sessions tr", has_text=session["id"])
    await row.wait_for()
    await page.locator("#events", has_text="sandbox.claimed").wait_for()
    # Ending it from the page ends it for real.
    page.once("dialog", lambda dialog: dialog.accept())
    await row.get_by_role("button").click()
    await row.wait_for(state="detached")
    assert httpx.get(f"{cluster.url}/sessions/{session['id']}", params={"token": session["token"]}).status_code == 404


# A page that sandbox A serves (a notebook its server trusts, with a script in an output) tries
# to read sandbox B and to use the admin, in the browser of a visitor who has B open and is
# signed in to the admin. Each attempt records whether the script could read the answer.
_ATTACK = """
(async () => {
  const tries = %(tries)s, results = {};
  for (const [name, url, init] of tries) {
    try {
      const r = await fetch(url, {credentials: 'include', ...init});
      results[name] = {readable: r.type !== 'opaque', status: r.status, body: r.type !== 'opaque' ? (await r.text()).slice(0, 2000) : ''};
    } catch (e) {
      results[name] = {readable: false, status: 0, body: String(e)};
    }
  }
  window.nbpoolAttack = results;
})();
"""


def _attack_notebook(tries: list[Any]) -> dict[str, Any]:
    html = f"<p id=attack>attack</p><script>{_ATTACK % {'tries': json.dumps(tries)}}</script>"
    return {
        "cells": [{"cell_type": "code", "execution_count": 1, "id": "attack", "metadata": {}, "source": "attack()",
                   "outputs": [{"output_type": "display_data", "metadata": {}, "data": {"text/html": html}}]}],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


async def _plant_trusted_notebook(cluster: Cluster, session: dict[str, Any], notebook: dict[str, Any]) -> None:
    """Write the notebook into the sandbox and sign it there, as its visitor could."""
    from kernel import execute

    base, token = cluster.base(session), session["token"]
    async with httpx.AsyncClient(timeout=30, headers={"Authorization": f"token {token}"}) as client:
        put = await client.put(f"{base}api/contents/attack.ipynb", json={"type": "notebook", "content": notebook})
        assert put.status_code in (200, 201), put.text
    sign = ("import nbformat\nfrom nbformat.sign import NotebookNotary\n"
            "NotebookNotary().sign(nbformat.read('attack.ipynb', as_version=4))\nprint('signed')")
    assert (await execute(base, token, session["kernel_id"], sign)).strip() == "signed"


@pytest.mark.parametrize("routing", ["host", "path"])
async def test_a_sandbox_page_cannot_act_as_another_visitor_or_the_admin(make_cluster: Any, page: Any, routing: str) -> None:
    """With host routing every attempt fails. With NBPOOL_ROUTING=path (one origin, as before
    host routing) the same page reads the other sandbox and the admin state: what its warning says."""
    token = "an-admin-token-for-tests"
    cluster: Cluster = make_cluster(
        {"NBPOOL_POOL_SIZE": "3", "NBPOOL_SPAWN_CONCURRENCY": "3", "NBPOOL_ADMIN_TOKEN": token, "NBPOOL_ROUTING": routing},
        warm=3,
    )
    a, b, c = cluster.new_session(), cluster.new_session(), cluster.new_session()
    # The visitor has B open (B's cookies in this browser) and is signed in to the admin.
    await page.goto(b["url"])
    await page.locator(LAB).wait_for()
    await page.goto(cluster.admin_url + "/admin")
    await page.get_by_label("Admin token").fill(token)
    await page.get_by_role("button", name="Sign in").click()
    await page.locator("#sessions tr", has_text=c["id"]).wait_for()
    b_base, admin = cluster.base(b), cluster.admin_url
    end_c = f"{admin}/admin/api/sessions/{c['id']}/end"
    tries = [
        ["b_contents", f"{b_base}api/contents", {}],
        ["b_contents_by_path", f"/user/{b['id']}/api/contents", {}],
        ["b_lab", f"{b_base}lab", {}],
        ["admin_state", f"{admin}/admin/api/state", {}],
        ["admin_state_by_path", "/admin/api/state", {}],
        ["admin_end", end_c, {"method": "POST", "headers": {"Content-Type": "application/json"}, "body": "{}"}],
        ["admin_end_no_cors", end_c, {"method": "POST", "mode": "no-cors", "body": "{}"}],
        ["admin_drain_no_cors", f"{admin}/admin/api/drain", {"method": "POST", "mode": "no-cors", "body": '{"draining": true}'}],
    ]
    await _plant_trusted_notebook(cluster, a, _attack_notebook(tries))
    await page.goto(f"{cluster.base(a)}lab/tree/attack.ipynb?token={a['token']}")
    await page.wait_for_function("() => window.nbpoolAttack !== undefined", timeout=TIMEOUT)
    results = await page.evaluate("() => window.nbpoolAttack")
    read = {name for name, r in results.items() if r["readable"] and r["status"] == 200}
    b_file = "Welcome.ipynb"
    if routing == "path":
        # One origin: the page reads B's files and the admin's state.
        assert {"b_contents_by_path", "admin_state_by_path"} <= read, results
        assert b_file in results["b_contents_by_path"]["body"] and c["id"] in results["admin_state_by_path"]["body"]
        return
    assert read == set(), results
    assert not any(b["token"] in r["body"] or c["id"] in r["body"] for r in results.values()), results
    # Nothing was ended or changed.
    assert httpx.get(f"{cluster.url}/sessions/{c['id']}", params={"token": c["token"]}).json()["state"] == "claimed"
    state = httpx.get(f"{admin}/admin/api/state", headers={"Authorization": f"token {token}"}).json()
    assert state["draining"] is False and c["id"] in {s["id"] for s in state["sessions"]}


async def test_pages_work_under_their_content_security_policy(make_cluster: Any, page: Any) -> None:
    """The landing page, the admin and the API docs load everything they need from their own
    origin: the browser reports no violation of their policies."""
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_ADMIN_TOKEN": "an-admin-token-for-tests"}, warm=1)
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    await page.goto(cluster.url + "/")
    await page.get_by_text("server ready now").wait_for()
    await page.goto(cluster.url + "/docs")
    await page.locator(".opblock-summary-path", has_text="/sessions").first.wait_for()
    await page.goto(cluster.admin_url + "/admin")
    await page.get_by_label("Admin token").fill("an-admin-token-for-tests")
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_text("live session(s)").wait_for()
    assert violations == []


_HOSTILE = """<script>fetch('{hit}/script')</script>
<img src="{hit}/img" onerror="fetch('{hit}/onerror')">
<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==" onload="fetch('{hit}/onload')" alt=dot>
<svg onload="fetch('{hit}/svg')"><script>fetch('{hit}/svgscript')</script><image href="{hit}/svgimage"/></svg>
<iframe src="{hit}/frame"></iframe><iframe srcdoc="<script>parent.fetch('{hit}/srcdoc')</script>"></iframe>
<object data="{hit}/object"></object><embed src="{hit}/embed">
<link rel=stylesheet href="{hit}/css"><style>@import url({hit}/import); p {{ background: url({hit}/cssurl) }}</style>
<div style="background-image:url({hit}/inline)">styled</div>
<meta http-equiv=refresh content="0;url={hit}/refresh">
<video poster="{hit}/poster" src="{hit}/video" autoplay></video><audio src="{hit}/audio" autoplay></audio>
<form action="{hit}/form" id=f><input name=q value=1></form><a id=js href="javascript:fetch('{hit}/js')">js</a>
<base href="{hit}/base/"><a id=rel href="relative">relative</a>
<p id=harmless>harmless words stay</p>"""


async def test_a_hostile_snapshot_runs_nothing_and_loads_nothing(make_cluster: Any, page: Any) -> None:
    """A notebook whose markdown and outputs try every way to run script or reach out: its view in
    Chromium runs none of them and makes no request but its own."""
    import http.server
    import threading

    from cluster import free_ports

    hits: list[str] = []

    class Listener(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            hits.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    port = free_ports(1)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Listener)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1"}, warm=1)
        session = cluster.new_session()
        hostile = _HOSTILE.format(hit=f"http://127.0.0.1:{port}")
        notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
            {"cell_type": "markdown", "id": "m1", "metadata": {}, "source": "# Hostile\n\n" + hostile},
            {"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": 1, "source": "show()", "outputs": [
                {"output_type": "display_data", "metadata": {}, "data": {
                    "text/html": hostile, "application/javascript": f"fetch('http://127.0.0.1:{port}/jsoutput')",
                    "image/svg+xml": f"<svg xmlns='http://www.w3.org/2000/svg' onload=\"fetch('http://127.0.0.1:{port}/svgout')\"/>",
                    "text/plain": "hostile"}}]},
        ]}
        auth = {"Authorization": f"token {session['token']}"}
        put = httpx.put(f"{cluster.base(session)}api/contents/hostile.ipynb", headers=auth,
                        json={"type": "notebook", "format": "json", "content": notebook})
        assert put.status_code == 201, put.text
        made = httpx.post(f"{cluster.url}/sessions/{session['id']}/snapshots", headers=auth, json={"path": "hostile.ipynb"})
        assert made.status_code == 201, made.text
        snap = made.json()

        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        dialogs: list[str] = []
        page.on("dialog", lambda d: dialogs.append(d.message))
        await page.goto(snap["view_url"])
        await page.get_by_text("harmless words stay").first.wait_for()
        for link in await page.locator("#js, #rel").all():  # what is left of them: clicking goes nowhere
            await link.click(timeout=5000)
        await asyncio.sleep(3)  # time for anything delayed to try
        assert hits == [], f"the view reached out: {hits}"
        assert [u for u in requests if not u.startswith(snap["view_url"])] == [], requests
        assert dialogs == []
        assert page.url == snap["view_url"], "the view navigated away"
        # Remix and download are plain links, to the gateway's origin.
        remix = page.get_by_role("link", name=re.compile("Remix"))
        assert await remix.get_attribute("href") == snap["remix_url"]
    finally:
        server.shutdown()
        server.server_close()


async def test_share_a_snapshot_from_jupyterlab_then_remix_it(docker_cluster: Any, page: Any) -> None:
    """The visitor's way: in JupyterLab, run the Welcome cell, Share; the link shows the notebook
    with its output on the snapshot origin; Remix opens it, output and all, in a fresh server."""
    cluster: Cluster = docker_cluster({"NBPOOL_POOL_SIZE": "2"}, warm=2)
    await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    await page.goto(cluster.url + "/spawn/lab/tree/Welcome.ipynb")
    await page.locator(LAB).wait_for()
    first_origin = page.url.split("/lab", 1)[0]
    await _run_welcome_cell(page)

    await page.locator('jp-button[data-command="nbpool:share-snapshot"]').locator("visible=true").click()
    dialog = page.locator(".jp-Dialog")
    await dialog.locator(".jp-Dialog-header", has_text="Snapshot shared").wait_for()
    link = dialog.locator("a.nbpool-ShareDialog-viewLink")
    view_url = await link.get_attribute("href")
    assert view_url and re.fullmatch(rf"http://snapshots\.localhost:{cluster.proxy_port}/s/[0-9a-f]{{16}}", view_url)
    await dialog.locator("button.nbpool-ShareDialog-copy").click()
    assert await page.evaluate("navigator.clipboard.readText()") == view_url

    await page.goto(view_url)
    await page.get_by_text("Welcome to nbpool").first.wait_for()
    assert "Python 3" in await page.content() and "45" in await page.locator("body").inner_text()
    await page.get_by_role("link", name=re.compile("Remix")).click()
    await page.locator(LAB).wait_for()
    remixed = page.url.split("/lab", 1)[0]
    assert remixed != first_origin and "/lab/tree/Welcome.ipynb" in page.url
    # The file itself first (the browser holds the new server's cookie), then what Lab shows of it.
    stored = await page.request.get(f"{remixed}/api/contents/Welcome.ipynb?content=1")
    assert stored.ok, await stored.text()
    outputs = [o for c in (await stored.json())["content"]["cells"] for o in c.get("outputs", [])]
    assert "45" in json.dumps(outputs), outputs
    cell = page.locator(".jp-Notebook .jp-CodeCell").first
    await cell.locator(".jp-OutputArea-output").filter(has_text="45").first.wait_for()


async def test_a_notebook_ui_profile_opens_notebook_7_runs_on_its_kernel_and_shares(
        docker_cluster: Any, page: Any) -> None:
    """A profile with "ui": "notebook": the API's url opens Notebook 7 on the notebook, whose cell runs
    on the kernel started while the sandbox was pooled; Share works there, and remix and /spawn open
    Notebook 7 too. JupyterLab is still in the same server. On failure, the sandboxes' logs and the
    page's failed requests go to test-artifacts/ (a stylesheet once failed to load here)."""
    profiles = {"default": {"ui": "notebook", "description": "Jupyter Notebook 7"}}
    cluster: Cluster = docker_cluster({"NBPOOL_POOL_SIZE": "2", "NBPOOL_PROFILES": json.dumps(profiles)}, warm=2)
    failed: list[str] = []
    page.on("requestfailed", lambda req: failed.append(f"{req.method} {req.url}: {req.failure}"))
    page.on("response", lambda resp: failed.append(f"{resp.status} {resp.url}") if resp.status >= 400 else None)
    try:
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        session = cluster.new_session(path="Welcome.ipynb")
        assert session["url"] == f"{cluster.base(session)}notebooks/Welcome.ipynb?token={session['token']}"
        text_file = cluster.new_session(path="notes/todo.txt")
        assert text_file["url"].startswith(f"{cluster.base(text_file)}edit/notes/todo.txt?token=")
        httpx.delete(f"{cluster.url}/sessions/{text_file['id']}", params={"token": text_file["token"]})

        await page.goto(session["url"])
        await _run_welcome_cell(page)
        assert await page.locator(LAB).count() == 0  # Notebook's own shell, not JupyterLab's
        running = await page.request.get(f"{cluster.base(session)}api/sessions")
        assert [s["kernel"]["id"] for s in await running.json()] == [session["kernel_id"]]

        await page.locator('jp-button[data-command="nbpool:share-snapshot"]').locator("visible=true").click()
        dialog = page.locator(".jp-Dialog")
        await dialog.locator(".jp-Dialog-header", has_text="Snapshot shared").wait_for()
        view_url = await dialog.locator("a.nbpool-ShareDialog-viewLink").get_attribute("href")
        assert view_url and re.fullmatch(rf"http://snapshots\.localhost:{cluster.proxy_port}/s/[0-9a-f]{{16}}", view_url)

        await page.goto(view_url)
        await page.get_by_role("link", name=re.compile("Remix")).click()
        await page.locator(".jp-Notebook .jp-CodeCell .jp-OutputArea-output").filter(has_text="45").first.wait_for()
        assert re.fullmatch(rf"http://[a-z0-9]+\.sb\.localhost:{cluster.proxy_port}/notebooks/Welcome\.ipynb", page.url)
        assert session["id"] not in page.url

        await page.goto(cluster.url + "/spawn")
        await page.locator(".jp-DirListing-item", has_text="Welcome.ipynb").wait_for()
        assert re.fullmatch(rf"http://[a-z0-9]+\.sb\.localhost:{cluster.proxy_port}/tree", page.url), page.url
        lab = page.url.removesuffix("tree") + "lab"  # the same server still serves JupyterLab
        await page.goto(lab)
        await page.locator(f"{LAB} .jp-Launcher").wait_for()
    except BaseException:
        ARTIFACTS.mkdir(exist_ok=True)
        logs = "\n\n".join(f"== {c.name}\n{c.logs(tail=200).decode(errors='replace')}" for c in cluster.containers())
        (ARTIFACTS / "notebook-ui.log").write_text("failed requests:\n" + "\n".join(failed) + "\n\n" + logs)
        raise


def _thebe_lib() -> Path:
    """thebe's bundle from npm (deploy/thebe.sh, which make test runs first)."""
    fetched = subprocess.run([str(ROOT / "deploy" / "thebe.sh"), "path"], capture_output=True, text=True, timeout=600)
    if fetched.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"thebe could not be fetched from npm: {fetched.stderr[-2000:]}")
        pytest.skip(f"thebe could not be fetched from npm: {fetched.stderr[-500:]}")
    return Path(fetched.stdout.strip().splitlines()[-1])


def _serve_embedding_page(folder: Path, nbpool_url: str) -> Any:
    """docs/embed-example.html, pointed at this nbpool, with thebe beside it, served from a
    loopback origin of its own (another port: another origin than nbpool's)."""
    import functools
    import http.server
    import threading

    page = (ROOT / "docs" / "embed-example.html").read_text()
    assert 'binderUrl: "http://127.0.0.1:8000"' in page
    (folder / "index.html").write_text(page.replace("http://127.0.0.1:8000", nbpool_url))
    (folder / "thebe").mkdir()
    (folder / "thebe" / "lib").symlink_to(_thebe_lib())
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def _run_thebe_cell(page: Any, url: str) -> None:
    """Open the page, Activate, wait for the kernel, run the cell, see 42."""
    await page.goto(url)
    await page.locator(".thebe-activate-button").click()
    await page.wait_for_function("() => window.thebe && window.thebe.session && window.thebe.session.kernel", timeout=TIMEOUT)
    await page.locator(".thebe-run-button").first.click()
    await page.locator(".thebe-cell").first.get_by_text("42", exact=True).wait_for()


async def test_a_thebe_page_on_another_origin_runs_code_and_keeps_its_server(docker_cluster: Any, page: Any,
                                                                           tmp_path: Path) -> None:
    """The docs' page, on its own loopback origin, launches through /build with the real thebe
    from npm, runs print(6*7) on the pre-started kernel; a second view of the page reuses the
    server thebe saved (no new claim) and its kernel."""
    cluster: Cluster = docker_cluster({"NBPOOL_POOL_SIZE": "2"}, warm=2)
    server = _serve_embedding_page(tmp_path, cluster.url)
    page_url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    outside: list[str] = []

    async def loopback_only(route: Any) -> None:
        host = urllib.parse.urlsplit(route.request.url).hostname or ""
        if host in ("127.0.0.1", "localhost") or host.endswith(".localhost"):
            await route.continue_()
        else:  # thebe's defaults name CDNs; nothing here may leave the machine
            outside.append(route.request.url)
            await route.abort()

    await page.context.route("**/*", loopback_only)
    try:
        claims_before = sum(e["type"] == "sandbox.claimed" for e in cluster.events())
        await _run_thebe_cell(page, page_url)
        first = await page.evaluate("() => window.thebe.server.sessionManager.serverSettings.baseUrl")
        kernel = await page.evaluate("() => window.thebe.session.kernel.id")
        assert re.fullmatch(rf"http://[0-9a-z]+\.sb\.localhost:{cluster.proxy_port}/", first), first
        sid = first.split("//")[1].split(".")[0]
        # The pre-started kernel of the sandbox's Welcome notebook, not a new one.
        token = await page.evaluate("() => window.thebe.server.sessionManager.serverSettings.token")
        sessions = httpx.get(f"{first}api/sessions", headers={"Authorization": f"token {token}"}).json()
        assert {s["path"]: s["kernel"]["id"] for s in sessions}.get("Welcome.ipynb") == kernel, sessions

        await page.reload()
        await _run_thebe_cell(page, page_url)
        assert await page.evaluate("() => window.thebe.server.sessionManager.serverSettings.baseUrl") == first
        assert await page.evaluate("() => window.thebe.session.kernel.id") == kernel
        claims = [e for e in cluster.events() if e["type"] == "sandbox.claimed"]
        assert len(claims) == claims_before + 1, claims[claims_before:]
        assert cluster.record(sid)["state"] == "claimed"  # type: ignore[index]
        assert not [u for u in outside if "127.0.0.1" in u or "localhost" in u]
    finally:
        server.shutdown()
        server.server_close()

