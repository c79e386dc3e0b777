"""The plots of docs/benchmarks.md (docs/bench-*.png), one function per figure group; no measuring.

Each function takes the group's results and a matplotlib ``Axes`` factory and draws; :func:`draw`
writes the files. Without matplotlib (the ``bench`` extra), there are no plots and the report
says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from burst import BurstResults
from claims import ClaimResults
from first_output import FloorResults, TTFOResults
from gvisor import GVisorResults
from proxy import ProxyResults
from scale import ScaleResults

__all__ = ["draw"]


def _claims(plt: Any, c: ClaimResults) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4))
    for (level, claims), color in zip(c.claims.items(), ("tab:blue", "tab:orange", "tab:red"), strict=False):
        for series, style, label in ((claims, "-", "POST /sessions"), (c.healthz[level], ":", "GET /healthz (floor)")):
            xs = sorted(series.samples)
            ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], style, color=color,
                    label=f"{label}, {level} concurrent")
    ax.axvline(5, color="grey", lw=0.8, ls="--")
    ax.axvline(50, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Claim latency with a warm pool (dashed lines: 5 ms and 50 ms)")
    ax.legend(fontsize=7)
    return fig


def _first_output(plt: Any, t: TTFOResults, floor: FloorResults | None, runtime: str) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = sorted(t.total)
    ax.boxplot([t.total[k].samples or [float("nan")] for k in keys], whis=(0, 100))
    ax.set_xticks(range(1, len(keys) + 1), [f"pool {k[0]}\n{k[1]} at once" for k in keys])
    if floor and floor.total.samples:
        f = floor.total.pooled.p50
        ax.axhline(f, color="tab:red", ls="--", lw=1, label=f"raw {runtime} floor p50 {f:.0f} ms")
        ax.axhline(f / 10, color="tab:orange", ls=":", lw=1, label="1/10 of the floor")
    ax.axhline(150, color="tab:green", ls=":", lw=1, label="150 ms")
    ax.axhline(500, color="tab:purple", ls=":", lw=1, label="500 ms")
    ax.set_yscale("log")
    ax.set_ylabel("POST /sessions → 1+1 result, ms (log)")
    ax.set_title("Time to first output (boxes: quartiles; whiskers: min–max)")
    ax.legend(fontsize=7)
    return fig


def _burst(plt: Any, b: BurstResults) -> Any:
    fig, (visitors, pool) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for i, v in enumerate(b.visits):
        if v.ok:
            got = v.arrived + v.claim_ms / 1000
            visitors.plot([v.arrived, got], [i, i], color="tab:blue", lw=1.5)
            visitors.plot([got, v.arrived + v.total_ms / 1000], [i, i], color="tab:green", lw=1.5)
            if v.refused:
                visitors.plot([got], [i], "o", color="tab:orange", ms=2)
        else:
            visitors.plot([v.arrived], [i], "x", color="tab:red")
    visitors.set_ylabel("visitor (order of arrival)")
    visitors.set_title(f"Burst: {b.visitors} visitors over {b.over_s:g} s, pool {b.pool} "
                       "(blue: waiting for a sandbox; green: 1+1; orange dot: had a 503; red x: lost)", fontsize=8)
    if b.pool_over_time:
        seconds = [sample[0] for sample in b.pool_over_time]
        for idx, label in ((1, "warm"), (2, "starting"), (3, "in use"), (4, "waiting in line")):
            pool.plot(seconds, [sample[idx] for sample in b.pool_over_time], label=label)
    pool.set_xlabel("seconds since the first arrival")
    pool.set_ylabel("sandboxes / claims")
    pool.legend(fontsize=7)
    return fig


def _bars(ax: Any, labels: list[str], direct: list[float], proxied: list[float]) -> None:
    xs = list(range(len(labels)))
    ax.bar([x - 0.2 for x in xs], direct, 0.4, label="direct")
    ax.bar([x + 0.2 for x in xs], proxied, 0.4, label="through Traefik")
    ax.set_xticks(xs, labels)


def _proxy(plt: Any, p: ProxyResults) -> Any:
    fig, (latency, throughput) = plt.subplots(1, 2, figsize=(8, 3.5))
    pairs = [("Jupyter GET", p.latency.get("sandbox (Jupyter), direct"), p.latency.get("sandbox (Jupyter), through Traefik")),
             ("stub GET", p.latency.get("stub server, direct"), p.latency.get("stub server, through Traefik")),
             ("ws 1+1", p.websocket.get("direct"), p.websocket.get("through Traefik"))]
    shown = [(label, d, t) for label, d, t in pairs if d and t]
    _bars(latency, [s[0] for s in shown], [s[1].pooled.p50 for s in shown], [s[2].pooled.p50 for s in shown])
    latency.set_ylabel("p50, ms")
    latency.set_title("Latency")
    latency.legend(fontsize=7)
    rates = [(name, p.throughput.get(f"{name}, direct"), p.throughput.get(f"{name}, through Traefik"))
             for name in ("sandbox (Jupyter)", "stub server")]
    shown = [(label, d, t) for label, d, t in rates if d and t]
    _bars(throughput, [s[0] for s in shown], [s[1].pooled.p50 for s in shown], [s[2].pooled.p50 for s in shown])
    throughput.axhline(3000, color="grey", ls="--", lw=0.8)
    throughput.set_yscale("log")
    throughput.set_ylabel("requests/s (log)")
    throughput.set_title("Throughput (dashed: 3000/s)")
    return fig


def _scale(plt: Any, s: ScaleResults) -> Any:
    fig, (cpu, routing) = plt.subplots(1, 2, figsize=(8, 3.5))
    names = list(s.cpu_load)
    xs = list(range(len(names)))
    cpu.bar([x - 0.2 for x in xs], [s.cpu_base[k].pooled.p50 if k in s.cpu_base else 0 for k in names], 0.4,
            label="pool only")
    cpu.bar([x + 0.2 for x in xs], [s.cpu_load[k].pooled.p50 for k in names], 0.4,
            label=f"{s.records} records + heartbeats")
    cpu.set_xticks(xs, names, rotation=30)
    cpu.set_ylabel("% of one core")
    cpu.set_title("CPU per process")
    cpu.legend(fontsize=7)
    if s.batch_s:
        routing.plot([(i + 1) * s.batch for i in range(len(s.batch_s))], s.batch_s, "o-")
        routing.set_xlabel("synthetic routes after the batch")
        routing.set_ylabel(f"s until a batch of {s.batch} is routed")
        routing.set_title("Routing as the table grows")
        routing.set_ylim(bottom=0)
    return fig


def _gvisor(plt: Any, g: GVisorResults) -> Any:
    fig, axes = plt.subplots(1, 3, figsize=(8, 3))
    runtimes = ("runc", "runsc")
    panels = (
        ("start → warm, s", [g.start_s[k].samples if k in g.start_s else [] for k in runtimes]),
        ("first output, ms", [g.first_output[k].samples if k in g.first_output else [] for k in runtimes]),
        ("idle memory, MiB", [g.memory_mib.get(k, []) for k in runtimes]),
    )
    for ax, (title, values) in zip(axes, panels, strict=True):
        ax.boxplot([v or [float("nan")] for v in values], whis=(0, 100))
        ax.set_xticks([1, 2], ["runc", "runsc\n(gVisor)"])
        ax.set_title(title)
        ax.set_ylim(bottom=0)
    fig.suptitle("gVisor beside runc, same cluster (boxes: quartiles; whiskers: min–max)", fontsize=9)
    return fig


def draw(results: Any, docs: Path) -> list[str]:
    """Write the plots of the groups that ran (``results`` is a :class:`report.Results`); their file names."""
    try:
        import matplotlib
    except ImportError:
        results.notes.append("matplotlib is missing (the bench extra: pip install -e '.[bench]'), so there are no plots.")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 110, "font.size": 9})
    figures = {
        "bench-claims.png": results.claims and (lambda: _claims(plt, results.claims)),
        "bench-first-output.png": results.ttfo and (lambda: _first_output(plt, results.ttfo, results.floor, results.runtime)),
        "bench-burst.png": results.burst and (lambda: _burst(plt, results.burst)),
        "bench-proxy.png": results.proxy and (lambda: _proxy(plt, results.proxy)),
        "bench-scale.png": results.scale and (lambda: _scale(plt, results.scale)),
        "bench-gvisor.png": results.gvisor and results.gvisor.first_output and (lambda: _gvisor(plt, results.gvisor)),
    }
    written = []
    for name, make in figures.items():
        if not make:
            continue
        fig = make()
        fig.tight_layout()
        fig.savefig(docs / name)
        plt.close(fig)
        written.append(name)
    return written
