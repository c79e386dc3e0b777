"""docs/benchmarks.md and docs/benchmarks.json, from the results of one run (plots: ``plots.py``).

Everything here is presentation: no measuring. The markdown puts the targets first, each with
the measured figure, its floor from the same run and the ratio, then one section per figure
group with the full tables and a plot.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from burst import BurstResults
from burst import to_json as burst_json
from claims import ClaimResults
from common import Figure, Summary
from content import BUILDS as CONTENT_BUILDS
from content import ContentResults
from embed import PARTS as EMBED_PARTS
from embed import EmbedResults
from fill import PHASES, FillResults
from first_output import VISITORS_SANDBOXES, FloorResults, TTFOResults
from gvisor import GVisorResults
from hosts import HostsResults
from lab_load import FLOOR_OF as LAB_FLOOR_OF
from lab_load import KINDS as LAB_KINDS
from lab_load import LINK, LabLoadResults
from plots import draw
from proxy import ProxyResults
from resources import ResourceResults
from scale import ScaleResults
from snapshots import KINDS as SNAPSHOT_KINDS
from snapshots import SnapshotResults

__all__ = ["Results", "write"]

#: The processes that make up the control plane (the target counts these).
CONTROL_PLANE = ("nats", "traefik", "gateway", "spawner", "router", "culler")


@dataclass
class Results:
    """Everything one run measured; groups that did not run stay None."""

    command: str
    machine: str
    runtime: str
    started: str
    sizes: dict[str, Any]
    took_s: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    floor: FloorResults | None = None
    claims: ClaimResults | None = None
    ttfo: TTFOResults | None = None
    warm_s: dict[str, float] = field(default_factory=dict)
    burst: BurstResults | None = None
    proxy: ProxyResults | None = None
    resources: ResourceResults | None = None
    memory_idle: dict[str, dict[str, float]] = field(default_factory=dict)
    scale: ScaleResults | None = None
    gvisor: GVisorResults | None = None
    hosts: HostsResults | None = None
    snapshots: SnapshotResults | None = None
    embed: EmbedResults | None = None
    content: ContentResults | None = None
    fill: FillResults | None = None
    lab_load: LabLoadResults | None = None
    notes: list[str] = field(default_factory=list)


# ---- formatting ------------------------------------------------------------------------------


def n(x: float, unit: str = "") -> str:
    """A number with as many digits as it deserves."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    ax = abs(x)
    text = f"{x:.2f}" if ax < 10 else f"{x:.1f}" if ax < 100 else f"{x:,.0f}"
    return text + (f" {unit}" if unit else "")


def ratio(a: float, b: float) -> str:
    if not b or math.isnan(a) or math.isnan(b):
        return "–"
    r = a / b
    return f"{r:.2f}×" if r < 10 else f"{r:.0f}×"


def spread(fig: Figure) -> str:
    meds = fig.run_medians
    if len(meds) < 2:
        return "1 run"
    return f"{n(min(meds))}–{n(max(meds))} ({len(meds)} runs)"


def table(headers: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(out)


def _claim_p50_miss(r: Results) -> list[str]:
    """Why a claim p50 of 5 ms at 50 concurrent is out of reach, from this run's own figures."""
    if not r.claims or 50 not in r.claims.claims or r.claims.claims[50].pooled.p50 <= 5:
        return []
    cpu = sum(r.claims.cpu_per_claim.get(50, {}).values())
    floor = r.claims.healthz[50].pooled.p50
    cores = _CORES
    text = (f"**Why the claim p50 at 50 concurrent is missed.** By Little's law, 50 claims always in flight at a "
            f"p50 of 5 ms means about 10,000 claims a second. A claim costs {n(cpu, 'ms')} of CPU summed over Traefik, "
            f"the gateway, NATS, the spawner and the load generator (section 1), so {cores} cores serve at most "
            f"about {n(cores * 1000 / cpu if cpu else float('nan'))} a second. The floor shows the same: "
            f"`GET /healthz`, which does no work, through the same Traefik at the same concurrency, has a p50 of "
            f"{n(floor, 'ms')} in this run. p99 and the single-client p50 are where the design shows.")
    return [text, ""]


def verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("**met**" if ok else "**missed**")


# ---- targets ---------------------------------------------------------------------------------


#: Issue 15's targets: first output p50 at 30 at once (ms), Launch -> JupyterLab usable (ms).
THIRTY_AT_ONCE_MS = 400
LAB_MS = 1500
#: The cores of the machine the run (and this report, written at its end) ran on.
_CORES = os.cpu_count() or 1


def _targets(r: Results) -> list[list[str]]:
    rows: list[list[str]] = []
    if r.claims and 50 in r.claims.claims:
        c, f = r.claims.claims[50].pooled, r.claims.healthz[50].pooled
        rows.append(["`POST /sessions` p50, 50 concurrent, warm pool", "≤ 5 ms", n(c.p50, "ms"),
                     f"`/healthz` {n(f.p50, 'ms')}", ratio(c.p50, f.p50), verdict(c.p50 <= 5)])
        rows.append(["`POST /sessions` p99, 50 concurrent, warm pool", "≤ 50 ms", n(c.p99, "ms"),
                     f"`/healthz` {n(f.p99, 'ms')}", ratio(c.p99, f.p99), verdict(c.p99 <= 50)])
    floor = r.floor.total.pooled.p50 if r.floor and r.floor.total.samples else float("nan")
    floor_name = f"raw {r.runtime} {n(floor, 'ms')}"
    if r.ttfo:
        for key in sorted(k for k in r.ttfo.total if k[1] == 1):
            s = r.ttfo.total[key].pooled
            rows.append([f"first output p50, 1 visitor, pool {key[0]}", "≤ 150 ms", n(s.p50, "ms"), floor_name,
                         ratio(s.p50, floor), verdict(s.p50 <= 150)])
            if not math.isnan(floor):
                rows.append([f"first output p50, 1 visitor, pool {key[0]}, against the raw floor", "≤ 1/10 of the floor",
                             f"{s.p50 / floor:.3f} of it", floor_name, ratio(s.p50, floor), verdict(s.p50 <= floor / 10)])
        key30 = _thirty_at_once(r.ttfo)
        if key30:
            s = r.ttfo.total[key30].pooled
            fails = r.ttfo.failures[key30]
            rows.append([f"first output p50, 30 concurrent visitors, pool {key30[0]}", f"≤ {THIRTY_AT_ONCE_MS} ms",
                         n(s.p50, "ms") + (f", {fails} failed" if fails else ""), floor_name, ratio(s.p50, floor),
                         verdict(s.p50 <= THIRTY_AT_ONCE_MS and fails == 0)])
    if r.burst:
        b = r.burst
        ok = [v for v in b.visits if v.ok]
        first = [v.total_ms for v in ok[: b.pool]]
        rows.append([f"burst: {b.visitors} visitors over {b.over_s:g} s, pool {b.pool}", "none lost",
                     f"{b.lost} lost; longest wait {n(max((v.claim_ms for v in ok), default=float('nan')) / 1000, 's')}",
                     f"first {b.pool} visitors' first output p50 {n(statistics.median(first) if first else float('nan'), 'ms')}",
                     "–", verdict(b.lost == 0)])
    if r.burst:
        ok = [v for v in r.burst.visits if v.ok]
        over = {kind: _overtaken(ok, kind) for kind in ("api", "browser")}
        rows.append(["burst: visitors overtaken by a later arrival, programs / browsers", "0 / 0",
                     f"{over['api']} / {over['browser']}", "–", "–", verdict(not any(over.values()))])
    if r.fill and "nbpool" in r.fill.rate and r.fill.rate["nbpool"].samples:
        rate, floor_rate = r.fill.rate["nbpool"].pooled.p50, r.fill.rate["floor"].pooled.p50
        rows.append([f"pool fill rate, empty to {r.fill.pool} warm", "≥ 3 /s", n(rate, "/s"),
                     f"by hand {n(floor_rate, '/s')}", ratio(rate, floor_rate), verdict(rate >= 3)])
    if r.lab_load and r.lab_load.load["cold"].samples:
        cold, lab_floor = r.lab_load.load["cold"].pooled.p50, r.lab_load.load["floor"]
        floor_p50 = lab_floor.pooled.p50 if lab_floor.samples else float("nan")
        rows.append(["Launch -> JupyterLab usable in Chromium, cold browser, p50", f"≤ {LAB_MS / 1000:g} s and below the floor",
                     n(cold / 1000, "s"), f"straight from a container {n(floor_p50 / 1000, 's')}", ratio(cold, floor_p50),
                     verdict(cold <= LAB_MS and cold < floor_p50)])
        if r.lab_load.load["returning"].samples:
            back = r.lab_load.load["returning"].pooled.p50
            rows.append(["Launch -> JupyterLab usable, returning browser, p50", f"≤ {LAB_MS / 1000:g} s", n(back / 1000, "s"),
                         "–", ratio(back, floor_p50), verdict(back <= LAB_MS)])
        if r.lab_load.load["notebook cold"].samples:
            nb, nb_floor = r.lab_load.load["notebook cold"].pooled.p50, r.lab_load.load["notebook floor"]
            nb_floor_p50 = nb_floor.pooled.p50 if nb_floor.samples else float("nan")
            rows.append(['Launch -> Notebook 7 usable ("ui": "notebook"), cold browser, p50',
                         f"≤ {LAB_MS / 1000:g} s and below the floor", n(nb / 1000, "s"),
                         f"straight from a container {n(nb_floor_p50 / 1000, 's')}", ratio(nb, nb_floor_p50),
                         verdict(nb <= LAB_MS and nb < nb_floor_p50)])
        if r.lab_load.load["link cold"].samples:
            far, far_floor = r.lab_load.load["link cold"].pooled.p50, _p50_or_nan(r.lab_load.load["link floor"])
            rows.append([f"Launch -> JupyterLab usable, cold browser over a {LINK['mbit_s']} Mbit/s link, p50",
                         "below the floor", n(far / 1000, "s"), f"straight from a container {n(far_floor / 1000, 's')}",
                         ratio(far, far_floor), verdict(far < far_floor)])
    if r.proxy:
        for name in ("sandbox (Jupyter)", "stub server"):
            d, p = r.proxy.latency.get(f"{name}, direct"), r.proxy.latency.get(f"{name}, through Traefik")
            if d and p:
                added = p.pooled.p50 - d.pooled.p50
                rows.append([f"proxy: added per small request, p50 ({name})", "≤ 1 ms", n(added, "ms"),
                             f"direct {n(d.pooled.p50, 'ms')}", ratio(p.pooled.p50, d.pooled.p50), verdict(added <= 1)])
        d, p = r.proxy.throughput.get("stub server, direct"), r.proxy.throughput.get("stub server, through Traefik")
        if d and p:
            rows.append(["proxy: throughput through Traefik (fast backend)", "≥ 3000 req/s", n(p.pooled.p50, "req/s"),
                         f"direct {n(d.pooled.p50, 'req/s')}", ratio(p.pooled.p50, d.pooled.p50),
                         verdict(p.pooled.p50 >= 3000)])
    if r.resources and r.resources.sockets:
        counts = r.resources.sockets
        per = counts.get("client↔proxy (Traefik, entry point)", 0) + counts.get("proxy↔sandbox (Traefik, upstream)", 0)
        rows.append(["TCP connections per open kernel websocket", "2 (DESIGN.md)", n(per),
                     "tmpnb: about 5 sockets", "–", verdict(abs(per - 2) < 0.5)])
    if r.scale and r.scale.memory_load:
        total = sum(r.scale.memory_load[k]["rss"] for k in CONTROL_PLANE if k in r.scale.memory_load)
        base = sum(r.scale.memory_base[k]["rss"] for k in CONTROL_PLANE if k in r.scale.memory_base)
        rows.append([f"control plane RSS with {r.scale.records} sandboxes", "≤ 400 MB", n(total * 1.048576, "MB"),
                     f"same, pool only: {n(base * 1.048576, 'MB')}", ratio(total, base), verdict(total * 1.048576 <= 400)])
    return rows


# ---- sections --------------------------------------------------------------------------------


def _summary_row(label: str, fig: Figure, floor: Figure | None = None, extra: list[str] | None = None) -> list[str]:
    s: Summary = fig.pooled
    row = [label, str(s.n), n(s.p50), n(s.p95), n(s.p99), n(s.max), spread(fig)]
    if floor is not None:
        row += [n(floor.pooled.p50), n(floor.pooled.p99), ratio(s.p50, floor.pooled.p50)]
    return row + (extra or [])


def _claims_section(r: Results, out: list[str]) -> None:
    c = r.claims
    assert c is not None
    out += ["## 1. Claim latency", "",
            (f"`POST /sessions` with a warm pool, through Traefik, {r.sizes.get('claims_per_level')} requests at each "
            f"concurrency (rounds of at most {c.pool}; the pool refilled and the machine quiet before each round). "
            "Each client keeps one warm keep-alive connection. Floor: `GET /healthz` of the same gateway through the "
            "same Traefik at the same concurrency, in rounds interleaved with the claims."),
            "",
            (f"The sandboxes are `bench/stub.py` processes: every claim uses up a sandbox, {3 * int(r.sizes.get('claims_per_level', 0))} "
            "containers would take about ten minutes to start here, and the claim path (gateway → NATS → spawner → "
            "compare-and-set on the KV record → reply) never touches the sandbox. The spawner's capacity equals its "
            "pool, so the claims of a round start no refill (starting sandboxes takes all of 2 cores; that cost is in "
            "sections 2 and 3). The claim under Docker, with real containers around, is the *claim* part of section 2."),
            "",
            "Milliseconds; *runs* is the range of the per-round medians.", "",
            table(["concurrency", "n", "p50", "p95", "p99", "max", "runs", "floor p50", "floor p99", "p50 ratio", "failed"],
                  [_summary_row(str(level), fig, c.healthz[level], [str(c.failures[level])])
                   for level, fig in c.claims.items()]),
            ""]
    if c.cpu_per_claim:
        names = list(next(iter(c.cpu_per_claim.values())))
        rows = [[f"`POST /sessions`, {level} concurrent", *(n(v[k]) for k in names), n(sum(v.values()))]
                for level, v in c.cpu_per_claim.items()]
        rows += [[f"`GET /healthz`, {level} concurrent", *(n(v[k]) for k in names), n(sum(v.values()))]
                 for level, v in c.cpu_per_healthz.items()]
        out += [("CPU time per request, milliseconds, by process (from `/proc`, over the timed rounds). With 2 cores, "
                "the sum bounds the throughput: 2000 ms of CPU a second divided by it. By Little's law, *p50 ≤ 5 ms "
                "at 50 concurrent* asks for about 10,000 claims a second."), "",
                table(["request", *names, "sum"], rows), ""]
    out += ["![claim latency](bench-claims.png)", ""]


def _ttfo_section(r: Results, out: list[str]) -> None:
    t = r.ttfo
    assert t is not None
    floor = r.floor
    out += ["## 2. Time to first output", "",
            ("From sending `POST /sessions` to reading `2` from `1+1` run on the kernel the API returns (`kernel_id`, "
            "the pre-started Welcome notebook kernel), over a websocket opened through Traefik. Each visitor uses a new "
            "connection; visitors of a round arrive together; a `503` is retried after its `Retry-After` (bounded), "
            "and that wait counts. Sessions are ended and the pool refilled between rounds."),
            "",
            (f"Floor: raw {r.runtime} by hand, one at a time on a quiet machine: start the same image with the same "
            "limits on a network made for the bench, poll `/api` every 10 ms, start a kernel, run `1+1` straight to "
            "the container."), "",
            "Milliseconds; ratio = p50 / raw floor p50.", "",
            table(["pool", "visitors at once", "n", "p50", "p95", "p99", "max", "runs", "failed", "503s honoured", "ratio to raw"],
                  [[str(k[0]), str(k[1]), str(f.pooled.n), n(f.pooled.p50), n(f.pooled.p95), n(f.pooled.p99), n(f.pooled.max),
                    spread(f), str(t.failures[k]), str(t.refused[k]),
                    ratio(f.pooled.p50, floor.total.pooled.p50) if floor else "–"] for k, f in sorted(t.total.items())]),
            "", ("Where the time goes (p50 of each part, ms). The last column is a second `1+1` on the same websocket, "
            "once every visitor of the round has seen the first output (so it slows none of them and is not in the CPU "
            "below): the difference is what a kernel's first execution and a new websocket cost."), "",
            table(["pool", "visitors at once", "claim", "websocket open", "execute `1+1`", "a second `1+1`"],
                  [[str(k[0]), str(k[1]), *(n(p.pooled.p50) for p in parts.values())] for k, parts in sorted(t.parts.items())])]
    if t.cpu:
        names = sorted({name for v in t.cpu.values() for name in v}, key=lambda x: ("sandboxes" not in x, x))
        rows = []
        for k, v in sorted(t.cpu.items()):
            whole = sum(v.values())
            rows.append([str(k[0]), str(k[1]), *(n(v.get(name, float("nan"))) for name in names), n(whole),
                         n(_round_needs_ms(whole, k[1]))])
        out += ["", ("CPU per visitor, milliseconds, by where it was spent (sandboxes from their cgroups: the visitors' own, "
                "and the others, that is the idle pool and any that started during the round; processes from `/proc`). "
                f"On {_CORES} cores, a round of *N* visitors needs at least *N* × the sum / {_CORES} of CPU time, the "
                "last column, before its last visitor sees output."), "",
                table(["pool", "visitors at once", *names, "sum", "round needs at least, ms"], rows)]
        out += _why_thirty(r)
    if floor and floor.total.samples:
        out += ["", f"The raw {r.runtime} floor, {floor.total.pooled.n} containers (ms):", "",
                table(["step", "p50", "min", "max"],
                      [[f.name.removeprefix("raw Docker: "), n(f.pooled.p50), n(f.pooled.min), n(f.pooled.max)]
                       for f in [*floor.parts.values(), floor.total]])]
    if t.errors:
        out += ["", "Failures: " + "; ".join(sorted({e[:160] for e in t.errors}))]
    if r.warm_s:
        out += ["", "Warming the pools took: " + ", ".join(f"{k} {n(v, 's')}" for k, v in r.warm_s.items()) + "."]
    out += ["", "![time to first output](bench-first-output.png)", ""]


def _thirty_at_once(t: TTFOResults) -> tuple[int, int] | None:
    """The round of 30 visitors at once with the largest pool, if the run had one."""
    return next((k for k in sorted(t.total, reverse=True) if k[1] == 30), None)


def _round_needs_ms(cpu_per_visitor_ms: float, visitors: int) -> float:
    """The least time a round of ``visitors`` can take on this machine's cores, from its CPU per visitor."""
    return cpu_per_visitor_ms * visitors / _CORES


def _why_thirty(r: Results) -> list[str]:
    """Why first output at 30 at once misses its target, from this run's CPU per visitor; nothing if met."""
    t = r.ttfo
    assert t is not None
    key = _thirty_at_once(t)
    if key is None or key not in t.cpu or t.total[key].pooled.p50 <= THIRTY_AT_ONCE_MS:
        return []
    per = sum(t.cpu[key].values())
    own = t.cpu[key].get(VISITORS_SANDBOXES, float("nan"))
    allowed = THIRTY_AT_ONCE_MS * _CORES / 30
    return ["", (f"**Why {THIRTY_AT_ONCE_MS} ms at 30 at once is missed.** The round is CPU-bound: each visitor cost "
                 f"{n(per, 'ms')} of CPU summed over every process ({n(own, 'ms')} of it in the visitor's own sandbox: "
                 "Jupyter accepting the kernel websocket, connecting it to the kernel, the first execute), so 30 of "
                 f"them need {n(30 * per, 'ms')} of CPU, at least {n(_round_needs_ms(per, 30), 'ms')} on {_CORES} cores before "
                 f"the last sees output; the p50 was {n(t.total[key].pooled.p50, 'ms')}. A p50 of "
                 f"{THIRTY_AT_ONCE_MS} ms with every visitor served alike needs at most {n(allowed, 'ms')} per visitor "
                 f"in all, or {n(30 * per / THIRTY_AT_ONCE_MS)} cores at this cost. What would close it: a "
                 "cheaper kernel connection inside the sandbox (most of the sum is Jupyter's own path: a new "
                 "connection creates four ZMQ sockets, a close starts a message buffer), or more cores.")]


def _burst_section(r: Results, out: list[str]) -> None:
    b = r.burst
    assert b is not None
    ok = [v for v in b.visits if v.ok]
    waited = [v for v in ok if v.refused or v.claim_ms > 1000]
    waits = [v.claim_ms / 1000 for v in ok]
    totals = [v.total_ms / 1000 for v in ok]
    first = [v.total_ms for v in ok[: b.pool]]
    later = [v.total_ms for v in ok[b.pool:]]
    stats_ms = [sample[5] for sample in b.pool_over_time if len(sample) > 5]
    answered = f"{n(statistics.median(stats_ms), 'ms')} / {n(max(stats_ms), 'ms')}" if stats_ms else "–"
    sent = [ms for ms in b.late_ms if ms == ms]
    late = f"{n(statistics.median(sent), 'ms')} / {n(max(sent), 'ms')}" if sent else "–"
    out += ["## 3. Burst", "",
            (f"{b.visitors} visitors arrive evenly over {b.over_s:g} s at a warm pool of {b.pool} (room for all), "
            "alternately a program (`POST /sessions` with `{\"wait\": …}`: it waits in line) and a browser (`GET /spawn`, "
            "then its waiting page's place in line until it is sent on). Each then runs `1+1` through the proxy; "
            "sessions stay open until all are done. `/api/stats` is sampled twice a second."), "",
            table(["", "value"], [
                ["served", f"{len(ok)} of {b.visitors}"],
                ["lost", str(b.lost)],
                ["wait until the sandbox is theirs, median / p95 / max", f"{n(statistics.median(waits), 's')} / {n(_p(waits, 95), 's')} / {n(max(waits), 's')}" if waits else "–"],
                ["time to first output, median / p95 / max", f"{n(statistics.median(totals), 's')} / {n(_p(totals, 95), 's')} / {n(max(totals), 's')}" if totals else "–"],
                [f"first output of the first {b.pool} (warm) visitors, p50 (floor)", n(statistics.median(first), "ms") if first else "–"],
                ["first output of the others, p50", n(statistics.median(later), "ms") if later else "–"],
                ["visitors told to come back (`503`) at least once", str(sum(1 for v in ok if v.refused))],
                ["`503`s honoured in all", str(sum(v.refused for v in b.visits))],
                ["visitors who waited more than 1 s", str(len(waited))],
                ["visitors overtaken by a later arrival (by more than 1 s): programs / browsers",
                 f"{_overtaken(ok, 'api')} / {_overtaken(ok, 'browser')}"],
                ["`GET /api/stats` answered in, median / max (how busy the gateway was)", answered],
                ["visitors sent late by the bench's own client, median / max", late],
                ["the whole burst took", n(b.took_s, "s")],
            ])]
    overtaken = _overtakers(ok)
    if overtaken:
        out += ["", ("**Overtaken, and by whom** (arrivals by the bench's clock: when each visitor's first request "
                     "was sent, on a connection already open; the last column is the slowest answer to "
                     "`/api/stats` sent within a second of the two arrivals):"), "",
                table(["overtaken", "arrived, s", "got it, s", "overtaken by", "arrived later by, ms", "got it, s",
                       "gateway answered in, ms"],
                      [[a.kind, n(a.arrived - ok[0].arrived), n(_got(a) - ok[0].arrived),
                        by.kind, n((by.arrived - a.arrived) * 1000), n(_got(by) - ok[0].arrived),
                        n(_answered_near(b, a.arrived, by.arrived))]
                       for a, by in overtaken[:10]]),
                "", _why_overtaken(b, overtaken)]
    errors = [v.error for v in b.visits if not v.ok]
    if errors:
        out += ["", "Lost visitors: " + "; ".join(sorted({e[:160] for e in errors}))]
    out += ["", "![burst](bench-burst.png)", ""]


def _answered_near(b: BurstResults, *times: float) -> float:
    """The slowest answer to ``/api/stats`` (ms) sent within a second of any of ``times`` (burst
    seconds), or NaN without such a sample."""
    near = [sample[5] for sample in b.pool_over_time
            if len(sample) > 5 and any(abs(sample[0] - t) <= 1.0 for t in times)]
    return max(near, default=float("nan"))


def _why_overtaken(b: BurstResults, overtaken: list[tuple[Any, Any]]) -> str:
    """Why, from the run's figures: visitors sent closer together than the gateway then took to
    answer were taken up together, in no particular order; any others lost their order in nbpool."""
    together = [(a, by) for a, by in overtaken if (by.arrived - a.arrived) * 1000 < _answered_near(b, a.arrived, by.arrived)]
    inside = len(overtaken) - len(together)
    spacing = b.over_s / b.visitors * 1000
    late = max((ms for ms in b.late_ms if ms == ms), default=float("nan"))
    said = (f"**Why**: {len(together)} of the {len(overtaken)} were sent closer together than the gateway then took "
            "to answer a request: both waited for its busy event loop, which took them up in the order it found them "
            "ready, not the order they were sent; the line's order is the order the gateway takes launches up in. "
            f"Visitors due {n(spacing, 'ms')} apart are sent that close when the bench's own client falls behind "
            f"its schedule (by up to {n(late, 'ms')} in this run; it shares the cores with what it measures).")
    if inside:
        said += (f" **{inside}** were sent further apart than that: their order was lost inside nbpool, a bug "
                 "(the gateway's log says whom the line served when).")
    return said + (" What would close it: a client on schedule and a gateway that answers within milliseconds "
                   "while sandboxes start (other cores for the visitors' clients and the control plane).")


def _overtaken(visits: list[Any], kind: str | None = None) -> int:
    """Visitors (of ``kind``, or all) who got their sandbox more than a second after someone,
    of either kind, who arrived after them."""
    return sum(1 for v, _ in _overtakers(visits) if kind is None or getattr(v, "kind", "api") == kind)


def _got(visit: Any) -> float:
    """When a visitor got their sandbox (the bench's clock)."""
    return float(visit.arrived + visit.claim_ms / 1000)


def _overtakers(visits: list[Any]) -> list[tuple[Any, Any]]:
    """Each overtaken visitor (in order of arrival) with the earliest later arrival that got its
    sandbox more than a second before it."""
    pairs = []
    for i, v in enumerate(visits):
        first = next((w for w in visits[i + 1:] if w.arrived > v.arrived and _got(w) < _got(v) - 1), None)
        if first is not None:
            pairs.append((v, first))
    return pairs


def _p(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


def _proxy_section(r: Results, out: list[str]) -> None:
    p = r.proxy
    assert p is not None
    rows = []
    for name in ("sandbox (Jupyter)", "stub server"):
        d, t = p.latency.get(f"{name}, direct"), p.latency.get(f"{name}, through Traefik")
        if d and t:
            rows.append([f"`GET /api`, {name}", n(d.pooled.p50), n(t.pooled.p50), n(t.pooled.p50 - d.pooled.p50),
                         n(d.pooled.p99), n(t.pooled.p99), f"{spread(d)}; {spread(t)}"])
    d, t = p.websocket.get("direct"), p.websocket.get("through Traefik")
    if d and t:
        rows.append(["kernel websocket, `1+1` round trip", n(d.pooled.p50), n(t.pooled.p50), n(t.pooled.p50 - d.pooled.p50),
                     n(d.pooled.p99), n(t.pooled.p99), f"{spread(d)}; {spread(t)}"])
    trows = []
    for name in ("sandbox (Jupyter)", "stub server"):
        d2, t2 = p.throughput.get(f"{name}, direct"), p.throughput.get(f"{name}, through Traefik")
        if d2 and t2:
            trows.append([name, n(d2.pooled.p50), n(t2.pooled.p50), ratio(t2.pooled.p50, d2.pooled.p50),
                          f"{spread(d2)}; {spread(t2)}", str(p.errors.get(d2.name, 0) + p.errors.get(t2.name, 0))])
    out += ["## 4. The proxy", "",
            ("Each request straight to the server (the floor: no proxy at all) and through Traefik at the sandbox's own "
            "origin (`http://<id>.sb.localhost:<port>/api`, as visitors reach it), in alternating blocks "
            "on one keep-alive connection. Two servers: a real sandbox (Jupyter in its container, limited to one CPU) and "
            "`bench/stub.py`, routed by a synthetic sandbox record exactly as sandboxes are, which answers faster than "
            "the proxy can pass requests, so the proxy's own capacity shows."), "",
            "Latency, milliseconds:", "",
            table(["request", "direct p50", "Traefik p50", "added p50", "direct p99", "Traefik p99", "runs (direct; Traefik)"], rows),
            "", f"Throughput, requests per second ({p.tool}, alternating direct and proxied):", "",
            table(["server", "direct", "through Traefik", "ratio", "runs (direct; Traefik)", "errors"], trows),
            "", "![proxy](bench-proxy.png)", ""]


def _resources_section(r: Results, out: list[str]) -> None:
    out += ["## 5. Sockets and memory", ""]
    if r.resources and r.resources.sockets:
        res = r.resources
        out += [(f"{res.websockets_open} visitors each hold one kernel websocket open through Traefik; established TCP "
                "connections counted from `/proc` before and after, per websocket (each connection is a socket at "
                "each end):"), "",
                table(["where", "per websocket"], [[k, n(v)] for k, v in res.sockets.items()]), ""]
    if r.memory_idle:
        rows = [[k, n(v["rss"]), n(v["pss"])] for k, v in r.memory_idle.items()]
        total = [sum(r.memory_idle[k][m] for k in CONTROL_PLANE if k in r.memory_idle) for m in ("rss", "pss")]
        rows.append(["**control plane** (NATS, Traefik, 4 services)", n(total[0]), n(total[1])])
        out += [("Memory of nbpool's processes with a warm pool, MiB (PSS splits shared pages among the processes "
                "that share them):"), "", table(["process", "RSS", "PSS"], rows), ""]
    if r.resources and r.resources.sandbox_mib:
        m = r.resources.sandbox_mib
        out += [(f"Idle warm sandbox (Jupyter server and its pre-started kernel), as its cgroup counts it: median "
                f"{n(statistics.median(m), 'MiB')} over {len(m)} sandboxes (range {n(min(m))}–{n(max(m))})."), ""]


def _scale_section(r: Results, out: list[str]) -> None:
    assert r.scale is not None
    _scale_tables(r.scale, out, "## 6. The control plane at scale", "(NATS, Traefik, 4 services)", plot=True)


def _control_plane(name: str) -> bool:
    """Whether a process is of the control plane (in a cluster: "nats b1", "spawner h2" ...)."""
    return name.split()[0] in CONTROL_PLANE


def _scale_tables(s: ScaleResults, out: list[str], title: str, what: str, plot: bool) -> None:
    rows = []
    for name in s.cpu_load:
        base, load = s.cpu_base.get(name), s.cpu_load[name]
        rows.append([name, n(base.pooled.p50) if base else "–", n(load.pooled.p50), spread(load),
                     ratio(load.pooled.p50, base.pooled.p50) if base else "–"])
    mem = [[k, n(s.memory_base.get(k, {}).get("rss", float("nan"))), n(v["rss"]), n(v["pss"])]
           for k, v in s.memory_load.items()]
    for label, metric in ((f"**control plane** {what}", "rss"),):
        mem.append([label, n(sum(v[metric] for k, v in s.memory_base.items() if _control_plane(k))),
                    n(sum(v[metric] for k, v in s.memory_load.items() if _control_plane(k))),
                    n(sum(v["pss"] for k, v in s.memory_load.items() if _control_plane(k)))])
    owners = "a spawner id no spawner has" if s.hosts == 1 else f"{s.hosts} spawner ids no spawner has, in turn"
    out += [title, "",
            (f"{s.records} synthetic sandbox records (claimed, owned by {owners}, each beating as a spawner would, pointing at "
            "`bench/stub.py`) are written to the instance's KV bucket in batches of "
            f"{s.batch}; the router routes and probes every one through Traefik. Then an activity heartbeat for each "
            f"every 5 s, and CPU per process over {n(s.window_s, 's')} in 5-second slices, against a baseline of the "
            "same cluster with its pool only. Route propagation: from writing one more record to the first request "
            "through Traefik that reaches its server (and from deleting it to the first that no longer does). The "
            "synthetic records are deleted afterwards."), "",
            "CPU, % of one core (median of the 5-second slices):", "",
            table(["process", "baseline", f"{s.records} records + heartbeats", "slices", "ratio"], rows), "",
            table(["", "value"], [
                [f"{s.records} records routed and ready", (f"{s.routed} in {n(sum(s.batch_s), 's')} "
                 f"(batches of {s.batch}: first {n(s.batch_s[0], 's') if s.batch_s else '–'}, last {n(s.batch_s[-1], 's') if s.batch_s else '–'})")],
                ["route propagation p50 / max, pool only (floor)", f"{n(s.propagation_base.pooled.p50, 'ms')} / {n(s.propagation_base.pooled.max, 'ms')}"],
                [f"route propagation p50 / max, {s.records} routes", (f"{n(s.propagation_load.pooled.p50, 'ms')} / {n(s.propagation_load.pooled.max, 'ms')} "
                 f"({ratio(s.propagation_load.pooled.p50, s.propagation_base.pooled.p50)} the floor)")],
                [f"route removal p50 / max, {s.records} routes", f"{n(s.removal_load.pooled.p50, 'ms')} / {n(s.removal_load.pooled.max, 'ms')}"],
                ["propagation probes that timed out (15 s)", str(s.timeouts)],
                [f"writing {s.records} heartbeats, p50", n(s.heartbeat_burst.pooled.p50, "ms")],
                ["synthetic routes gone after deleting the records", n(s.cleanup_s, "s")],
            ]), "",
            "Memory, MiB:", "", table(["process", "RSS, pool only", f"RSS, {s.records} records", f"PSS, {s.records} records"], mem),
            ""]
    if plot:
        out += ["![control plane at scale](bench-scale.png)", ""]


def _p50(figures: dict[str, Figure], runtime: str) -> float:
    fig = figures.get(runtime)
    return fig.pooled.p50 if fig is not None else float("nan")


def _gvisor_meaning(g: GVisorResults) -> str:
    """What the runsc / runc ratios mean for visitors and for the pool, from this run's figures."""
    said = []
    start, ttfo = (_p50(g.start_s, "runsc"), _p50(g.start_s, "runc")), (_p50(g.first_output, "runsc"), _p50(g.first_output, "runc"))
    if not any(math.isnan(x) for x in start):
        how = ("about as long" if 0.9 <= start[0] / start[1] <= 1.1 else f"{ratio(*start)} as long") if start[1] else "–"
        said.append(f"A sandbox took {how} to start under gVisor as under runc ({n(start[0], 's')} against "
                    f"{n(start[1], 's')}, while both pools filled at once). Start time is hidden from visitors by the "
                    "warm pool: it decides how fast a pool refills, so how long visitors beyond the pool wait in a "
                    "burst, not the wait of a visitor who finds a warm sandbox.")
    if not any(math.isnan(x) for x in ttfo):
        deltas = {name: _p50(g.parts.get("runsc", {}), name) - _p50(g.parts.get("runc", {}), name)
                  for name in g.parts.get("runsc", {})}
        known = {k: v for k, v in deltas.items() if not math.isnan(v)}
        most = max(known, key=lambda k: known[k]) if known else ""
        said.append(f"What that visitor feels is the first output: {n(ttfo[0], 'ms')} under gVisor against "
                    f"{n(ttfo[1], 'ms')} under runc ({ratio(*ttfo)}, {n(ttfo[0] - ttfo[1], 'ms')} more)"
                    + (f", most of the difference in the {most} ({n(known[most], 'ms')})." if most and known[most] > 0 else "."))
    mem = [statistics.median(g.memory_mib[k]) if g.memory_mib.get(k) else float("nan") for k in ("runsc", "runc")]
    if not any(math.isnan(x) for x in mem) and mem[0] > 0:
        said.append(f"An idle gVisor sandbox holds {ratio(*mem)} the memory of a runc one ({n(mem[0], 'MiB')} against "
                    f"{n(mem[1], 'MiB')}), so the same memory keeps about {mem[1] / mem[0]:.2f} as many warm.")
    return " ".join(said)


def _gvisor_section(r: Results, out: list[str]) -> None:
    g = r.gvisor
    assert g is not None
    out += ["## 7. gVisor (runsc) beside runc", "",
            (f"One cluster with two profiles of {g.pool} warm sandboxes each, with the same image and limits (read-only "
            "root, tmpfs home, memory, CPU, pids): `default` under the engine's default runtime, runc, and `gvisor` "
            "with `\"runtime\": \"runsc\"`, whose sandboxes run on gVisor's own kernel, in user space, instead of "
            "straight on the host's" + (f" (runsc here: {g.runsc})" if g.runsc else "") + ". *Start*: each sandbox of "
            "the first fill, from the spawner beginning its start until it is warm (Jupyter answering, kernel "
            "pre-started, routed: the `sandbox.warm` event), both pools filling at once, the spawner alternating "
            f"between them, all at the normal CPU share. *First output*: {g.pool - 1} visitors per runtime, one at a "
            "time, alternating runtimes, after one untimed visitor each (the first requests through a fresh gateway "
            "and proxy are slower), as in section 2 but claiming with `{\"profile\": …}`; no refill runs behind "
            "them (the spawner's capacity is the two pools). *Idle memory*: each warm sandbox's container as its "
            "cgroup counts it (as in section 5), which under gVisor includes its Sentry and gofer. The floor is "
            "runc, in the same run."), ""]
    if g.missing:
        partly = bool(g.start_s or g.memory_mib or g.first_output)
        out += [f"**{'Not all' if partly else 'Nothing'} measured in this run**: {g.missing}.", ""]
    if not (g.start_s or g.memory_mib or g.first_output):
        return

    def row(label: str, runc: float, runsc: float, unit_n: str = "") -> list[str]:
        return [label, n(runc), n(runsc), ratio(runsc, runc)] + ([unit_n] if unit_n else [""])

    def median(values: list[float] | None) -> float:
        return statistics.median(values) if values else float("nan")

    def count(figures: dict[str, Figure]) -> str:
        return " / ".join(str(figures[k].pooled.n) if k in figures else "–" for k in ("runc", "runsc"))

    rows = [
        row("start → warm, p50, s", _p50(g.start_s, "runc"), _p50(g.start_s, "runsc"), count(g.start_s)),
        row("start → warm, max, s", *(g.start_s[k].pooled.max if k in g.start_s else float("nan") for k in ("runc", "runsc"))),
        row("start → Jupyter answers, p50, s", _p50(g.answered_s, "runc"), _p50(g.answered_s, "runsc"), count(g.answered_s)),
        row("time to first output, p50, ms", _p50(g.first_output, "runc"), _p50(g.first_output, "runsc"), count(g.first_output)),
        row("time to first output, max, ms",
            *(g.first_output[k].pooled.max if k in g.first_output else float("nan") for k in ("runc", "runsc"))),
        *(row(f"– {name}, p50, ms", _p50(g.parts.get("runc", {}), name), _p50(g.parts.get("runsc", {}), name))
          for name in g.parts.get("runc", {})),
        row("idle memory per sandbox, median, MiB", median(g.memory_mib.get("runc")), median(g.memory_mib.get("runsc")),
            " / ".join(str(len(g.memory_mib.get(k, []))) for k in ("runc", "runsc"))),
    ]
    out += [table(["", "runc", "runsc (gVisor)", "runsc / runc", "n (runc / runsc)"], rows), ""]
    failed_starts = {k: v for k, v in g.start_failures.items() if v}
    if failed_starts or g.errors:
        out += [("Failures: " + "; ".join(
            [f"{len(v)} {k} starts ({'; '.join(sorted(set(v)))[:300]})" for k, v in failed_starts.items()]
            + [f"{k}: {v} visitors" for k, v in g.failures.items() if v]
            + sorted({e[:160] for e in g.errors})) + "."), ""]
    meaning = _gvisor_meaning(g)
    if meaning:
        out += [f"**What it means.** {meaning}", ""]
    if not math.isnan(g.fill_s):
        out += [f"Filling both pools ({g.pool} + {g.pool}) took {n(g.fill_s, 's')}.", ""]
    if g.first_output:
        out += ["![gVisor beside runc](bench-gvisor.png)", ""]


# ---- the document ---------------------------------------------------------------------------------


def _hosts_section(r: Results, out: list[str]) -> None:
    h = r.hosts
    assert h is not None
    out += ["## 8. Several hosts", "",
            ("A cluster on this machine's loopback, made as the README's *Several machines* says: `nbpool cluster init`, "
             "three `nbpool up --role bus` (NATS JetStream, TLS, 3 replicas of everything), `--role host` per sandbox "
             f"host (stub sandboxes, a pool of {h.pool} each) and `--role proxy`. Claims: `POST /sessions` through "
             "Traefik with one host, then with a second one added, in the same run (the one-host figure is the "
             "floor of the two-host one); `GET /healthz` through the same Traefik is each one's own floor."), ""]
    one, two = h.claims.get(1), h.claims.get(2)
    if one and two:
        rows = []
        for level in sorted(one.claims):
            a, b = one.claims[level], two.claims.get(level)
            if b is None:
                continue
            rows.append([f"{level} concurrent", n(a.pooled.p50, "ms"), n(a.pooled.p99, "ms"), n(b.pooled.p50, "ms"),
                         n(b.pooled.p99, "ms"), ratio(b.pooled.p50, a.pooled.p50), n(one.healthz[level].pooled.p50, "ms"),
                         str(one.failures.get(level, 0) + two.failures.get(level, 0))])
        out += [table(["claims", "1 host p50", "1 host p99", "2 hosts p50", "2 hosts p99", "2 / 1 (p50)",
                       "healthz p50 (floor)", "failed"], rows), ""]
    out += [("Failover, with the default settings (a heartbeat every "
             f"{h.heartbeat_s:g} s, `NBPOOL_HOST_TIMEOUT` {h.host_timeout_s:g} s): a host's spawner, or the bus node "
             "leading the sessions' bucket, gets SIGKILL and stays dead; medians over the runs."), "",
            table(["", "median", "runs", "floor"], [
                ["host killed → the gateway sends it no more claims", n(h.host_gone.pooled.p50, "s"), spread(h.host_gone),
                 f"{h.host_timeout_s:g} s timeout, less the time since its last heartbeat"],
                ["host killed → its sessions ended (`host.lost`)", n(h.host_ended.pooled.p50, "s"), spread(h.host_ended),
                 "the same, plus the culler's look (every 1 s)"],
                ["bus leader killed → first successful claim", n(h.leader_claim.pooled.p50, "s"), spread(h.leader_claim),
                 f"a launch with every node up: {n(h.launch_floor.pooled.p50 * 1000, 'ms')}"],
            ]), ""]
    if one and h.sync_always:
        always, rows = h.sync_always, []
        for level in sorted(one.claims):
            if level in always.claims:
                slow, fast = always.claims[level].pooled, one.claims[level].pooled
                rows.append([f"{level} concurrent", n(fast.p50, "ms"), n(fast.p99, "ms"), n(slow.p50, "ms"),
                             n(slow.p99, "ms"), ratio(slow.p50, fast.p50), str(always.failures.get(level, 0))])
        out += [("What `cluster init --sync always` costs (every node flushes each write to disk before it acknowledges): "
                 "the same claims, one host, on a second bus made with it, beside the default bus above (which flushes "
                 "every 2 minutes). A write is acknowledged once two of the three nodes have flushed it; here all three "
                 "flush to one disk and compete for it, where three machines would each have their own."), "",
                table(["claims", "default p50", "default p99", "`always` p50", "`always` p99", "always / default (p50)",
                       "failed"], rows), ""]
    if h.scale is not None:
        _scale_tables(h.scale, out, f"### The control plane, {h.scale.hosts} hosts × {h.scale.records} records",
                      "(3 NATS nodes, Traefik, gateway, router, culler, 3 spawners)", plot=False)
    if h.ttfo.get(1) and h.ttfo.get(2):
        t1, t2 = h.ttfo[1], h.ttfo[2]
        rows = []
        for key in sorted(t1.total):
            if key in t2.total:
                x, y = t1.total[key].pooled, t2.total[key].pooled
                rows.append([str(key[1]), n(x.p50), n(x.p95), n(y.p50), n(y.p95), ratio(y.p50, x.p50),
                             n(t1.parts[key]["claim"].pooled.p50), n(t2.parts[key]["claim"].pooled.p50),
                             n(sum(t1.cpu.get(key, {}).values())), n(sum(t2.cpu.get(key, {}).values())),
                             str(t1.failures[key] + t2.failures[key])])
        out += ["", "### First output with real sandboxes, one host against two", "",
                (f"As in section 2 (the same client; milliseconds), on this cluster with Docker sandboxes of the notebook "
                 f"image: {h.ttfo_pool} warm on one host starting up to 4 at once, then {h.ttfo_pool // 2} on each of two "
                 "starting up to 2 at once each (both hosts' spawners use this machine's one Docker engine and its 2 "
                 "cores, so the second host adds no capacity here: the ratio is what spreading over hosts costs, with "
                 "the bus's TLS and 3 replicas in both)."), "",
                table(["visitors at once", "1 host p50", "1 host p95", "2 hosts p50", "2 hosts p95", "2 / 1 (p50)",
                       "claim p50, 1 host", "claim p50, 2 hosts", "CPU per visitor, 1 host", "CPU per visitor, 2 hosts",
                       "failed"], rows),
                "", ("CPU per visitor: milliseconds summed over every process and sandbox during the round, refills "
                     "included (as in section 2).")]
        errors = sorted({e[:160] for e in [*t1.errors, *t2.errors]})
        if errors:
            out += ["", "Failures: " + "; ".join(errors)]
        out += [""]
    out += [f"> {note}" for note in h.notes]


def _snapshots_section(r: Results, out: list[str]) -> None:
    s = r.snapshots
    assert s is not None
    sizes = ", ".join(f"{label} ({n(b / 1000, 'kB')})" for label, b in s.notebook_bytes.items()) or "about 100 KB and 2 MB"
    out += ["## 9. Snapshots", "",
            (f"An author's session holds two notebooks made for the bench, {sizes}: many code cells with text outputs "
             "and a few PNG images, put there with the contents API. Every publish is of new content (a line of the "
             "first cell changes, untimed, before it), so it is a new notebook on the bus and a new snapshot id. "
             "*Publish*: `POST /sessions/{id}/snapshots` through Traefik (the gateway reads the notebook from the "
             "sandbox, validates it with nbformat, stores it in the bus's object store); its floor is the same "
             "sandbox's plain `GET api/contents/<path>` of that notebook through Traefik, alternating with it. "
             "*View, cold*: the first `GET` of a new snapshot's `view_url` (its own origin, through Traefik, gzip "
             "accepted as a browser does: read from the bus, rendered by nbconvert); floor: `GET "
             "/snapshots/{id}/notebook` of the same snapshot (the same read from the bus, the notebook sent, no "
             "rendering). *View, cached*: the page again (kept "
             "in the gateway's memory); floor: `GET /snapshots/{id}`, the snapshot's record alone, alternating. "
             f"{s.runs} round{'s' if s.runs != 1 else ''}, the sizes in turn; *runs* is the range of the per-round "
             "medians. Read the ratios: what publishing or rendering adds to moving the bytes."), "",
            "Milliseconds:", ""]
    rows = []
    pairs = (("publish", s.publish, s.read_floor, "`GET api/contents/<path>`"),
             ("view, cold (render)", s.view_cold, s.download, "`GET /snapshots/{id}/notebook`"),
             ("view, cached", s.view_cached, s.info, "`GET /snapshots/{id}`"))
    for label in s.notebook_bytes or s.publish:
        for what, figures, floors, floor_name in pairs:
            fig, floor = figures.get(label), floors.get(label)
            if fig is None or not fig.samples:
                continue
            f50 = floor.pooled.p50 if floor is not None and floor.samples else float("nan")
            rows.append([f"{what}, {label}", str(fig.pooled.n), n(fig.pooled.p50), n(fig.pooled.p95), n(fig.pooled.max),
                         spread(fig), floor_name, n(f50), ratio(fig.pooled.p50, f50)])
        reads = s.gateway_reads.get(label)
        if reads is not None and reads.samples:
            rows.append([f"– the gateway's two reads of the sandbox, by hand, {label}", str(reads.pooled.n),
                         n(reads.pooled.p50), n(reads.pooled.p95), n(reads.pooled.max), spread(reads), "", "", ""])
    out += [table(["request", "n", "p50", "p95", "max", "runs", "floor (same run)", "floor p50", "p50 ratio"], rows), "",
            ("*The gateway's two reads, by hand*: what the gateway asks of the sandbox when publishing (`?content=0`, "
             "then the file as text), sent by the bench through Traefik; the publish less these is the checking and "
             "the storing (the gateway itself reaches the sandbox without Traefik).")]
    if s.page_bytes:
        out += ["", "The rendered pages (asked for as a browser does, accepting gzip): " + ", ".join(
            f"{label} {n(b / 1000, 'kB')}, {n(s.page_sent.get(label, b) / 1000, 'kB')} sent" for label, b in s.page_bytes.items())
                + "."]
    plain = s.remix.get("plain")
    out += ["", (f"*Remix*: from `POST /sessions {{\"snapshot\": id}}` (a warm sandbox claimed and the notebook written "
                 "into it with the contents API before the answer) to the result of `1+1` on the session's pre-started "
                 "kernel over a websocket through Traefik, timed as in section 2; the floor is a plain `POST /sessions` "
                 f"timed the same way. One visitor at a time, the kinds in turn (the order rotating), {s.pool} warm "
                 "sandboxes and no refill behind the visitors of a round (the spawner's capacity is the pool and the "
                 "author's sandbox); between rounds the sessions are ended and the pool refilled. Each remixed session "
                 "is checked afterwards, untimed, to hold the notebook at its size."), "", "Milliseconds:", ""]
    rrows = []
    for kind in SNAPSHOT_KINDS:
        fig = s.remix.get(kind)
        if fig is None:
            continue
        parts = s.remix_parts.get(kind, {})
        p50 = fig.pooled.p50
        base = plain.pooled.p50 if plain is not None and plain.samples else float("nan")
        rrows.append([kind if kind == "plain" else f"{kind} (snapshot of the {kind.removeprefix('remix ')} notebook)",
                      str(fig.pooled.n), n(p50), n(fig.pooled.p95), n(fig.pooled.max), spread(fig),
                      *(n(parts[name].pooled.p50) if name in parts else "–" for name in ("claim", "websocket open", "execute 1+1")),
                      "–" if kind == "plain" else n(p50 - base), "–" if kind == "plain" else ratio(p50, base),
                      str(s.failures.get(kind, 0))])
    out += [table(["visitor", "n", "p50", "p95", "max", "runs", "claim p50", "websocket open p50", "execute `1+1` p50",
                   "p50 − plain", "ratio to plain", "failed"], rrows), ""]
    if s.stored_after:
        first, last = s.stored_after[0] - s.stored_before, s.stored_after[-1] - s.stored_after[0]
        srows = [["the notebook", n(s.same_bytes / 1000, "kB")],
                 ["the stream before", n(s.stored_before / 1000, "kB")],
                 ["grown with the first publish", f"{n(first / 1000, 'kB')} ({ratio(first, s.same_bytes)} the notebook)"],
                 [f"grown with the {len(s.stored_after) - 1} publishes after it", n(last / 1000, "kB")],
                 ["publishing the same notebook again, p50", n(s.republish.pooled.p50, "ms")]]
        if s.distinct_bytes:
            srows.append([f"the stream before, against the {s.distinct} distinct notebooks published until then "
                          f"({n(s.distinct_bytes / 1000, 'kB')})", f"{ratio(s.stored_before, s.distinct_bytes)} their bytes"])
        out += [(f"*Storage*: the bytes of the object store's stream (`OBJ_<instance>_snapshots`, read as the operator) "
                 f"before and after publishing one new {s.same_label} notebook {len(s.stored_after)} times (each publish a "
                 "snapshot of its own): the bus should hold one copy."), "",
                table(["", "value"], srows), ""]
    meaning = _snapshots_meaning(s)
    if meaning:
        out += [f"**What it means.** {meaning}", ""]
    said = []
    if s.warmup_ms:
        said.append("Untimed, before the rest: " + ", ".join(f"{k} {n(v, 'ms')}" for k, v in s.warmup_ms.items()) + ".")
    if not math.isnan(s.fill_s):
        said.append(f"Warming the pool of {s.pool} took {n(s.fill_s, 's')}"
                    + (f"; refilling it between rounds {', '.join(n(x, 's') for x in s.refill_s)}" if s.refill_s else "")
                    + ".")
    if said:
        out += [" ".join(said), ""]
    if s.errors:
        out += ["Failures: " + "; ".join(sorted({e[:200] for e in s.errors})), ""]
    out += ["To measure only this: `.venv/bin/python bench/run.py --only snapshots --out /tmp/b` (add `--quick` for a "
            "small version).", ""]


def _snapshots_meaning(s: SnapshotResults) -> str:
    """The snapshot figures in a few sentences, from this run's own numbers."""
    said = []

    def p50(figures: dict[str, Figure], label: str) -> float:
        fig = figures.get(label)
        return fig.pooled.p50 if fig is not None and fig.samples else float("nan")

    labels = list(s.notebook_bytes)
    publish = [f"{n(p50(s.publish, label), 'ms')} for {label} ({ratio(p50(s.publish, label), p50(s.read_floor, label))} "
               "reading it)" for label in labels if not math.isnan(p50(s.publish, label))]
    if publish:
        said.append("Publishing takes " + " and ".join(publish) + ".")
    big = labels[-1] if labels else ""
    cold, cached = p50(s.view_cold, big), p50(s.view_cached, big)
    if not math.isnan(cold):
        said.append(f"The first view of a snapshot is the costly request: {n(cold, 'ms')} for the {big} notebook, "
                    f"{ratio(cold, p50(s.download, big))} reading it from the bus, paid once per gateway process "
                    f"(its visitor waits for it); after that {n(cached, 'ms')}.")
    plain = s.remix.get("plain")
    if plain is not None and plain.samples:
        extra = []
        for kind, fig in s.remix.items():
            if kind == "plain" or not fig.samples:
                continue
            later = fig.pooled.p50 - plain.pooled.p50
            claim = p50(s.remix_parts.get(kind, {}), "claim") - p50(s.remix_parts.get("plain", {}), "claim")
            extra.append(f"{n(later, 'ms')} ({kind.removeprefix('remix ')}; its claim {n(claim, 'ms')} longer)")
        if extra:
            said.append("A remix reaches its first output " + " and ".join(extra) + " later than a plain launch; the "
                        "claim is the answer to `POST /sessions`, which for a remix reads the notebook from the bus "
                        "and writes it into the sandbox first.")
    if len(s.stored_after) > 1:
        grew = s.stored_after[-1] - s.stored_after[0]
        said.append(f"Publishing the same notebook {len(s.stored_after)} times " + (
            "left one copy on the bus." if grew == 0 else f"grew the stream by {n(grew / 1000, 'kB')} after the first."))
    return " ".join(said)


def _embed_section(r: Results, out: list[str]) -> None:
    e = r.embed
    assert e is not None
    out += ["## 10. Embedding: a thebe page", "",
            (f"docs/embed-example.html (one `print(6*7)` cell, thebe {e.thebe.removeprefix('thebe-')} from npm) pointed at "
             "this nbpool and served from a loopback origin of its own, in Chromium; a warm pool of "
             f"{e.pool}, full before each visitor, one visitor at a time. *First view*: a new browser context (empty "
             "cache, nothing saved), from navigating to the page until `42` is on screen, the visitor's clicks "
             "(Activate, then run) made as soon as each button can be pressed. Its parts: the page and thebe's "
             "bundle loaded (the Activate button there); the launch (`/build` until `ready`, then the session: "
             "the Welcome notebook's running kernel, attached); the cell run until its output shows. *Second view*: "
             "the same page reloaded in the same context, which reuses the server thebe saved (checked with "
             "`GET api/kernels`). Floor: `POST /sessions` to the result of `1+1` on the session's pre-started kernel "
             "over a websocket through Traefik (section 2's visitor), alternating with the thebe visitors."),
            "", "Milliseconds:", ""]
    floor = e.floor.pooled.p50 if e.floor.samples else float("nan")
    rows = []
    for fig in (e.first_view, *(e.parts[p] for p in EMBED_PARTS), e.second_view, e.floor):
        if not fig.samples:
            continue
        part = fig.name in EMBED_PARTS
        s = fig.pooled
        rows.append([("– " if part else "") + fig.name, str(s.n), n(s.p50), n(s.p95), n(s.max), spread(fig),
                     "" if part or fig is e.floor else ratio(s.p50, floor)])
    out += [table(["", "n", "p50", "p95", "max", "runs", "p50 ratio to the floor"], rows), ""]
    out += [(f"Claims during the second views: {e.second_view_claims} (0: every reload reused its saved server). "
             f"Failed visitors: {e.failures}." + (" " + "; ".join(e.errors[:5]) if e.errors else "")), "",
            "To measure only this: `.venv/bin/python bench/run.py --only embed --out /tmp/b`.", ""]


def _content_section(r: Results, out: list[str]) -> None:
    c = r.content
    assert c is not None
    out += ["## 11. Content profiles", "",
            ("The README's worked example as a profile (two notebooks, a CSV file, a requirements.txt naming a "
             "small pure-Python package: wheels made on the spot, found with PIP_NO_INDEX and PIP_FIND_LINKS). "
             "Builds: `nbpool profile build NAME`, wall time, each round with a new profile name: *cold* (the "
             "packages image: requirements resolved and downloaded on the host, installed offline; then the "
             "content image), after a *content change* (one notebook: the content image alone), after a "
             "*requirements change* (one more requirement: both). Seconds:"), ""]
    rows = [[fig.name, str(fig.pooled.n), n(fig.pooled.p50), n(fig.pooled.max), spread(fig)]
            for fig in (c.builds[b] for b in CONTENT_BUILDS) if fig.samples]
    out += [table(["build", "n", "p50", "max", "runs"], rows), ""]
    if c.reused_packages:
        out += [f"The content changes reused the packages image in {sum(c.reused_packages)} of "
                f"{len(c.reused_packages)} builds.", ""]
    out += [(f"First output, one visitor at a time, a content-profile visitor and a default-profile visitor in turn "
             f"(warm pools of {c.pool} each, full before each visitor): `POST /sessions` to `1+1` on the "
             "session's pre-started kernel (the start notebook's) over a websocket through Traefik. Milliseconds:"),
            ""]
    floor = c.default_visit.pooled.p50 if c.default_visit.samples else float("nan")
    rows = [[fig.name, str(fig.pooled.n), n(fig.pooled.p50), n(fig.pooled.p95), n(fig.pooled.max), spread(fig),
             ratio(fig.pooled.p50, floor)] for fig in (c.content_visit, c.default_visit) if fig.samples]
    out += [table(["", "n", "p50", "p95", "max", "runs", "p50 ratio to the default profile"], rows), "",
            f"Failed visitors: {c.failures}." + (" " + "; ".join(c.errors[:5]) if c.errors else ""), "",
            "To measure only this: `.venv/bin/python bench/run.py --only content --out /tmp/b`.", ""]


def _fill_section(r: Results, out: list[str]) -> None:
    f = r.fill
    assert f is not None
    out += ["## 12. Pool fill rate", "",
            (f"From nothing to {f.pool} warm sandboxes (each: container, Jupyter answering, the Welcome notebook's "
             f"kernel pre-started with its warm-up execution; nbpool's also routed), {f.concurrency} starts at once "
             f"(nbpool's default on {f.cores} cores). *nbpool*: `nbpool up` with a pool of {f.pool}, timed by the "
             "spawner's own events, from the first start's beginning to the last `sandbox.warm`. *By hand*: the same "
             "containers through nbpool's Docker runtime (same image, limits, network, start-up CPU share), the same "
             "kernel pre-start, no bus, records or routes. CPU: the host's (all processes) over the fill per sandbox, "
             "and in the sandbox's container at warm. Runs alternate, each from nothing."), ""]
    rows = []
    for way, label in (("nbpool", "nbpool"), ("floor", "by hand (floor)")):
        if way not in f.rate or not f.rate[way].samples:
            continue
        rows.append([label, n(f.rate[way].pooled.p50, "/s"), n(f.fill_s[way].pooled.p50, "s"),
                     n(f.host_cpu_s[way].pooled.p50, "s"), n(f.sandbox_cpu_s[way].pooled.p50, "s"),
                     spread(f.rate[way])])
    out += [table(["", "sandboxes per second", f"empty to {f.pool} warm", "host CPU per sandbox",
                   "CPU in the sandbox, p50", "runs (rate)"], rows), ""]
    if any(fig.samples for figs in f.phase_s.values() for fig in figs.values()):
        def p50(fig: Figure | None) -> str:
            return n(fig.pooled.p50, "s") if fig is not None and fig.samples else "–"

        rows = [[f"{phase}: {what}", p50(f.phase_s.get("nbpool", {}).get(phase)),
                 p50(f.phase_s.get("floor", {}).get(phase)), p50(f.phase_cpu_s.get(phase))]
                for phase, what in PHASES.items()]
        out += [("Where a start's time and CPU go, phase by phase (p50 over every sandbox of every run; nbpool's "
                 "times from each `sandbox.warm` event's data, the floor's timed by the bench, with the CPU its "
                 "container used in each phase from its cgroup; starts overlap, so a phase's time includes "
                 "waiting for the cores):"), "",
                table(["phase", "nbpool, time", "by hand, time", "by hand, CPU in the sandbox"], rows), ""]
    if f.nbpool_cpu:
        names = sorted({k for run in f.nbpool_cpu for k in run}, key=lambda k: -statistics.median(
            run.get(k, 0.0) for run in f.nbpool_cpu))
        rows = [[name, n(statistics.median(run.get(name, 0.0) for run in f.nbpool_cpu), "s")] for name in names]
        out += [("Where the host's CPU went during nbpool's refills, per new sandbox (median over runs; from "
                 "the claims to the pool full again; sandboxes from their cgroups, processes from `/proc`):"), "",
                table(["", "CPU per new sandbox"], rows), ""]
    if "nbpool" in f.rate and f.rate["nbpool"].samples:
        cpu = f.host_cpu_s["nbpool"].pooled.p50
        most = f.cores / cpu if cpu else float("nan")
        rate = f.rate["nbpool"].pooled.p50
        if rate < 3:
            out += [(f"**Why 3 per second is missed.** Starting a sandbox is CPU-bound: {n(cpu, 's')} of the host's "
                     f"CPU per sandbox in this run, of which {n(f.sandbox_cpu_s['nbpool'].pooled.p50, 's')} in the "
                     "sandbox itself (a fresh Python process importing and starting the Jupyter server, then a second "
                     "importing and starting the kernel) and the rest in the Docker engine, the kernel's network and "
                     f"cgroup set-up and nbpool. {f.cores} cores can therefore start at most about {n(most, '/s')}, "
                     f"and the run reached {n(rate, '/s')}, "
                     f"{ratio(rate, f.rate['floor'].pooled.p50) if 'floor' in f.rate else '–'} of the by-hand floor, "
                     f"whose starts cost {n(f.host_cpu_s['floor'].pooled.p50, 's') if 'floor' in f.host_cpu_s else '–'} "
                     "each: nbpool's own share of a start is the difference (the split above: the spawner, Traefik "
                     "and the router for the start and its route; the claimed sandboxes' activity polling; the "
                     "bench's own client). Even by hand, the start itself is most of it. Three per second on 2 cores needs "
                     f"at most {n(f.cores / 3, 's')} of CPU per sandbox: a restored checkpoint of a started server "
                     "instead of a start. On this machine: " + f.criu + ". Else more cores: the rate grows with "
                     "them (starts in flight follow the cores)."), ""]
    if f.errors:
        out += ["Errors: " + "; ".join(f.errors[:5]), ""]
    out += ["To measure only this: `.venv/bin/python bench/run.py --only fill --out /tmp/b`.", ""]


def _lab_section(r: Results, out: list[str]) -> None:
    lab = r.lab_load
    assert lab is not None
    out += ["## 13. JupyterLab's first load", "",
            ("In Chromium, one visitor at a time, a warm pool of "
             f"{lab.pool} full before each. *Cold*: a new browser context (empty cache) opens the landing page and "
             "clicks Launch; from the click until JupyterLab's shell and launcher are on screen. Its parts: the "
             "launch (the click until the browser asks the sandbox for Lab's page, Navigation Timing's `fetchStart`: "
             "`/spawn`, the claim, the redirect) and Lab's "
             "load. *Returning*: the same, in a context that has launched before (its cache holds the earlier "
             "session's files). *Floor*: the same image's JupyterLab straight from a fresh container started by "
             "hand (nbpool's Docker runtime, kernel pre-started), no nbpool in the way, in a new context: "
             "navigation start until the launcher is on screen. *Notebook cold* and *notebook floor*: the same for "
             "a profile with `\"ui\": \"notebook\"` (chosen on the landing page before the click), which opens "
             "Jupyter Notebook 7's file list (`tree`), usable when it lists the home's files; its floor is the same "
             "container's `tree` page. *Link cold* and *link floor*: a cold visitor and its floor over a visitor's "
             f"broadband link, as Chromium emulates it ({LINK['mbit_s']} Mbit/s each way, {LINK['latency_ms']} ms "
             "added to each request), where what the proxy's compression saves shows. Milliseconds:"), ""]
    rows = []
    for kind in LAB_KINDS:
        fig = lab.load[kind]
        if not fig.samples:
            continue
        s = fig.pooled
        rows.append([fig.name, str(s.n), n(s.p50), n(s.p95), n(s.max), spread(fig),
                     ratio(s.p50, _p50_or_nan(lab.load[LAB_FLOOR_OF[kind]])) if kind in LAB_FLOOR_OF else ""])
        for part in lab.parts.get(kind, {}).values():
            if part.samples:
                rows.append(["– " + part.name, str(part.pooled.n), n(part.pooled.p50), n(part.pooled.p95),
                             n(part.pooled.max), spread(part), ""])
    out += [table(["", "n", "p50", "p95", "max", "runs", "p50 ratio to the floor"], rows), ""]
    rows = [[kind, n(statistics.median(lab.responses[kind].samples)), n(statistics.median(lab.cached[kind].samples)),
             n(statistics.median(lab.bytes[kind].samples) / 1e6, "MB"), _median_or_dash(lab.busy[kind]),
             _median_or_dash(lab.scripts[kind])]
            for kind in LAB_KINDS if lab.bytes[kind].samples]
    if rows:
        out += ["Per load (medians): responses, of them from the browser's cache, bytes over the network "
                "(Resource Timing's `transferSize`), and the page's main thread: busy (all its tasks) and, of that, "
                "running scripts (Chromium's `Performance.getMetrics`, from the click, or the floor's navigation, to usable):", "",
                table(["", "responses", "from the cache", "transferred", "main thread busy, ms", "of it scripts, ms"],
                      rows), ""]
    if lab.floor_note:
        out += [lab.floor_note.capitalize() + ".", ""]
    out += _why_lab(lab)
    out += [f"Failed loads: {lab.failures}." + (" " + "; ".join(lab.errors[:5]) if lab.errors else ""), "",
            "To measure only this: `.venv/bin/python bench/run.py --only lab-load --out /tmp/b`.", ""]


def _p50_or_nan(fig: Figure) -> float:
    return fig.pooled.p50 if fig.samples else float("nan")


def _median_or_dash(fig: Figure) -> str:
    return n(statistics.median(fig.samples)) if fig.samples else "–"


def _why_lab(lab: LabLoadResults) -> list[str]:
    """Why Launch -> JupyterLab misses its target, from this run's figures; nothing if met."""
    cold, floor = lab.load["cold"], lab.load["floor"]
    if not (cold.samples and floor.samples) or (cold.pooled.p50 <= LAB_MS and cold.pooled.p50 < floor.pooled.p50):
        return []
    launch, load = (lab.parts["cold"][p] for p in ("launch", "page's load"))
    parts = (f"the launch (landing page to the sandbox's first request) {n(launch.pooled.p50, 'ms')}, Lab's own load "
             f"{n(load.pooled.p50, 'ms')}") if launch.samples and load.samples else "parts not measured"
    back = lab.load["returning"]
    cached = (f" A returning browser took {n(back.pooled.p50, 'ms')}, with "
              f"{statistics.median(lab.cached['returning'].samples):.0f} of "
              f"{statistics.median(lab.responses['returning'].samples):.0f} responses from its cache: each session is an "
              "origin of its own, so what the browser kept from the last one is not used.") if back.samples else ""
    if floor.pooled.p50 > LAB_MS:
        verdict_floor = (f"{ratio(floor.pooled.p50, LAB_MS)} the target, so no launch path can meet it with this UI "
                         "on this machine")
    else:
        verdict_floor = "within the target, so nbpool's part is what misses it"
    nb, nb_floor = lab.load["notebook cold"], lab.load["notebook floor"]
    if nb.samples:
        lighter = (f"Notebook 7's pages start less of it: a profile with `\"ui\": \"notebook\"` was usable after "
                   f"{n(nb.pooled.p50, 'ms')} ({ratio(nb.pooled.p50, cold.pooled.p50)} JupyterLab's, its floor "
                   f"{n(_p50_or_nan(nb_floor), 'ms')}, "
                   f"{n(statistics.median(lab.bytes['notebook cold'].samples) / 1e6, 'MB')} over the network against "
                   f"{n(statistics.median(lab.bytes['cold'].samples) / 1e6, 'MB')}): "
                   + ("within the target." if nb.pooled.p50 <= LAB_MS else "closer, still over the target.")
                   + " What would close the rest: a rendered notebook with a kernel attached (as the embedding's thebe "
                   "page does), or faster cores; on loopback, not caching or compression.")
    else:
        lighter = ("What would close it: a UI that starts less JavaScript for the profile (Notebook 7's one-document "
                   "view, or a rendered notebook with a kernel attached, as the embedding's thebe page does), or faster "
                   "cores; on loopback, not caching or compression.")
    busy = (f" The page's main thread was busy {_median_or_dash(lab.busy['cold'])} ms of the cold load "
            f"({_median_or_dash(lab.scripts['cold'])} ms of it running scripts; the rest is its other work: parsing and "
            "compiling them, garbage collection, style, layout and paint).") if lab.busy["cold"].samples else ""
    far, far_floor = lab.load["link cold"], lab.load["link floor"]
    link = (f" Over a visitor's {LINK['mbit_s']} Mbit/s link the files are what a visitor waits for: nbpool's proxy "
            f"compresses them ({n(statistics.median(lab.bytes['link cold'].samples) / 1e6, 'MB')} over the network "
            f"against {n(statistics.median(lab.bytes['link floor'].samples) / 1e6, 'MB')} straight from a container), "
            f"so a cold visitor had Lab usable after {n(far.pooled.p50, 'ms')} against "
            f"{n(_p50_or_nan(far_floor), 'ms')} for the same Lab straight from a container "
            f"({ratio(far.pooled.p50, _p50_or_nan(far_floor))}).") if far.samples and far_floor.samples else ""
    return [(f"**Why {LAB_MS / 1000:g} s is missed.** The floor, the same JupyterLab straight from a "
             f"container with no nbpool in the way, took {n(floor.pooled.p50, 'ms')}: {verdict_floor}. "
             f"nbpool's cold load was {n(cold.pooled.p50, 'ms')}: {parts}; nbpool's own part, the difference to the "
             f"floor with the launch in it: {n(cold.pooled.p50 - floor.pooled.p50, 'ms')}." + cached +
             " The rest is JavaScript starting on the page (JupyterLab's core and extensions, evaluated on the "
             "machine's 2 cores; the files arrive over loopback early in the load)." + busy + link + " " + lighter), ""]


def write(r: Results, docs: Path, with_plots: bool = True) -> list[Path]:
    """Write docs/benchmarks.md, its plots and docs/benchmarks.json; the paths written."""
    docs.mkdir(parents=True, exist_ok=True)
    plots = draw(r, docs) if with_plots else []
    out = ["# nbpool benchmarks", "",
           f"Made by `make bench`, which runs `{r.command}`, on {r.started}; the whole run took {n(r.took_s / 60, 'min')}.",
           "", f"**Machine**: {r.machine}", "",
           ("Every figure comes from this one run, next to a floor measured in the same run; *runs* columns give the "
           "range of the per-run medians over repeated rounds. All traffic is between processes on this machine "
           "(loopback) and to containers on Docker networks nbpool (or the bench) created. "
           "The machine has 2 cores shared by the load generator, the proxy, the services and the sandboxes, so "
           "absolute numbers are pessimistic; ratios to the floors travel better."), ""]
    out += [*(f"> {note}" for note in r.notes), ""] if r.notes else []
    out += ["## Targets", "", table(["target", "wanted", "measured", "floor (same run)", "ratio", ""], _targets(r)), ""]
    out += _claim_p50_miss(r)
    if r.claims:
        _claims_section(r, out)
    if r.ttfo:
        _ttfo_section(r, out)
    if r.burst:
        _burst_section(r, out)
    if r.proxy:
        _proxy_section(r, out)
    if r.resources or r.memory_idle:
        _resources_section(r, out)
    if r.scale:
        _scale_section(r, out)
    if r.gvisor:
        _gvisor_section(r, out)
    if r.hosts:
        _hosts_section(r, out)
    if r.snapshots:
        _snapshots_section(r, out)
    if r.embed:
        _embed_section(r, out)
    if r.content:
        _content_section(r, out)
    if r.fill:
        _fill_section(r, out)
    if r.lab_load:
        _lab_section(r, out)
    out += ["## The run", "", "Sizes: " + ", ".join(f"{k} {v}" for k, v in r.sizes.items()) + ".", "",
            "Time per phase: " + ", ".join(f"{k} {n(v, 's')}" for k, v in r.phases.items()) + ".", "",
            ("Raw figures (every sample): [benchmarks.json](benchmarks.json). The code: `bench/` (one module per "
            "group of figures; `bench/run.py` wires them)."), ""]
    md = docs / "benchmarks.md"
    md.write_text("\n".join(out))
    raw = docs / "benchmarks.json"
    raw.write_text(json.dumps(_to_json(r), indent=1, default=_default))
    return [md, raw, *(docs / p for p in plots)]


def _default(obj: Any) -> Any:
    if isinstance(obj, Figure):
        return obj.to_json()
    if isinstance(obj, BurstResults):
        return burst_json(obj)
    if isinstance(obj, TTFOResults):
        return _ttfo_json(obj)
    if hasattr(obj, "__dict__"):
        return {k: v for k, v in obj.__dict__.items() if k != "session"}
    return str(obj)


def _ttfo_json(value: TTFOResults) -> dict[str, Any]:
    """Keyed by "pool P, N at once" (JSON keys are strings)."""
    return {"total": {f"pool {k[0]}, {k[1]} at once": f.to_json() for k, f in value.total.items()},
            "parts": {f"pool {k[0]}, {k[1]} at once": {name: f.to_json() for name, f in p.items()}
                      for k, p in value.parts.items()},
            "failures": {f"pool {k[0]}, {k[1]} at once": v for k, v in value.failures.items()},
            "refused": {f"pool {k[0]}, {k[1]} at once": v for k, v in value.refused.items()},
            "cpu_ms_per_visitor": {f"pool {k[0]}, {k[1]} at once": v for k, v in value.cpu.items()},
            "errors": value.errors}


def _to_json(r: Results) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in r.__dict__.items():
        if isinstance(value, TTFOResults):
            data[key] = _ttfo_json(value)
        elif isinstance(value, ClaimResults):
            data[key] = {"pool": value.pool, "claims": {str(k): f.to_json() for k, f in value.claims.items()},
                         "healthz": {str(k): f.to_json() for k, f in value.healthz.items()},
                         "failures": value.failures, "refill_s": value.refill_s}
        else:
            data[key] = value
    return data
