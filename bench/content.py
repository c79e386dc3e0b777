"""Content profiles: how long a workshop's image takes to build, and a visitor's first output on it.

The workshop is the README's worked example (two notebooks, a CSV file, a requirements.txt:
tests/workshop.py), its wheels made on the spot and found through PIP_NO_INDEX and PIP_FIND_LINKS,
so nothing is fetched from a package index. Builds are ``nbpool profile build NAME`` as an
operator runs it, wall time, each round with a profile name never built before:

- *cold*: both layers (the packages image: requirements resolved and downloaded on the host,
  installed offline; then the content image);
- *content change*: one notebook changed: the content image alone;
- *requirements change*: one more requirement: both layers again.

Then a cluster with the default profile and the last round's content profile, a warm pool of
each: visitors one at a time, a content-profile visitor and a default-profile visitor in turn,
each with the pools full: ``POST /sessions`` to the result of ``1+1`` on the session's
pre-started kernel (the start notebook's, for the content profile) over a websocket through the
proxy (section 2's visitor).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import BenchCluster, Figure, end_sessions, progress
from embed import pool_full
from snapshots import visit
from workshop import make_wheel, profile_build, remove_profile_images, workshop

__all__ = ["BUILDS", "ContentResults", "measure"]

BUILDS = ("cold", "content change", "requirements change")


@dataclass
class ContentResults:
    """Everything the group measured: build times (seconds), first outputs (milliseconds)."""

    pool: int
    builds: dict[str, Figure] = field(default_factory=lambda: {b: Figure(b, unit="s") for b in BUILDS})
    content_visit: Figure = field(default_factory=lambda: Figure("content profile: POST /sessions to first output"))
    default_visit: Figure = field(default_factory=lambda: Figure("default profile: POST /sessions to first output"))
    #: Whether the content change reused the packages image (it must: only the content layer is built).
    reused_packages: list[bool] = field(default_factory=list)
    failures: int = 0
    errors: list[str] = field(default_factory=list)


def _settings(image: str, wheels: Path, name: str, content: Path, pool: int) -> dict[str, str]:
    return {
        "NBPOOL_RUNTIME": "docker", "NBPOOL_DOCKER_IMAGE": image, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels),
        "NBPOOL_PROFILES": json.dumps({"default": {"pool_size": pool},
                                       name: {"pool_size": pool, "content": str(content), "start": "Intro.ipynb"}}),
    }


def _build(settings: dict[str, str], name: str) -> tuple[float, str]:
    """``nbpool profile build NAME``: its wall time (s) and what it said."""
    began = time.monotonic()
    done = profile_build(settings, name)
    took = time.monotonic() - began
    if done.returncode != 0:
        raise RuntimeError(f"nbpool profile build {name} failed: {done.stderr.strip().splitlines()[-1:]}")
    return took, done.stderr


async def measure(image: str, runs: int, visits: int, pool: int, results: ContentResults,
                  track: Callable[[BenchCluster], BenchCluster]) -> None:
    """``runs`` rounds of the three builds, then ``visits`` visitors of each profile in turn."""
    with tempfile.TemporaryDirectory(prefix="nbpool-bench-content-") as tmp:
        wheels = Path(tmp) / "wheels"
        make_wheel(wheels, "nbpool-demo-greet", "1.0", "def hello():\n    return 'hello from a wheel'\n")
        make_wheel(wheels, "nbpool-demo-extra", "1.0", "VALUE = 42\n")
        names: list[str] = []
        try:
            for run in range(runs):
                name = f"bench{uuid.uuid4().hex[:8]}"
                names.append(name)
                content = workshop(Path(tmp) / name)
                settings = _settings(image, wheels, name, content, pool)
                for fig in results.builds.values():
                    fig.add_run([])
                took, _ = await asyncio.to_thread(_build, settings, name)
                results.builds["cold"].runs[-1].append(took)
                workshop(content, exercise="print('exercise 2')")
                took, said = await asyncio.to_thread(_build, settings, name)
                results.builds["content change"].runs[-1].append(took)
                results.reused_packages.append("unchanged); nothing to build" in said)
                workshop(content, exercise="print('exercise 2')",
                         requirements="nbpool-demo-greet>=1.0\nnbpool-demo-extra\n")
                took, _ = await asyncio.to_thread(_build, settings, name)
                results.builds["requirements change"].runs[-1].append(took)
                progress(f"content: run {run}: builds cold {results.builds['cold'].runs[-1][0]:.1f} s, content "
                         f"change {results.builds['content change'].runs[-1][0]:.1f} s, requirements change "
                         f"{results.builds['requirements change'].runs[-1][0]:.1f} s")
            cluster = track(BenchCluster("content", {**_settings(image, wheels, names[-1], Path(tmp) / names[-1], pool),
                                                     "NBPOOL_MAX_SANDBOXES": str(2 * pool + 2)}))
            await _visits(cluster, names[-1], visits, pool, results)
        finally:
            for name in names:
                await asyncio.to_thread(remove_profile_images, name)


async def _visits(cluster: BenchCluster, name: str, visits: int, pool: int, results: ContentResults) -> None:
    with cluster:
        await asyncio.to_thread(cluster.start, 1, 300)
        results.content_visit.add_run([])
        results.default_visit.add_run([])
        for i in range(visits + 1):  # the first pair untimed
            for body, fig in (({"profile": name}, results.content_visit), ({}, results.default_visit)):
                await pool_full(cluster, 2 * pool)
                seen = await visit(cluster, body)
                if i and seen.ok:
                    fig.runs[-1].append(seen.total_ms)
                elif not seen.ok:
                    results.failures += 1
                    results.errors.append(f"{body or 'default'}: {seen.error}")
                await end_sessions(cluster.url, [seen.session] if seen.session else [])
