"""Snapshots: publishing a session's notebook, viewing it, remixing it, and what the bus keeps.

One cluster of real sandboxes. An *author* session holds two notebooks made for the bench, put
there with the contents API (``PUT api/contents/<path>``, as a file, so their bytes are exact):
one of about 100 KB and one of about 2 MB, each many code cells with text outputs and a few PNG
images (noise, so they do not compress). Every publish is of new content (a line of the first
cell changes, untimed, before it), so each is a new notebook on the bus and a new snapshot id.

What it measures, per notebook size, in ``runs`` rounds (the *runs* spread is between them):

- **publish**: ``POST /sessions/{id}/snapshots`` through the proxy, with the session's token:
  the gateway reads the notebook from the sandbox, checks it with nbformat, stores it. Floor:
  the same sandbox's plain ``GET api/contents/<path>`` of that notebook through the proxy (what
  reading it alone costs); beside it, the two reads the gateway itself makes (``?content=0``,
  then the file as text), from the bench through the proxy. Floor and publish alternate which
  goes first.
- **view, cold**: the first ``GET`` of a new snapshot's ``view_url`` (its own origin, through
  the proxy; gzip accepted, as a browser does): the gateway reads it from the bus and renders it
  with nbconvert. Floor: ``GET /snapshots/{id}/notebook`` of the same snapshot, which reads the
  same bytes from the bus and sends the notebook, without rendering.
- **view, cached**: the same page again (rendered pages are kept in the gateway's memory).
  Floor: ``GET /snapshots/{id}``, the snapshot's record alone (the same read of the index the
  cached view makes first), in alternation with it.
- **remix**: from ``POST /sessions {"snapshot": id}`` (a warm sandbox claimed and the notebook
  written into it before the answer) to the result of ``1+1`` on the session's pre-started kernel
  over a websocket through the proxy, exactly as ``first_output`` times a visitor; against a
  plain ``POST /sessions``, the floor, one visitor at a time, the kinds in turn (plain, remix of
  each size, the order rotating). The spawner's capacity is the pool plus the author's sandbox,
  so no refill starts while the visitors of a round hold their sandboxes; between rounds they are
  ended and the pool refilled. Afterwards (untimed) each remixed session is checked to hold the
  notebook, at its size.
- **storage**: bytes of the object store's stream (``OBJ_<instance>_snapshots``, read as the
  operator) before and after publishing one new notebook ``same`` times: it should hold one copy.

In this order: one untimed publish, view and remix of the Welcome notebook (the first render
after a gateway starts sets nbconvert up: its time is reported, not counted); the rounds of
publishes and views; the storage figure; the remix rounds, each after the pool has refilled
(bounded: a pool that does not refill in time ends the rounds, with the reason in the report).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import math
import random
import statistics
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import nbformat
from common import BenchCluster, Figure, HTTPConnection, end_sessions, progress
from first_output import Visit, first_output_on

__all__ = ["KINDS", "SIZES", "SnapshotResults", "cluster", "make_notebook", "measure", "visit"]

#: The notebooks: label -> (bytes wanted, PNG images in it), and the file each is saved as.
SIZES: dict[str, tuple[int, int]] = {"100 KB": (100_000, 2), "2 MB": (2_000_000, 4)}
_FILES = {"100 KB": "bench-100KB.ipynb", "2 MB": "bench-2MB.ipynb"}
#: The visitors of the remix rounds: a plain launch (the floor) and a remix of each size.
KINDS = ("plain", *(f"remix {label}" for label in SIZES))
#: The parts of a visit (``first_output.Visit`` attributes), reported beside the whole.
_PARTS = {"claim": "claim_ms", "websocket open": "connect_ms", "execute 1+1": "execute_ms"}
_TIMEOUT_S = 120.0
#: The longest wait for the pool to refill between remix rounds.
REFILL_S = 300.0
#: Where a notebook's variant line goes: replaced in place by :func:`_variant`, of the same length.
_VARIANT = "variant-" + "x" * 56


def _variant(what: str) -> str:
    """A variant line unique to this moment, exactly as long as :data:`_VARIANT`."""
    return f"variant-{what}, {time.time_ns()}"[: len(_VARIANT)].ljust(len(_VARIANT), ".")


@dataclass
class SnapshotResults:
    """Everything the group measured (milliseconds unless named otherwise); see the module docstring."""

    pool: int
    runs: int
    #: label -> the notebook's bytes as published (the first of the run; the others differ by a line).
    notebook_bytes: dict[str, int] = field(default_factory=dict)
    #: label -> the rendered view page's bytes, and the bytes sent for it (gzipped, when the gateway does).
    page_bytes: dict[str, int] = field(default_factory=dict)
    page_sent: dict[str, int] = field(default_factory=dict)
    publish: dict[str, Figure] = field(default_factory=dict)
    read_floor: dict[str, Figure] = field(default_factory=dict)
    gateway_reads: dict[str, Figure] = field(default_factory=dict)
    view_cold: dict[str, Figure] = field(default_factory=dict)
    download: dict[str, Figure] = field(default_factory=dict)
    view_cached: dict[str, Figure] = field(default_factory=dict)
    info: dict[str, Figure] = field(default_factory=dict)
    #: kind (``KINDS``) -> time to first output, and its parts.
    remix: dict[str, Figure] = field(default_factory=dict)
    remix_parts: dict[str, dict[str, Figure]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    #: Untimed first requests after the gateway started: name -> ms.
    warmup_ms: dict[str, float] = field(default_factory=dict)
    fill_s: float = float("nan")
    refill_s: list[float] = field(default_factory=list)
    #: Storage: the stream's bytes before, then after each publish of one same notebook.
    same_label: str = ""
    same_bytes: int = 0
    stored_before: int = 0
    stored_after: list[int] = field(default_factory=list)
    republish: Figure = field(default_factory=lambda: Figure("publish, the same notebook again"))
    #: The distinct notebooks published before the storage round: how many, and their bytes.
    distinct: int = 0
    distinct_bytes: int = 0


def cluster(image: str | None, pool: int, concurrency: int) -> BenchCluster:
    """A pool of ``pool`` real sandboxes (containers of ``image``, else processes) and room for one
    more, the author's; snapshots published as fast as the bench asks."""
    runtime = {"NBPOOL_RUNTIME": "docker", "NBPOOL_DOCKER_IMAGE": image} if image else {"NBPOOL_RUNTIME": "process"}
    return BenchCluster("snapshots", {
        **runtime,
        "NBPOOL_POOL_SIZE": str(pool),
        "NBPOOL_MAX_SANDBOXES": str(pool + 1),
        "NBPOOL_SPAWN_CONCURRENCY": str(concurrency),
        # One client publishes everything: the per-client rate is not what is measured.
        "NBPOOL_SNAPSHOT_RATE": "100000",
    })


# ---- the notebooks ----------------------------------------------------------------------------


def _png(side: int, rng: random.Random) -> bytes:
    """A ``side`` × ``side`` RGB PNG of noise (incompressible, so its size is what it is)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + rng.randbytes(side * 3) for _ in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 1)) + chunk(b"IEND", b"")


def make_notebook(target: int, images: int, variant: str, seed: int = 1) -> str:
    """A valid notebook of about ``target`` bytes: half in text outputs of many code cells, half in
    ``images`` PNG outputs; ``variant`` is a line of its first cell (so each variant is new content)."""
    rng = random.Random(seed)
    per_cell = 2000

    def code(source: str, count: int, output: dict[str, Any]) -> dict[str, Any]:
        return {"cell_type": "code", "id": f"c{count}", "execution_count": count, "metadata": {}, "source": source,
                "outputs": [output]}

    cells: list[dict[str, Any]] = [{"cell_type": "markdown", "id": "intro", "metadata": {},
                                    "source": f"# A notebook for the bench\n\n{variant}"}]
    side = max(8, int(math.sqrt(target / 2 / images * 3 / 4 / 3)))  # PNG: 3 bytes a pixel; base64: 4/3
    for i in range(max(1, target // 2 // (per_cell + 300))):  # each cell: its output, source and JSON around them
        lines, size = [], 0
        step = 0
        while size < per_cell:
            line = f"step {i:04d}.{step:03d}  loss={rng.random():.6f}  acc={rng.random():.6f}  lr={rng.random() / 100:.2e}\n"
            lines.append(line)
            size += len(line)
            step += 1
        cells.append(code(f"for step in range({step}):\n    report({i}, step)", i + 1,
                          {"output_type": "stream", "name": "stdout", "text": "".join(lines)}))
    for j in range(images):
        png = base64.b64encode(_png(side, rng)).decode()
        cells.append(code(f"plot({j})", 10_000 + j, {
            "output_type": "display_data", "metadata": {},
            "data": {"image/png": png, "text/plain": "<Figure size 640x480 with 1 Axes>"}}))
    nb = {"nbformat": 4, "nbformat_minor": 5, "cells": cells, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}
    nbformat.validate(nb)
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


# ---- measuring ----------------------------------------------------------------------------------


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


_JSON = {"Content-Type": "application/json"}


async def _timed(conn: HTTPConnection, method: str, path: str, headers: dict[str, str] | None = None,
                 body: bytes = b"", want: int = 200) -> tuple[float, Any]:
    """One request; its milliseconds and response, or RuntimeError when the status is not ``want``."""
    began = time.perf_counter()
    resp = await conn.request(method, path, headers, body)
    ms = (time.perf_counter() - began) * 1000
    if resp.status != want:
        raise RuntimeError(f"{method} {path.split('?')[0]}: {resp.status} (wanted {want}): {resp.body[:200]!r}")
    return ms, resp


class _Author:
    """The author's session: where the notebooks are put, read and published from."""

    def __init__(self, cluster: BenchCluster, session: dict[str, Any]) -> None:
        self.session = session
        self.headers = _auth(session["token"])
        self.sandbox = HTTPConnection.to(cluster.origins.sandbox_url(session["id"]), _TIMEOUT_S)
        self.api = HTTPConnection.to(cluster.url, _TIMEOUT_S)
        self.view: HTTPConnection | None = None

    async def close(self) -> None:
        for conn in (self.sandbox, self.api, self.view):
            if conn is not None:
                await conn.close()

    async def put(self, path: str, text: str) -> None:
        body = json.dumps({"type": "file", "format": "text", "content": text}).encode()
        resp = await self.sandbox.request("PUT", f"/api/contents/{quote(path)}", {**self.headers, **_JSON}, body)
        if resp.status not in (200, 201):
            raise RuntimeError(f"PUT {path} into the author's sandbox: {resp.status}: {resp.body[:200]!r}")

    async def read(self, path: str) -> float:
        """The floor: a plain ``GET api/contents/<path>`` (the notebook model, as JupyterLab opens it)."""
        return (await _timed(self.sandbox, "GET", f"/api/contents/{quote(path)}", self.headers))[0]

    async def gateway_reads(self, path: str) -> float:
        """The reads the gateway makes of the sandbox when publishing, one after the other."""
        head, _ = await _timed(self.sandbox, "GET", f"/api/contents/{quote(path)}?content=0", self.headers)
        body, _ = await _timed(self.sandbox, "GET", f"/api/contents/{quote(path)}?type=file&format=text&content=1",
                               self.headers)
        return head + body

    async def publish(self, path: str) -> tuple[float, dict[str, Any]]:
        ms, resp = await _timed(self.api, "POST", f"/sessions/{self.session['id']}/snapshots",
                                {**self.headers, **_JSON}, json.dumps({"path": path}).encode(), want=201)
        return ms, resp.json()

    async def get_view(self, snap: dict[str, Any]) -> tuple[float, bytes, int]:
        """The view, asked for as a browser does (gzip accepted): milliseconds, the page, and the bytes sent."""
        url = urlsplit(snap["view_url"])
        if self.view is None:
            self.view = HTTPConnection.to(snap["view_url"], _TIMEOUT_S)
        ms, resp = await _timed(self.view, "GET", url.path, {"Accept-Encoding": "gzip"})
        page = gzip.decompress(resp.body) if resp.headers.get("content-encoding") == "gzip" else resp.body
        return ms, page, len(resp.body)

    async def download(self, snap: dict[str, Any]) -> float:
        return (await _timed(self.api, "GET", f"/snapshots/{snap['id']}/notebook"))[0]

    async def info(self, snap: dict[str, Any]) -> float:
        return (await _timed(self.api, "GET", f"/snapshots/{snap['id']}"))[0]


async def visit(cluster: BenchCluster, body: dict[str, Any]) -> Visit:
    """One visitor, as ``first_output.visit``: claim (``body``), then ``1+1`` on the session's
    pre-started kernel over a websocket through the proxy. A remixed session's ``url`` opens its
    notebook (``<base>lab/tree/<name>``), so the base is the sandbox's origin, not the url's page."""
    began = time.perf_counter()
    out = Visit(arrived=began)
    conn = HTTPConnection.to(cluster.url, timeout=_TIMEOUT_S)
    try:
        resp = await conn.request("POST", "/sessions", _JSON, json.dumps(body).encode())
        claimed = time.perf_counter()
        if resp.status != 201:
            out.error = f"POST /sessions {body}: {resp.status}: {resp.body[:160]!r}"
            return out
        session = out.session = resp.json()
        out.claim_ms = (claimed - began) * 1000
        base = cluster.origins.sandbox_url(session["id"])
        if not session["url"].startswith(base) or not session.get("kernel_id"):
            out.error = f"unexpected answer: url {session['url'][:80]!r}, kernel_id {session.get('kernel_id')!r}"
            return out
        await first_output_on(out, base, session["kernel_id"], session["token"], claimed)
    except Exception as err:  # noqa: BLE001 - a visitor's failure is a figure, not a crash of the bench
        out.error = f"{err.__class__.__name__}: {err}"
    finally:
        await conn.close()
    return out


async def _holds(cluster: BenchCluster, session: dict[str, Any], name: str, size: int) -> str:
    """Why the remixed session does not hold the notebook ``name`` of ``size`` bytes; empty when it does."""
    conn = HTTPConnection.to(cluster.origins.sandbox_url(session["id"]), _TIMEOUT_S)
    try:
        resp = await conn.request("GET", f"/api/contents/{quote(name)}?content=0", _auth(session["token"]))
    finally:
        await conn.close()
    if resp.status != 200:
        return f"remixed session {session['id']}: GET {name}: {resp.status}"
    got = resp.json().get("size")
    return "" if got == size else f"remixed session {session['id']}: {name} is {got} bytes, the snapshot {size}"


async def _stored_bytes(cluster: BenchCluster) -> int:
    """Bytes in the snapshot object store's stream, read as the operator."""
    import nats

    from nbpool.names import Names

    creds = cluster.bus_credentials()
    nc = await nats.connect(cluster.nats_url, user=creds.user, password=creds.password)
    try:
        info = await nc.jetstream().stream_info(f"OBJ_{Names(cluster.instance).snapshots}")
        return int(info.state.bytes)
    finally:
        await nc.close()


async def _claim(cluster: BenchCluster) -> dict[str, Any]:
    """A plain session (the author's)."""
    conn = HTTPConnection.to(cluster.url, _TIMEOUT_S)
    try:
        resp = await conn.request("POST", "/sessions", _JSON, b"{}")
    finally:
        await conn.close()
    if resp.status != 201:
        raise RuntimeError(f"the author's session: POST /sessions answered {resp.status}: {resp.body[:200]!r}")
    session: dict[str, Any] = resp.json()
    return session


def _figures(into: dict[str, Figure], name: str) -> dict[str, Figure]:
    for label in SIZES:
        into.setdefault(label, Figure(f"{name}, {label}"))
    return into


async def _warm_up(cluster: BenchCluster, author: _Author, results: SnapshotResults, pool: int) -> None:
    """One untimed publish, view and remix of the Welcome notebook (see the module docstring)."""
    results.warmup_ms["publish (Welcome.ipynb)"], snap = await author.publish("Welcome.ipynb")
    results.distinct, results.distinct_bytes = results.distinct + 1, results.distinct_bytes + int(snap["size"])
    results.warmup_ms["first view after the gateway started"], _, _ = await author.get_view(snap)
    results.warmup_ms["the same view again"], _, _ = await author.get_view(snap)
    v = await visit(cluster, {"snapshot": snap["id"]})
    results.warmup_ms["first remix, to first output"] = v.total_ms
    if not v.ok:
        results.errors.append(f"untimed first remix: {v.error}")
    if v.session:
        await end_sessions(cluster.url, [v.session])
    await asyncio.to_thread(cluster.wait_quiet, pool, REFILL_S)


async def _publish_round(author: _Author, results: SnapshotResults, run: int, publishes: int, cold: int,
                         cached: int, notebooks: dict[str, str]) -> dict[str, dict[str, Any]]:
    """One run of publishes and views, the sizes in turn; the last snapshot of each size.

    ``notebooks``: label -> the notebook's text with :data:`_VARIANT` where each publish puts a line of its own.
    """
    runs: dict[str, dict[str, list[float]]] = {label: {k: [] for k in (
        "publish", "read", "reads", "cold", "download", "cached", "info")} for label in SIZES}
    last: dict[str, dict[str, Any]] = {}
    for i in range(publishes):
        for label in SIZES:
            samples = runs[label]
            path = _FILES[label]
            variant = _variant(f"run {run}, publish {i}")
            await author.put(path, notebooks[label].replace(_VARIANT, variant))
            # Floor and publish alternate which goes first, so neither always finds the file just read.
            if i % 2:
                ms, snap = await author.publish(path)
                samples["publish"].append(ms)
                samples["read"].append(await author.read(path))
            else:
                samples["read"].append(await author.read(path))
                ms, snap = await author.publish(path)
                samples["publish"].append(ms)
            samples["reads"].append(await author.gateway_reads(path))
            results.notebook_bytes.setdefault(label, int(snap["size"]))
            results.distinct, results.distinct_bytes = results.distinct + 1, results.distinct_bytes + int(snap["size"])
            last[label] = snap
            if i >= cold:
                continue
            if i % 2:
                ms, page, sent = await author.get_view(snap)
                samples["download"].append(await author.download(snap))
            else:
                samples["download"].append(await author.download(snap))
                ms, page, sent = await author.get_view(snap)
            samples["cold"].append(ms)
            if variant.encode() not in page:
                results.errors.append(f"{label}: the view of snapshot {snap['id']} does not show its notebook")
            results.page_bytes.setdefault(label, len(page))
            results.page_sent.setdefault(label, sent)
            for _ in range(math.ceil(cached / cold)):
                if len(samples["cached"]) >= cached:
                    break
                ms, again, _ = await author.get_view(snap)
                samples["cached"].append(ms)
                samples["info"].append(await author.info(snap))
                if again != page:
                    results.errors.append(f"{label}: the cached view of snapshot {snap['id']} differs from the first")
    for label, samples in runs.items():
        for figures, key in ((results.publish, "publish"), (results.read_floor, "read"),
                             (results.gateway_reads, "reads"), (results.view_cold, "cold"),
                             (results.download, "download"), (results.view_cached, "cached"), (results.info, "info")):
            figures[label].add_run(samples[key])
        progress(f"snapshots: run {run}, {label}: publish p50 {statistics.median(samples['publish']):.0f} ms "
                 f"(read {statistics.median(samples['read']):.0f} ms), cold view p50 "
                 f"{statistics.median(samples['cold']) if samples['cold'] else float('nan'):.0f} ms, cached "
                 f"{statistics.median(samples['cached']) if samples['cached'] else float('nan'):.1f} ms")
    return last


async def _remix_round(cluster: BenchCluster, results: SnapshotResults, per_kind: int, run: int,
                       snaps: dict[str, dict[str, Any]]) -> None:
    """``per_kind`` visitors of each kind, one at a time, the kinds in turn (the order rotating)."""
    bodies: dict[str, dict[str, Any]] = {"plain": {}}
    for label, snap in snaps.items():
        bodies[f"remix {label}"] = {"snapshot": snap["id"]}
    visits: dict[str, list[Visit]] = {kind: [] for kind in KINDS}
    order = list(KINDS)
    for i in range(per_kind):
        turn = order[i % len(order):] + order[:i % len(order)]
        for kind in turn:
            visits[kind].append(await visit(cluster, bodies[kind]))
    for kind, done in visits.items():
        good = [v for v in done if v.ok]
        results.failures[kind] = results.failures.get(kind, 0) + len(done) - len(good)
        results.errors += [f"{kind}: {v.error}" for v in done if not v.ok]
        results.remix.setdefault(kind, Figure(f"time to first output, {kind}")).add_run([v.total_ms for v in good])
        parts = results.remix_parts.setdefault(kind, {name: Figure(f"{name}, {kind}") for name in _PARTS})
        for name, attr in _PARTS.items():
            parts[name].add_run([getattr(v, attr) for v in good])
        progress(f"snapshots: run {run}, {kind}: first output p50 "
                 f"{statistics.median([v.total_ms for v in good]) if good else float('nan'):.0f} ms, "
                 f"{len(done) - len(good)} failed")
    for label, snap in snaps.items():
        for v in visits[f"remix {label}"]:
            if v.ok and v.session:
                why = await _holds(cluster, v.session, snap["name"], int(snap["size"]))
                if why:
                    results.failures[f"remix {label}"] += 1
                    results.errors.append(why)
    await end_sessions(cluster.url, [v.session for done in visits.values() for v in done if v.session])


async def _storage(author: _Author, cluster: BenchCluster, results: SnapshotResults, same: int,
                   notebooks: dict[str, str]) -> None:
    """Publish one new notebook ``same`` times; the stream's bytes before and after each."""
    label = list(SIZES)[-1]
    path = _FILES[label]
    await author.put(path, notebooks[label].replace(_VARIANT, _variant("the same notebook")))
    results.same_label = label
    results.stored_before = await _stored_bytes(cluster)
    times = []
    for i in range(same):
        ms, snap = await author.publish(path)
        if i:
            times.append(ms)
        results.same_bytes = int(snap["size"])
        results.stored_after.append(await _stored_bytes(cluster))
    results.republish.add_run(times)
    progress(f"snapshots: storage: {results.same_bytes} bytes published {same} times: the stream grew "
             f"{results.stored_after[0] - results.stored_before} bytes with the first, "
             f"{results.stored_after[-1] - results.stored_after[0]} with the other {same - 1}")


async def measure(cluster: BenchCluster, pool: int, runs: int, publishes: int, cold: int, cached: int,
                  per_kind: int, same: int, results: SnapshotResults) -> None:
    """The whole group on a started cluster whose pool of ``pool`` is warm (see the module docstring).

    ``publishes``, ``cold`` and ``cached`` are per notebook size and run; ``per_kind`` visitors of
    each kind per run (the pool must hold ``per_kind × len(KINDS)``); ``same`` publishes of one
    notebook for the storage figure.
    """
    if pool < per_kind * len(KINDS):
        raise ValueError(f"snapshots: a pool of {pool} cannot serve {per_kind} visitors of each of {len(KINDS)} kinds")
    cold = min(cold, publishes)
    # Made once (nbformat validates them): each publish changes only the variant line, in place.
    notebooks = {label: await asyncio.to_thread(make_notebook, *spec, _VARIANT) for label, spec in SIZES.items()}
    for figures, name in ((results.publish, "publish"), (results.read_floor, "GET api/contents (floor)"),
                          (results.gateway_reads, "the gateway's two reads, by hand"),
                          (results.view_cold, "view, cold"), (results.download, "download (floor)"),
                          (results.view_cached, "view, cached"), (results.info, "snapshot record (floor)")):
        _figures(figures, name)
    began = time.monotonic()
    author = _Author(cluster, await _claim(cluster))
    try:
        await asyncio.to_thread(cluster.wait_quiet, pool, REFILL_S)
        await _warm_up(cluster, author, results, pool)
        progress(f"snapshots: warm-up {', '.join(f'{k} {v:.0f} ms' for k, v in results.warmup_ms.items())}")
        snaps: list[dict[str, dict[str, Any]]] = []
        for run in range(runs):
            snaps.append(await _publish_round(author, results, run, publishes, cold, cached, notebooks))
        await _storage(author, cluster, results, same, notebooks)
        for run in range(runs):
            refill = time.monotonic()
            try:
                await asyncio.to_thread(cluster.wait_quiet, pool, REFILL_S)
            except TimeoutError as err:  # the figures so far stay; the reason goes into the report
                results.errors.append(f"remix rounds from round {run + 1} on not run: {err}")
                break
            if run:
                results.refill_s.append(time.monotonic() - refill)
            await _remix_round(cluster, results, per_kind, run, snaps[run])
    finally:
        await author.close()
        with contextlib.suppress(Exception):
            await end_sessions(cluster.url, [author.session])
    progress(f"snapshots: measured in {time.monotonic() - began:.0f} s")
