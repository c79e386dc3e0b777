"""Embedding: a page with a thebe cell, from its load to the cell's first output, in Chromium.

The page is docs/embed-example.html, pointed at the bench's nbpool and served from a loopback
origin of its own with thebe's bundle from npm (``deploy/thebe.sh``), as an author would serve
it. Each *first view* is a new browser context (empty cache, no saved server): from navigation
to the page until ``42`` (``print(6*7)``) is on screen, the visitor's two clicks made as soon as
each button can be pressed (*Activate* once thebe has loaded, *run* once the kernel is attached).
Parts: the page and thebe loaded (the Activate button there), the launch (``/build`` until
``ready``, then the session: the kernel attached), the cell run to its output. Each *second view*
reloads the same page in the same context: thebe finds its saved server in ``localStorage``,
checks it, and gets the same kernel (no new claim: counted from nbpool's events).

Floor, in the same run: ``POST /sessions`` to the first output of ``1+1`` on the session's
pre-started kernel over a websocket through the proxy (as ``first_output``). Visitors one at a
time, thebe and floor in turn, each with the pool full (the refill after the previous visitor
done), sessions ended after each.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import statistics
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from common import ROOT, BenchCluster, Figure, end_sessions, progress
from snapshots import visit

__all__ = ["EmbedResults", "cluster", "measure", "pool_full"]

_TIMEOUT_MS = 120_000
#: The longest wait for the pool to be full again before a visitor.
REFILL_S = 300.0
PARTS = ("page and thebe loaded", "launch and kernel", "run to output")


@dataclass
class EmbedResults:
    """Everything the group measured (milliseconds)."""

    pool: int
    runs: int
    first_view: Figure = field(default_factory=lambda: Figure("thebe page, first view: load to first output"))
    parts: dict[str, Figure] = field(default_factory=lambda: {p: Figure(p) for p in PARTS})
    second_view: Figure = field(default_factory=lambda: Figure("thebe page, second view: reload to output"))
    floor: Figure = field(default_factory=lambda: Figure("POST /sessions to first output"))
    #: Claims nbpool recorded during the second views (0: every one reused its saved server).
    second_view_claims: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    thebe: str = ""


def cluster(image: str | None, pool: int, concurrency: int, label: str = "embed", **settings: str) -> BenchCluster:
    """A pool of ``pool`` real sandboxes (containers of ``image``, else processes); ``settings``
    (``NBPOOL_*``) added."""
    runtime = {"NBPOOL_RUNTIME": "docker", "NBPOOL_DOCKER_IMAGE": image} if image else {"NBPOOL_RUNTIME": "process"}
    return BenchCluster(label, {**runtime, "NBPOOL_POOL_SIZE": str(pool), "NBPOOL_MAX_SANDBOXES": str(pool + 2),
                                  "NBPOOL_SPAWN_CONCURRENCY": str(concurrency), **settings})


def _serve(folder: Path, nbpool_url: str, lib: Path) -> http.server.ThreadingHTTPServer:
    page = (ROOT / "docs" / "embed-example.html").read_text()
    (folder / "index.html").write_text(page.replace("http://127.0.0.1:8000", nbpool_url))
    (folder / "thebe").mkdir()
    (folder / "thebe" / "lib").symlink_to(lib)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def _loopback_only(route: Any) -> None:
    host = route.request.url.split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    if host in ("127.0.0.1", "localhost") or host.endswith(".localhost"):
        await route.continue_()
    else:  # thebe's defaults name CDNs: nothing leaves the machine
        await route.abort()


async def _run_cell(page: Any) -> tuple[float, float]:
    """Click Activate, wait for the kernel, run the cell, wait for 42: the times the kernel was
    attached and the output shown (perf_counter)."""
    await page.locator(".thebe-activate-button").click()
    await page.wait_for_function("() => window.thebe && window.thebe.session && window.thebe.session.kernel",
                                 timeout=_TIMEOUT_MS, polling=10)
    attached = time.perf_counter()
    await page.locator(".thebe-run-button").first.click()
    await page.locator(".thebe-cell").first.get_by_text("42", exact=True).wait_for(timeout=_TIMEOUT_MS)
    return attached, time.perf_counter()


async def _thebe_view(browser: Any, url: str, cluster: BenchCluster, results: EmbedResults) -> dict[str, Any] | None:
    """A first view then a second; the session (id and token) or None when it failed."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    await context.route("**/*", _loopback_only)
    page = await context.new_page()
    try:
        began = time.perf_counter()
        await page.goto(url)
        await page.locator(".thebe-activate-button").wait_for(timeout=_TIMEOUT_MS)
        loaded = time.perf_counter()
        attached, shown = await _run_cell(page)
        results.first_view.runs[-1].append((shown - began) * 1000)
        for name, (a, b) in zip(PARTS, ((began, loaded), (loaded, attached), (attached, shown)), strict=True):
            results.parts[name].runs[-1].append((b - a) * 1000)
        settings = await page.evaluate("() => window.thebe.server.sessionManager.serverSettings")
        session = {"id": settings["baseUrl"].split("//")[1].split(".")[0], "token": settings["token"]}
        claims = _claims(cluster)
        again = time.perf_counter()
        await page.reload()
        await _run_cell(page)
        results.second_view.runs[-1].append((time.perf_counter() - again) * 1000)
        results.second_view_claims += _claims(cluster) - claims
        return session
    except Exception as err:  # noqa: BLE001 - a visitor's failure is a figure, not a crash of the bench
        results.failures += 1
        results.errors.append(f"thebe view: {err.__class__.__name__}: {str(err).splitlines()[0][:200]}")
        return None
    finally:
        await context.close()


def _claims(cluster: BenchCluster) -> int:
    """Claims so far, from nbpool's event stream (``nbpool events``)."""
    return sum(e["type"] == "sandbox.claimed" for e in cluster.events())


async def pool_full(cluster: BenchCluster, pool: int) -> None:
    deadline = time.monotonic() + REFILL_S
    while time.monotonic() < deadline:
        try:
            if (await asyncio.to_thread(cluster.stats)).get("available", 0) >= pool:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the pool of {pool} did not refill within {REFILL_S:g} s")


async def measure(cluster: BenchCluster, pool: int, runs: int, per_run: int, results: EmbedResults) -> None:
    """``runs`` rounds of ``per_run`` thebe visitors and as many floor visitors, in turn."""
    from playwright.async_api import async_playwright

    fetched = subprocess.run([str(ROOT / "deploy" / "thebe.sh"), "path"], capture_output=True, text=True, timeout=600)
    if fetched.returncode != 0:
        raise RuntimeError(f"thebe could not be fetched from npm: {fetched.stderr[-500:]}")
    lib = Path(fetched.stdout.strip().splitlines()[-1])
    results.thebe = lib.parent.name
    with tempfile.TemporaryDirectory(prefix="nbpool-bench-embed-") as tmp:
        server = _serve(Path(tmp), cluster.url, lib)
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", "--disable-sync"],
                )
                try:
                    # Untimed: the first launch after start-up, and the browser's own first start.
                    await pool_full(cluster, pool)
                    warm = await _thebe_view(browser, url, cluster, _scratch(results))
                    await end_sessions(cluster.url, [warm] if warm else [])
                    for run in range(runs):
                        for fig in (results.first_view, results.second_view, results.floor, *results.parts.values()):
                            fig.add_run([])
                        for _ in range(per_run):
                            await pool_full(cluster, pool)
                            session = await _thebe_view(browser, url, cluster, results)
                            await end_sessions(cluster.url, [session] if session else [])
                            await pool_full(cluster, pool)
                            plain = await visit(cluster, {})
                            if plain.ok:
                                results.floor.runs[-1].append(plain.total_ms)
                            else:
                                results.failures += 1
                                results.errors.append(f"floor: {plain.error}")
                            await end_sessions(cluster.url, [plain.session] if plain.session else [])
                        first = results.first_view.runs[-1]
                        progress(f"embed: run {run}: thebe first output p50 "
                                 f"{statistics.median(first) if first else float('nan'):.0f} ms, floor p50 "
                                 f"{statistics.median(results.floor.runs[-1]) if results.floor.runs[-1] else float('nan'):.0f} ms")
                finally:
                    await browser.close()
        finally:
            server.shutdown()
            server.server_close()


def _scratch(results: EmbedResults) -> EmbedResults:
    """Results that are thrown away (the untimed warm-up), with a run to add to."""
    scratch = EmbedResults(pool=results.pool, runs=0)
    for fig in (scratch.first_view, scratch.second_view, *scratch.parts.values()):
        fig.add_run([])
    return scratch
