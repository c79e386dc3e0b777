"""``make bench``: starts real nbpools and measures what visitors feel and what nbpool costs.

Writes docs/benchmarks.md (targets, tables, the machine, the exact command), its plots
(docs/bench-*.png) and every sample (docs/benchmarks.json). Sandboxes are Docker containers
when an engine answers, else processes. Every figure is a median over repeated runs with its
spread, next to a floor measured in the same run. All traffic goes to loopback and to Docker
networks that nbpool or the bench created; every load loop is bounded in count and time.

The groups, each in its own module:

- ``first_output``: the raw floor (a server by hand), and time to first output per pool size
  and number of visitors at once;
- ``claims``: claim latency at 1, 10 and 50 concurrent clients;
- ``proxy``: what Traefik adds per request, in throughput and per websocket round trip;
- ``resources``: sockets per open websocket, memory of nbpool's processes and of a sandbox;
- ``scale``: the control plane with 1000 sandboxes' records and heartbeats;
- ``burst``: 100 visitors in 10 s at a pool of 20;
- ``gvisor``: start time, first output and idle memory of sandboxes under gVisor (``runsc``)
  beside runc, in one cluster with a pool of each;
- ``snapshots``: publishing a session's notebook (about 100 KB and 2 MB) against reading it, its
  view cold (rendered) and cached against reading it from the bus, a remix to first output against a
  plain launch, and the bytes the bus keeps for a notebook published many times;
- ``embed``: a page with a thebe cell (docs/embed-example.html, thebe from npm) in Chromium, from
  its load to the cell's first output, and its second view, against ``POST /sessions`` to first
  output;
- ``content``: a content profile's image builds (cold, after a change of content, after a change of
  requirements), and first output on it against the default profile's;
- ``fill``: sandboxes per second from an empty pool to a full one, against the same starts by hand;
- ``lab_load``: Launch on the landing page until JupyterLab is usable in Chromium (cold and
  returning browser), against the same JupyterLab straight from a container; the same for a
  profile that opens Jupyter Notebook 7 (``"ui": "notebook"``), against its own floor;
- ``hosts``: a cluster of machines on loopback (3 bus nodes, sandbox hosts, a proxy): claims
  with two hosts against one, a host's death and the bus leader's, each until claims go on, the
  control plane with 3 hosts, what ``--sync always`` costs, and first output with real
  sandboxes on one host against two.

Shared by them: ``common`` (statistics, a lean HTTP client, clusters, processes), ``stub`` (a
fast stand-in for a Jupyter server), ``profiling`` (py-spy, with ``--profile``); and for the
output, ``report`` (the markdown and JSON) and ``plots``.

Clusters, in order: stub sandboxes for the claims; then the largest pool, which also serves the
proxy, resources and scale figures; then the other pool sizes; then the burst; then a pool under each
of runc and gVisor; then the snapshots' pool; then the embedding page's; then the content profile's;
then the fill rate's; then JupyterLab's first load's; then the several hosts. About 40 minutes on 2 cores; ``--quick`` runs small versions of everything in a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import burst
import claims
import content
import embed
import fill
import first_output
import gvisor
import hosts
import lab_load
import proxy
import report
import resources
import scale
import snapshots
from common import DOCS, ROOT, BenchCluster, docker_client, ensure_wrk, machine, progress

from nbpool import logs

GROUPS = ("floor", "claims", "first-output", "proxy", "resources", "scale", "burst", "gvisor", "snapshots", "embed",
          "content", "fill", "lab-load", "hosts")
_T = TypeVar("_T")


@dataclass
class Sizes:
    """How much of everything; the defaults are sized for about 40 minutes on 2 cores with Docker (every group)."""

    floor_runs: int = 5
    claims_pool: int = 100
    claims_per_level: int = 200
    claim_levels: list[int] = field(default_factory=lambda: [1, 10, 50])
    #: pool size -> {visitors at once -> rounds}; the first pool's cluster also serves proxy, resources, scale.
    first_output: dict[int, dict[int, int]] = field(default_factory=lambda: {
        40: {1: 5, 10: 2, 30: 2},
        10: {1: 5, 10: 2, 30: 1},
    })
    spawn_concurrency: int = 4
    proxy_blocks: int = 6
    proxy_per_block: int = 100
    proxy_load_s: float = 2.0
    proxy_load_reps: int = 3
    websockets_open: int = 10
    scale_records: int = 1000
    scale_batch: int = 100
    scale_base_slices: int = 3
    scale_load_slices: int = 9
    scale_propagation: int = 8
    burst_pool: int = 20
    burst_visitors: int = 100
    burst_over_s: float = 10.0
    burst_max_sandboxes: int = 120
    #: warm sandboxes under each runtime (runc, runsc); each is then claimed by one visitor, the first untimed.
    gvisor_pool: int = 10
    #: snapshots: rounds; per notebook size and round: publishes, cold views (of the first publishes),
    #: cached views; visitors of each kind (plain, remix of each size) per round, whose number times
    #: the kinds is the pool; publishes of one same notebook for the storage figure.
    snapshots_runs: int = 2
    snapshots_publishes: int = 5
    snapshots_cold_views: int = 3
    snapshots_cached_views: int = 10
    snapshots_remix: int = 5
    snapshots_same: int = 5
    #: embedding: rounds, and thebe visitors (each with a floor visitor) per round; the warm pool.
    embed_runs: int = 2
    embed_per_run: int = 5
    embed_pool: int = 3
    #: content profiles: rounds of the three builds; visitors of each profile; the warm pool of each.
    content_runs: int = 3
    content_visits: int = 10
    content_pool: int = 3
    #: JupyterLab's first load: rounds (each a cold visitor, a returning one, a floor load), the warm pool.
    lab_runs: int = 10
    lab_pool: int = 3
    #: pool fill rate: sandboxes from nothing to warm, and runs of each way (nbpool, by hand)
    fill_pool: int = 40
    fill_runs: int = 2
    #: several hosts: warm stub sandboxes per host, claims per concurrency, and failover runs of each kind.
    hosts_pool: int = 30
    hosts_per_level: int = 120
    hosts_levels: list[int] = field(default_factory=lambda: [1, 10, 30])
    hosts_runs: int = 5
    hosts_records: int = 1000
    #: several hosts, real sandboxes: warm in all (one host, then half on each of two), visitors at once -> rounds.
    hosts_ttfo_pool: int = 30
    hosts_ttfo: dict[int, int] = field(default_factory=lambda: {1: 10, 10: 2, 30: 2})


def quick() -> Sizes:
    """Small versions of everything, for working on the bench itself."""
    return Sizes(
        floor_runs=2, claims_pool=20, claims_per_level=40, first_output={10: {1: 2, 10: 1, 30: 1}},
        proxy_blocks=2, proxy_per_block=50, proxy_load_s=2, proxy_load_reps=1, websockets_open=4,
        scale_records=200, scale_base_slices=1, scale_load_slices=2, scale_propagation=3,
        burst_pool=5, burst_visitors=20, burst_over_s=5, burst_max_sandboxes=30, gvisor_pool=4,
        hosts_pool=10, hosts_per_level=20, hosts_runs=2, hosts_records=200, hosts_ttfo_pool=10,
        hosts_ttfo={1: 2, 10: 1}, snapshots_runs=1, snapshots_publishes=3, snapshots_cold_views=2,
        snapshots_cached_views=5, snapshots_remix=2, snapshots_same=3, embed_runs=1, embed_per_run=2,
        content_runs=1, content_visits=3, fill_pool=6, fill_runs=1, lab_runs=2,
    )


class Bench:
    """Runs the groups in order, keeping going when one fails, and writes the report."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, image: str | None) -> None:
        self.args = args
        self.sizes = sizes
        self.image = image
        self.only = set(args.only.split(",")) if args.only else set(GROUPS)
        self.began = time.monotonic()
        self.clusters: list[BenchCluster] = []
        self.profile_dir = args.out / "profiles" if args.profile else None
        self.results = report.Results(
            command=" ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
            machine=machine("docker" if image else "process"),
            runtime="docker" if image else "process",
            started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            sizes={k: v for k, v in asdict(sizes).items()},
        )

    async def phase(self, name: str, work: Callable[[], Awaitable[_T]]) -> _T | None:
        """Run one phase, timing it; a failure becomes a note in the report, not the end of the run."""
        began = time.monotonic()
        progress(f"— {name}")
        try:
            return await work()
        except Exception as err:  # noqa: BLE001 - one group failing must not lose the others
            progress(f"{name} FAILED: {err!r}")
            traceback.print_exc()
            self.results.notes.append(f"{name} failed: {err.__class__.__name__}: {str(err).splitlines()[0][:300]}")
            return None
        finally:
            self.results.phases[name] = time.monotonic() - began
            self._checkpoint(name)

    def _checkpoint(self, phase: str) -> None:
        """Write the report so far, so a run stopped half-way still leaves what it measured."""
        r = self.results
        r.took_s = time.monotonic() - self.began
        note = f"Written after the phase “{phase}”: the run had not finished."
        r.notes.append(note)
        try:
            report.write(r, self.args.out, with_plots=False)  # plots take seconds of CPU: at the end only
        except Exception as err:  # noqa: BLE001 - a partial report is a convenience, not a result
            progress(f"partial report not written: {err!r}")
        finally:
            r.notes.remove(note)

    def wants(self, *groups: str) -> bool:
        return bool(self.only.intersection(groups))

    async def run(self) -> None:
        s, r = self.sizes, self.results
        wrk = ensure_wrk() if self.wants("proxy") else None
        if self.wants("proxy") and wrk is None:
            r.notes.append("wrk could not be had (not root, or no apt-get): throughput comes from a Python load generator.")
        if self.profile_dir is not None:
            r.notes.append("Measured with --profile: py-spy sampled the services during some phases, which costs them "
                           "CPU; profiles are in docs/profiles/.")
        load = os.getloadavg()[0]
        if load > 1.0:
            r.notes.append(f"The machine was busy when the run began (load average {load:.2f} on 2 cores): "
                           "figures are noisier than on a quiet machine.")

        if self.wants("floor", "first-output"):
            client = docker_client()
            if self.image:
                r.floor = await self.phase("raw floor", lambda: first_output.docker_floor(client, str(self.image), s.floor_runs))
            else:
                r.floor = await self.phase("raw floor", lambda: first_output.process_floor(s.floor_runs))

        if self.wants("claims"):
            async def do_claims() -> claims.ClaimResults:
                with self.track(claims.stub_cluster(s.claims_pool)) as cluster:
                    await asyncio.to_thread(cluster.start, 1, 300)
                    return await claims.measure(cluster, s.claims_pool, s.claims_per_level, s.claim_levels, self.profile_dir)
            r.claims = await self.phase("claims", do_claims)

        pools = list(s.first_output)
        if self.wants("first-output", "proxy", "resources", "scale") and pools:
            r.ttfo = first_output.TTFOResults() if self.wants("first-output") else None
            await self._main_cluster(pools[0], wrk)
            if self.wants("first-output"):
                for pool in pools[1:]:
                    await self._ttfo_cluster(pool)

        if self.wants("burst"):
            async def do_burst() -> burst.BurstResults:
                with self.track(first_output.cluster("burst", self.image, s.burst_pool, s.burst_max_sandboxes,
                                                     s.spawn_concurrency)) as cluster:
                    warm = await asyncio.to_thread(self._start, cluster, s.burst_pool)
                    r.warm_s[f"pool {s.burst_pool} (burst)"] = warm
                    return await burst.measure(cluster, s.burst_pool, s.burst_visitors, s.burst_over_s)
            r.burst = await self.phase("burst", do_burst)

        if self.wants("gvisor"):
            await self.phase("gvisor", self._gvisor)

        if self.wants("snapshots"):
            await self.phase("snapshots", self._snapshots)

        if self.wants("embed"):
            await self.phase("embed", self._embed)

        if self.wants("content"):
            await self.phase("content", self._content)

        if self.wants("fill"):
            if self.image:
                r.fill = fill.FillResults(pool=s.fill_pool)
                await self.phase("fill", lambda: fill.measure(str(self.image), s.fill_pool, s.fill_runs, r.fill))  # type: ignore[arg-type]
            else:
                r.notes.append("Pool fill rate not measured: sandboxes are processes in this run (no Docker engine).")

        if self.wants("lab-load"):
            await self.phase("lab-load", self._lab_load)

        if self.wants("hosts"):
            import tempfile

            r.hosts = hosts.HostsResults(pool=s.hosts_pool, ttfo_pool=s.hosts_ttfo_pool)
            with tempfile.TemporaryDirectory(prefix="nbpool-bench-hosts-") as root:
                await self.phase("hosts", lambda: hosts.measure(
                    r.hosts, Path(root), s.hosts_per_level, s.hosts_levels, s.hosts_runs, s.hosts_records,  # type: ignore[arg-type]
                    (s.scale_base_slices, s.scale_load_slices, s.scale_propagation), self.image, s.hosts_ttfo))

        hung = [f"{c.label} ({', '.join(c.hung)})" for c in self.clusters if c.hung]
        if hung:
            r.notes.append(
                f"On Ctrl-C, the spawner of {len(hung)} of {len(self.clusters)} clusters removed its sandboxes but did not "
                f"exit ({', '.join(hung)}); the bench killed it after {BenchCluster.STOP_GRACE_S:g} s instead of "
                "waiting the 30 s `nbpool up` would. Where it waited: its stacks (py-spy dump) in "
                + ", ".join(f"{c.kept_logs}/<spawner>.stacks.txt" for c in self.clusters if c.hung) + ".")
        for c in self.clusters:
            if c.leaked:
                r.notes.append(f"After Ctrl-C, `nbpool up` of the {c.label} cluster left {c.leaked} sandboxes running; "
                               "the bench ended them.")
            if c.restarts:
                r.notes.append(f"In the {c.label} cluster, nbpool up reported: " + "; ".join(
                    line.removeprefix("nbpool: ") for line in c.restarts[:5]))
        r.took_s = time.monotonic() - self.began
        written = report.write(r, self.args.out)
        progress("wrote " + ", ".join(str(p) for p in written))

    def track(self, cluster: BenchCluster) -> BenchCluster:
        """Remember a cluster, so the report can say how its stop went."""
        self.clusters.append(cluster)
        return cluster

    def _start(self, cluster: BenchCluster, pool: int) -> float:
        began = time.monotonic()
        cluster.start(warm=1, timeout=300)
        cluster.wait_quiet(pool, timeout=600)
        return time.monotonic() - began

    def _max(self, pool: int) -> int:
        return pool + max(self.sizes.first_output[pool]) + 5

    async def _main_cluster(self, pool: int, wrk: str | None) -> None:
        s, r = self.sizes, self.results
        ttfo = r.ttfo
        with self.track(first_output.cluster(f"pool{pool}", self.image, pool, self._max(pool), s.spawn_concurrency)) as cluster:
            warm = await self.phase(f"warm pool {pool}", lambda: asyncio.to_thread(self._start, cluster, pool))
            if warm is None:
                return
            r.warm_s[f"pool {pool}"] = warm
            if self.wants("resources"):
                async def idle() -> None:
                    await asyncio.sleep(3)  # let the last starts settle
                    r.resources = resources.ResourceResults(sandbox_mib=await asyncio.to_thread(resources.idle_sandbox_memory, cluster))
                    r.memory_idle = resources.control_plane_memory(cluster)
                await self.phase("idle memory", idle)
            if ttfo is not None:
                await self.phase(f"first output, pool {pool}",
                                 lambda: first_output.measure(cluster, pool, s.first_output[pool], ttfo))
            if self.wants("proxy"):
                r.proxy = await self.phase("proxy", lambda: proxy.measure(
                    cluster, wrk, s.proxy_blocks, s.proxy_per_block, s.proxy_load_s, s.proxy_load_reps))
            if self.wants("resources"):
                async def sockets() -> None:
                    got = await resources.sockets_per_websocket(cluster, s.websockets_open)
                    if r.resources is None:
                        r.resources = got
                    else:
                        r.resources.sockets, r.resources.websockets_open = got.sockets, got.websockets_open
                await self.phase("sockets", sockets)
            if self.wants("scale"):
                r.scale = await self.phase("scale", lambda: scale.measure(
                    cluster, pool, s.scale_records, s.scale_base_slices, s.scale_load_slices, s.scale_propagation,
                    self.args.scale_batch or s.scale_batch, self.profile_dir))

    async def _gvisor(self) -> None:
        """The gVisor group; its results stay in the report when it fails half-way, with the reason."""
        pool = self.sizes.gvisor_pool
        results = self.results.gvisor = gvisor.GVisorResults(pool=pool)
        results.missing = await asyncio.to_thread(gvisor.unavailable, self.image)
        if results.missing:
            progress(f"gvisor: not measured: {results.missing}")
            return
        results.runsc = await asyncio.to_thread(gvisor.describe_runsc)
        try:
            with self.track(gvisor.cluster(str(self.image), pool, self.sizes.spawn_concurrency)) as cluster:
                results.fill_s = await asyncio.to_thread(gvisor.start, cluster, pool)
                await gvisor.measure(cluster, pool, results)
        except Exception as err:
            results.missing = f"the group failed: {err.__class__.__name__}: {str(err).splitlines()[0][:300]}"
            raise

    async def _snapshots(self) -> None:
        """The snapshots group; what it measured stays in the report when it fails half-way."""
        s = self.sizes
        pool = s.snapshots_remix * len(snapshots.KINDS)
        results = self.results.snapshots = snapshots.SnapshotResults(pool=pool, runs=s.snapshots_runs)
        with self.track(snapshots.cluster(self.image, pool, s.spawn_concurrency)) as cluster:
            results.fill_s = await asyncio.to_thread(self._start, cluster, pool)
            self.results.warm_s[f"pool {pool} (snapshots)"] = results.fill_s
            await snapshots.measure(cluster, pool, s.snapshots_runs, s.snapshots_publishes, s.snapshots_cold_views,
                                    s.snapshots_cached_views, s.snapshots_remix, s.snapshots_same, results)

    async def _embed(self) -> None:
        """The embedding group; what it measured stays in the report when it fails half-way."""
        s = self.sizes
        results = self.results.embed = embed.EmbedResults(pool=s.embed_pool, runs=s.embed_runs)
        with self.track(embed.cluster(self.image, s.embed_pool, s.spawn_concurrency)) as cluster:
            self.results.warm_s[f"pool {s.embed_pool} (embed)"] = await asyncio.to_thread(self._start, cluster, s.embed_pool)
            await embed.measure(cluster, s.embed_pool, s.embed_runs, s.embed_per_run, results)

    async def _lab_load(self) -> None:
        """JupyterLab's first load; what it measured stays in the report when it fails half-way."""
        s = self.sizes
        results = self.results.lab_load = lab_load.LabLoadResults(pool=s.lab_pool, runs=s.lab_runs)
        with self.track(lab_load.cluster(self.image, s.lab_pool, s.spawn_concurrency)) as cluster:
            # Two profiles (JupyterLab, Notebook 7), each a pool of lab_pool.
            self.results.warm_s[f"pool {2 * s.lab_pool} (lab-load)"] = await asyncio.to_thread(
                self._start, cluster, 2 * s.lab_pool)
            await lab_load.measure(cluster, self.image, s.lab_pool, s.lab_runs, results)

    async def _content(self) -> None:
        """The content profiles group (Docker only); what it measured stays in the report when it fails half-way."""
        s = self.sizes
        results = self.results.content = content.ContentResults(pool=s.content_pool)
        if self.image is None:
            self.results.notes.append("content profiles need the Docker runtime: that group did not run.")
            return
        await content.measure(self.image, s.content_runs, s.content_visits, s.content_pool, results, self.track)

    async def _ttfo_cluster(self, pool: int) -> None:
        s, r = self.sizes, self.results
        ttfo = r.ttfo
        assert ttfo is not None
        with self.track(first_output.cluster(f"pool{pool}", self.image, pool, self._max(pool), s.spawn_concurrency)) as cluster:
            warm = await self.phase(f"warm pool {pool}", lambda: asyncio.to_thread(self._start, cluster, pool))
            if warm is None:
                return
            r.warm_s[f"pool {pool}"] = warm
            await self.phase(f"first output, pool {pool}",
                             lambda: first_output.measure(cluster, pool, s.first_output[pool], ttfo))


def _image(runtime: str) -> str | None:
    """The notebook image (built if its inputs changed) for the docker runtime; None for processes."""
    if runtime != "docker":
        return None
    progress("building the notebook image if its inputs changed (deploy/images/build.sh)")
    built = subprocess.run([str(ROOT / "deploy" / "images" / "build.sh")], stdout=subprocess.PIPE, text=True, check=True)
    return built.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime", choices=["docker", "process"],
                        help="sandbox runtime (default: docker when an engine answers, else process)")
    parser.add_argument("--quick", action="store_true", help="small versions of everything (a few minutes)")
    parser.add_argument("--only", help=f"comma-separated groups to run, of: {','.join(GROUPS)}")
    parser.add_argument("--scale-batch", type=int, help="synthetic records written at a time (default 100)")
    parser.add_argument("--out", type=Path, default=DOCS,
                        help="where benchmarks.md, its plots and profiles go (default docs/; use another for trials)")
    parser.add_argument("--profile", action="store_true",
                        help="sample the services with py-spy where targets can be missed (docs/profiles/); "
                             "figures measured so are not the ones to publish")
    args = parser.parse_args(argv)
    if args.only and not set(args.only.split(",")) <= set(GROUPS):
        parser.error(f"--only takes groups of: {', '.join(GROUPS)}")
    runtime = args.runtime or ("docker" if docker_client() is not None else "process")
    if runtime == "process":
        progress("no Docker engine answers: sandboxes are processes, the floor is a jupyter server by hand")
    bench = Bench(args, quick() if args.quick else Sizes(), _image(runtime))
    logs.hush_tls_eof()  # the bus clients of the several-hosts group close TLS connections
    asyncio.run(bench.run())
    progress(f"done in {(time.monotonic() - bench.began) / 60:.1f} min; see {args.out / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
