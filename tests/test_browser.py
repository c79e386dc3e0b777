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
    assert re.search(r"/user/[a-z0-9]+/lab", page.url)
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
    response = await page.goto(cluster.url + "/admin")
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
