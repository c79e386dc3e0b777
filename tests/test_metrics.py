"""Every service's Prometheus metrics, scraped by a real Prometheus (Debian's) from a running nbpool,
and the numbers queried back through Prometheus's own API."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import Cluster, free_ports
from waiting import poll_until

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture
def prometheus_binary() -> str:
    if not os.access(PROMETHEUS, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail("the metrics test needs Debian's prometheus; make test installs it as root (deploy/prometheus.sh)")
        pytest.skip("no prometheus: run deploy/prometheus.sh ensure as root")
    return PROMETHEUS


class Prometheus:
    """A Prometheus of the test's own, scraping the targets ``nbpool up`` lists, every second."""

    def __init__(self, binary: str, folder: Path, targets: Path) -> None:
        self.port = free_ports(1)
        self.url = f"http://127.0.0.1:{self.port}"
        config = folder / "prometheus.yml"
        # JSON is YAML.
        config.write_text(
            '{"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": [{"job_name": "nbpool",'
            f' "file_sd_configs": [{{"files": ["{targets}"], "refresh_interval": "1s"}}]}}]}}\n'
        )
        self.log = open(folder / "prometheus.log", "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: each series' labels and value."""
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5).json()
        assert body["status"] == "success", body
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    def value(self, expr: str) -> float | None:
        """The sum of an instant query's series; None if it has none (or Prometheus is not up yet)."""
        try:
            found = self.query(expr)
        except (httpx.HTTPError, ValueError):
            return None
        return sum(value for _, value in found) if found else None

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture
def prometheus(prometheus_binary: str, make_cluster: Any, tmp_path: Path) -> Iterator[tuple[Prometheus, Cluster]]:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "2", "NBPOOL_SPAWN_CONCURRENCY": "2"}, warm=2)
    folder = tmp_path / "prometheus"
    folder.mkdir()
    prom = Prometheus(prometheus_binary, folder, cluster.state_dir / "run" / "prometheus-targets.json")
    try:
        yield prom, cluster
    finally:
        prom.stop()


def test_prometheus_scrapes_every_service_and_the_numbers_add_up(prometheus: tuple[Prometheus, Cluster]) -> None:
    prom, cluster = prometheus
    session = cluster.new_session()
    assert httpx.get(session["url"], timeout=30).status_code == 200
    # Every service is a target, and up.
    poll_until(lambda: prom.value('sum(up{job="nbpool"})') == 4, 60,
               lambda: f"4 services up (Prometheus says {prom.query('up')})", interval=1.0)
    assert {labels["service"] for labels, _ in prom.query('up{job="nbpool"}')} == {"gateway", "spawner", "router", "culler"}
    stats = cluster.wait_warm(2)
    # The pool as the spawner counts it, the sessions and the hosts as the gateway sees them.
    poll_until(lambda: prom.value('nbpool_pool_sandboxes{state="warm"}') == stats["available"], 30,
               lambda: f"warm as in /api/stats ({stats}); Prometheus: {prom.query('nbpool_pool_sandboxes')}", interval=1.0)
    poll_until(lambda: prom.value('nbpool_pool_sandboxes{state="claimed"}') == 1, 30, "one claimed", interval=1.0)
    assert prom.value("nbpool_sessions") == 1
    assert prom.value('nbpool_hosts{state="live"}') == 1
    assert prom.value("nbpool_pool_capacity") == stats["capacity"]
    # Claims, their latency, starts and route propagation were counted.
    assert prom.value('nbpool_launches_total{result="ok"}') == 1
    assert prom.value('nbpool_claims_total{result="claimed"}') == 1
    assert prom.value("nbpool_claim_seconds_count") == 1
    p50 = prom.value("histogram_quantile(0.5, sum(nbpool_claim_seconds_bucket) by (le))")
    assert p50 is not None and 0 < p50 < 10
    assert (prom.value("nbpool_start_seconds_count") or 0) >= 3  # two warm, one refill
    assert (prom.value("nbpool_route_seconds_count") or 0) >= 3
    assert prom.value("nbpool_routes") == 3
    # Ended by its owner: not a cull. The culler counts its own decisions only.
    assert httpx.delete(f"{cluster.url}/sessions/{session['id']}", headers={"Authorization": f"token {session['token']}"},
                        timeout=30).status_code == 204
    poll_until(lambda: prom.value("nbpool_sessions") == 0, 30, "no session", interval=1.0)
    assert not prom.value("nbpool_culls_total")
