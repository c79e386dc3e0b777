"""JupyterLab's first load in a real browser, with and without the static-asset offload.

Each load is cold: a new browser context (empty cache) opens the URL ``POST /sessions`` returns,
and the time runs from navigation start until JupyterLab's shell and launcher are on screen
(``performance.now()`` in the page). Writes docs/lab-load.md.
Usage: python bench/lab_load.py [--runs 10] [--runtime process|docker]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from cluster import Cluster  # noqa: E402

READY = ".jp-LabShell .jp-Launcher"


async def loads(cluster: Cluster, runs: int) -> list[float]:
    """Milliseconds to a usable JupyterLab, one cold load per run."""
    from playwright.async_api import async_playwright

    times = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        for _ in range(runs):
            cluster.wait_warm(1, timeout=300)
            session = httpx.post(f"{cluster.url}/sessions", timeout=30).json()
            context = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await context.new_page()
            await page.goto(session["url"])
            await page.locator(READY).wait_for(timeout=60_000)
            times.append(await page.evaluate("performance.now()"))
            await context.close()
            httpx.delete(f"{cluster.url}/sessions/{session['id']}", params={"token": session["token"]})
        await browser.close()
    return times


async def main(args: argparse.Namespace) -> None:
    results = {}
    for offload in (False, True):
        with tempfile.TemporaryDirectory(prefix="nbpool-labload-") as tmp:
            env = {"NBPOOL_RUNTIME": args.runtime, "NBPOOL_POOL_SIZE": "3", "NBPOOL_STATIC_OFFLOAD": str(offload).lower()}
            if args.runtime == "docker":
                built = subprocess.run([str(ROOT / "deploy" / "images" / "build.sh")], stdout=subprocess.PIPE,
                                       text=True, check=True)
                env["NBPOOL_DOCKER_IMAGE"] = built.stdout.strip().splitlines()[-1]
                env["NBPOOL_INSTANCE"] = f"labload{int(offload)}"
            cluster = Cluster(Path(tmp), env).start(warm=3, timeout=300)
            try:
                await loads(cluster, 1)  # warm the services' own caches; not counted
                results[offload] = await loads(cluster, args.runs)
            finally:
                cluster.stop()
    lines = [
        "# JupyterLab first load, with and without the static-asset offload",
        "",
        f"`python bench/lab_load.py --runs {args.runs} --runtime {args.runtime}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: headless Chromium (Debian), a new browser "
        "context (cold cache) per load, from navigation start to JupyterLab's launcher on screen, through "
        "Traefik on loopback.",
        "",
        "| static files from | n | p50 ms | min | max |",
        "|---|---|---|---|---|",
    ]
    for offload, label in ((False, "each sandbox's own Jupyter server"), (True, "the gateway (Traefik route, no extra hop per sandbox)")):
        t = results[offload]
        lines.append(f"| {label} | {len(t)} | {statistics.median(t):.0f} | {min(t):.0f} | {max(t):.0f} |")
    ratio = statistics.median(results[True]) / statistics.median(results[False])
    lines += ["", f"Offload / no offload (p50): {ratio:.2f}.", ""]
    out = ROOT / "docs" / "lab-load.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--runtime", choices=["process", "docker"], default="docker")
    asyncio.run(main(parser.parse_args()))
