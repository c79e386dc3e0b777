"""JupyterLab's first load in Chromium: click Launch on the landing page until Lab is usable.

A *visitor* opens nbpool's landing page (``/``) and clicks *Launch*; the clock runs from the click
(``Date.now()`` in the landing page, just before it) until JupyterLab's shell and launcher are on
screen (``performance.timeOrigin + performance.now()`` in Lab's page, read once Playwright sees
them). Its parts: the launch (the click until the browser asks the sandbox for Lab's page, Navigation
Timing's ``fetchStart``: ``/spawn``, the claim and the redirect) and Lab's load (the rest: its page,
scripts, styles, settings, and its boot).

- *cold*: a new browser context (empty cache) per visitor;
- *returning*: the same context as a visitor before it, now launching a new session (its cache
  holds the earlier session's files).

Floor, in the same run: the same image's JupyterLab straight from a container without nbpool
(started through nbpool's Docker runtime by hand, its kernel pre-started as a pooled sandbox's
is), opened at its own address in a new context: navigation start until the launcher is on
screen. A fresh container for each floor load, as each visitor gets a fresh sandbox.

The same for a profile with ``"ui": "notebook"`` (Jupyter Notebook 7), chosen on the landing page
before the click, until Notebook's file list shows the home's files (*notebook cold*); and its
floor, the same container's ``/tree`` (*notebook floor*).

And over a link (*link cold*, *link floor*): a cold visitor and its floor as above, with the
browser's network emulated as a visitor's broadband link (:data:`LINK`, Chromium's own network
emulation): what compression by the proxy (NBPOOL_PROXY_COMPRESS) is for, where loopback cannot
show it.

Each load also counts its responses and the bytes that came over the network (Resource Timing's
``transferSize``, 0 for what came from the cache), and how long the page's main thread was busy
(Chromium's ``Performance.getMetrics``: its tasks, and of them running scripts). Visitors one at a
time, the pool full before each, kinds in turn.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import uuid
from dataclasses import dataclass, field
from typing import Any

import embed
import httpx
from common import BenchCluster, Figure, end_sessions, progress
from embed import pool_full
from fill import start_by_hand

__all__ = ["FLOOR_OF", "KINDS", "LINK", "LabLoadResults", "cluster", "measure"]

#: What "usable" is, per UI: JupyterLab's shell with its launcher (the page nbpool's Launch opens),
#: Notebook 7's file list with the home's files in it.
READY = {"lab": ".jp-LabShell .jp-Launcher", "notebook": ".jp-DirListing-content .jp-DirListing-item"}
#: The page a floor load opens, per UI (what Launch opens in each, without a start notebook).
_PAGE = {"lab": "lab", "notebook": "tree"}
#: The bench cluster's profile whose links open Notebook 7.
NOTEBOOK_PROFILE = "notebook"
_TIMEOUT_MS = 120_000
KINDS = ("cold", "returning", "floor", "notebook cold", "notebook floor", "link cold", "link floor")
#: The UI each kind loads.
UI_OF = {"cold": "lab", "returning": "lab", "floor": "lab", "notebook cold": "notebook", "notebook floor": "notebook",
         "link cold": "lab", "link floor": "lab"}
#: The floor each launched kind is compared with.
FLOOR_OF = {"cold": "floor", "returning": "floor", "notebook cold": "notebook floor", "link cold": "link floor"}
#: A visitor's broadband link, as Chromium emulates it for the *link* kinds: latency added to each
#: request (ms), and throughput each way (Mbit/s).
LINK = {"latency_ms": 40, "mbit_s": 20}
#: A launch's parts: the launch, and the page's own load (JupyterLab's, or Notebook's).
PARTS = ("launch", "page's load")
_LAUNCHED = ("cold", "returning", "notebook cold", "link cold")
_BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
#: In Lab's page once it is usable: when (epoch ms), when its navigation began (before any redirect),
#: when its own request began (after them), what it fetched.
_READ_PAGE = """() => {
  const res = performance.getEntriesByType("resource");
  const nav = performance.getEntriesByType("navigation")[0];
  return {now: performance.timeOrigin + performance.now(), navigated: performance.timeOrigin,
          origin: performance.timeOrigin + (nav ? nav.fetchStart : 0),
          responses: res.length + 1,
          bytes: res.reduce((sum, r) => sum + (r.transferSize || 0), 0) + (nav ? nav.transferSize : 0),
          cached: res.filter(r => r.transferSize === 0 && r.decodedBodySize > 0).length};
}"""


@dataclass
class LabLoadResults:
    """Everything the group measured (milliseconds; bytes and responses per load)."""

    pool: int
    runs: int
    load: dict[str, Figure] = field(default_factory=lambda: {
        "cold": Figure("Launch -> JupyterLab usable, cold browser"),
        "returning": Figure("Launch -> JupyterLab usable, returning browser"),
        "floor": Figure("straight from a container, cold browser (floor)"),
        "notebook cold": Figure("Launch -> Notebook 7 usable (\"ui\": \"notebook\"), cold browser"),
        "notebook floor": Figure("Notebook 7 straight from a container, cold browser (its floor)"),
        "link cold": Figure(f"Launch -> JupyterLab usable, cold browser, over a {LINK['mbit_s']} Mbit/s link"),
        "link floor": Figure("straight from a container, cold browser, over the same link (its floor)"),
    })
    parts: dict[str, dict[str, Figure]] = field(default_factory=lambda: {
        kind: {"launch": Figure("launch"),
               "page's load": Figure("Notebook's load" if UI_OF[kind] == "notebook" else "Lab's load")}
        for kind in _LAUNCHED})
    bytes: dict[str, Figure] = field(default_factory=lambda: {k: Figure(k, unit="B") for k in KINDS})
    responses: dict[str, Figure] = field(default_factory=lambda: {k: Figure(k, unit="") for k in KINDS})
    cached: dict[str, Figure] = field(default_factory=lambda: {k: Figure(k, unit="") for k in KINDS})
    #: The page's main thread, busy (all its tasks) and running scripts, ms per load.
    busy: dict[str, Figure] = field(default_factory=lambda: {k: Figure(k) for k in KINDS})
    scripts: dict[str, Figure] = field(default_factory=lambda: {k: Figure(k) for k in KINDS})
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    floor_note: str = ""


def cluster(image: str | None, pool: int, concurrency: int) -> BenchCluster:
    """Two profiles, JupyterLab (the default) and Notebook 7, each a pool of ``pool`` real sandboxes
    (containers of ``image``, else processes): ``2 * pool`` in all."""
    profiles = {"default": {"pool_size": pool},
                NOTEBOOK_PROFILE: {"pool_size": pool, "ui": "notebook", "description": "Python 3 with Jupyter Notebook 7"}}
    return embed.cluster(image, 2 * pool, concurrency, label="lab-load", NBPOOL_PROFILES=json.dumps(profiles))


async def measure(cluster: BenchCluster, image: str | None, pool: int, runs: int, results: LabLoadResults) -> None:
    """``runs`` rounds; in each, a cold visitor, a returning one, a floor load, then a cold visitor
    of the Notebook 7 profile and its floor load, in turn. ``pool`` is each profile's."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path="/usr/bin/chromium", args=_BROWSER_ARGS)
        floors = _Floors(image)
        try:
            # Untimed: the browser's own first start, and the services' first Lab page.
            returning = await browser.new_context(viewport={"width": 1280, "height": 800})
            await pool_full(cluster, 2 * pool)
            await _visit(cluster, returning, _scratch(results), "cold")
            await _visit(cluster, returning, _scratch(results), "notebook cold")
            for run in range(runs):
                _new_run(results)
                for kind in ("cold", "returning", "notebook cold", "link cold"):
                    await pool_full(cluster, 2 * pool)
                    if kind == "returning":
                        await _visit(cluster, returning, results, kind)
                        continue
                    context = await browser.new_context(viewport={"width": 1280, "height": 800})
                    try:
                        await _visit(cluster, context, results, kind)
                    finally:
                        await context.close()
                if image:
                    await _floor_load(browser, floors, results, "floor")
                    await _floor_load(browser, floors, results, "notebook floor")
                    await _floor_load(browser, floors, results, "link floor")
                progress(f"lab-load: run {run}: " + ", ".join(
                    f"{kind} {statistics.median(results.load[kind].runs[-1]):.0f} ms"
                    for kind in KINDS if results.load[kind].runs[-1]))
            await returning.close()
        finally:
            await browser.close()
            await floors.close()
    if not image:
        results.floor_note = "no floor: sandboxes are processes in this run (the floor is a container by hand)"


def _scratch(results: LabLoadResults) -> LabLoadResults:
    """Results that are thrown away (the untimed warm-up), with a run to add to."""
    scratch = LabLoadResults(pool=results.pool, runs=0)
    _new_run(scratch)
    return scratch


def _new_run(results: LabLoadResults) -> None:
    """An empty run in every figure, for the round that begins."""
    figures = [*results.load.values(), *results.bytes.values(), *results.responses.values(), *results.cached.values(),
               *results.busy.values(), *results.scripts.values()]
    for fig in figures + [f for parts in results.parts.values() for f in parts.values()]:
        fig.add_run([])


async def _visit(cluster: BenchCluster, context: Any, results: LabLoadResults, kind: str) -> None:
    """One visitor: the landing page, its profile chosen, Launch, the page usable; the session ended after."""
    ui = UI_OF[kind]
    page = await context.new_page()
    went: list[str] = []
    page.on("framenavigated", lambda frame: went.append(frame.url) if frame == page.main_frame else None)
    try:
        cdp = await _watched(context, page, kind)
        await page.goto(f"{cluster.url}/", timeout=_TIMEOUT_MS)
        await page.locator("#launch").wait_for(timeout=_TIMEOUT_MS)
        await page.locator("#profile").select_option(NOTEBOOK_PROFILE if ui == "notebook" else "default")
        landing = await _main_thread(cdp)  # the landing page's own share, not counted
        clicked = await page.evaluate("() => { const t = Date.now(); document.querySelector('#launch').click(); return t; }")
        await page.locator(READY[ui]).first.wait_for(timeout=_TIMEOUT_MS)
        seen = await page.evaluate(_READ_PAGE)
        results.load[kind].runs[-1].append(seen["now"] - clicked)
        results.parts[kind]["launch"].runs[-1].append(seen["origin"] - clicked)
        results.parts[kind]["page's load"].runs[-1].append(seen["now"] - seen["origin"])
        await _count(results, kind, seen, cdp, landing)
    except Exception as err:  # noqa: BLE001 - a failed visitor is counted and said, the run goes on
        results.failures += 1
        results.errors.append(f"{kind}: {err.__class__.__name__}: {str(err).splitlines()[0][:200]}")
    finally:
        await page.close()
        session = _session_of(went)
        if session is not None:
            await end_sessions(cluster.url, [session])


def _session_of(urls: list[str]) -> dict[str, Any] | None:
    """The session the visitor was sent to: the sandbox URL with its token (Lab then drops it from the bar)."""
    for url in urls:
        parsed = httpx.URL(url)
        token = parsed.params.get("token")
        found = re.search(r"^([a-z0-9]+)\.", parsed.host) or re.search(r"^/user/([a-z0-9]+)/", parsed.path)
        if token and found:
            return {"id": found.group(1), "token": token}
    return None


async def _watched(context: Any, page: Any, kind: str) -> Any:
    """A DevTools session on ``page``: its main thread's metrics; for the *link* kinds, the link emulated."""
    cdp = await context.new_cdp_session(page)
    await cdp.send("Performance.enable")
    if kind.startswith("link"):
        rate = LINK["mbit_s"] * 1_000_000 / 8  # bytes per second
        await cdp.send("Network.enable")
        await cdp.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": LINK["latency_ms"], "downloadThroughput": rate, "uploadThroughput": rate})
    return cdp


async def _main_thread(cdp: Any) -> tuple[float, float]:
    """The page's main thread so far (Chromium adds up its tasks across navigations): busy, scripts, ms."""
    metrics = {m["name"]: m["value"] for m in (await cdp.send("Performance.getMetrics"))["metrics"]}
    return metrics["TaskDuration"] * 1000, metrics["ScriptDuration"] * 1000


async def _count(results: LabLoadResults, kind: str, seen: dict[str, Any], cdp: Any,
                 before: tuple[float, float] = (0.0, 0.0)) -> None:
    busy, scripts = await _main_thread(cdp)
    results.busy[kind].runs[-1].append(busy - before[0])
    results.scripts[kind].runs[-1].append(scripts - before[1])
    results.bytes[kind].runs[-1].append(float(seen["bytes"]))
    results.responses[kind].runs[-1].append(float(seen["responses"]))
    results.cached[kind].runs[-1].append(float(seen["cached"]))


class _Floors:
    """Containers of the image started by hand through nbpool's Docker runtime, one per floor load."""

    def __init__(self, image: str | None) -> None:
        self.image = image
        self.instance = f"benchlab{uuid.uuid4().hex[:8]}"
        self.network = f"{self.instance}-sandboxes"
        self.runtime: Any = None

    async def start(self, ui: str) -> tuple[str, str]:
        """A fresh sandbox, answering, its kernel pre-started; its id and the URL a visitor of ``ui`` would open."""
        from nbpool.runtime.docker import DockerRuntime

        if self.runtime is None:
            self.runtime = DockerRuntime(self.instance, "floor", str(self.image), self.network)
        async with httpx.AsyncClient(trust_env=False) as http:
            sid, target, token = await start_by_hand(self.runtime, http, str(self.image))
        return sid, f"{target}/{_PAGE[ui]}?token={token}"

    async def remove(self, sid: str) -> None:
        await self.runtime.remove(sid)

    async def close(self) -> None:
        if self.runtime is None:
            return
        from cluster import end_docker_leftovers

        await self.runtime.close()
        await asyncio.to_thread(end_docker_leftovers, self.instance, self.network)


async def _floor_load(browser: Any, floors: _Floors, results: LabLoadResults, kind: str) -> None:
    """One floor load: a fresh container's JupyterLab (or Notebook 7) in a new context, from navigation
    start to usable."""
    ui = UI_OF[kind]
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    sid = None
    try:
        sid, url = await floors.start(ui)
        page = await context.new_page()
        cdp = await _watched(context, page, kind)
        await page.goto(url, timeout=_TIMEOUT_MS)
        await page.locator(READY[ui]).first.wait_for(timeout=_TIMEOUT_MS)
        seen = await page.evaluate(_READ_PAGE)
        results.load[kind].runs[-1].append(seen["now"] - seen["navigated"])
        await _count(results, kind, seen, cdp)
    except Exception as err:  # noqa: BLE001 - a failed load is counted and said, the run goes on
        results.failures += 1
        results.errors.append(f"{kind}: {err.__class__.__name__}: {str(err).splitlines()[0][:200]}")
    finally:
        await context.close()
        if sid is not None:
            await floors.remove(sid)  # as nbpool ends a visitor's sandbox: none piles up
