"""The visitor's path in a real headless Chromium (Debian's), driven by Playwright.

A failing test leaves a screenshot in test-artifacts/. Without Chromium these fail under CI
(CI=true) and are skipped elsewhere.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import Cluster

CHROMIUM = "/usr/bin/chromium"
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
    import json

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
