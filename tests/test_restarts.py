"""kill -9 any service while sessions are live: it is restarted, sessions keep working, nothing leaks."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from cluster import Cluster
from kernel import execute, start_kernel
from waiting import poll_until, poll_until_async


def _consistent(cluster: Cluster) -> tuple[bool, str]:
    """Servers, records and routes agree: no orphan process, no stale route, no record without a server."""
    records = {r["id"]: r["state"] for r in cluster.status()["sandboxes"]}
    servers = set(cluster.server_processes())
    routes = cluster.routes()
    ok = servers == set(records) and routes == set(records)
    return ok, f"records={records} servers={servers} routes={routes}"


@pytest.mark.parametrize("victims", [("spawner", "router", "culler", "gateway", "traefik")])
async def test_kill_each_service(make_cluster: Any, victims: tuple[str, ...]) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "2", "NBPOOL_SPAWN_CONCURRENCY": "2"}, warm=2)
    sessions = [cluster.new_session(), cluster.new_session()]
    async with httpx.AsyncClient(timeout=30) as client:
        kernels = [await start_kernel(client, cluster.base(s), s["token"]) for s in sessions]
    for n, victim in enumerate(victims):
        cluster.kill9(victim)
        # Live sessions still work, through the proxy, with their kernels.
        for session, kernel in zip(sessions, kernels, strict=True):
            result = await poll_until_async(
                lambda s=session, k=kernel, n=n: execute(cluster.base(s), s["token"], k, f"{n}+40", timeout=10), 20,
                lambda s=session, v=victim: f"session {s['id']} works after killing {v}\n{cluster.logs()}",
                interval=0.3, errors=(Exception,))
            assert result == str(n + 40)
        # And the service is back: launches work again.
        cluster.wait_warm(1, timeout=60)
        fresh = cluster.new_session()
        gone = httpx.delete(f"{cluster.url}/sessions/{fresh['id']}", params={"token": fresh["token"]})
        assert gone.status_code == 204, f"after killing {victim}: {gone.text}"
        cluster.wait_warm(2, timeout=60)
        poll_until(lambda: _consistent(cluster)[0], 20,
                   lambda v=victim: f"consistent after killing {v}: {_consistent(cluster)[1]}", interval=0.3)
    assert "restarting spawner" in cluster.log_path.read_text()


def test_stop_while_the_spawner_restarts_leaves_no_sandbox(make_cluster: Any) -> None:
    """Ctrl-C right after a spawner died: the restarted one is still starting and cannot end the
    sandboxes itself, so ``nbpool up`` sweeps them."""
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "2", "NBPOOL_SPAWN_CONCURRENCY": "2"}, warm=2)
    session = cluster.new_session()
    assert cluster.sandbox_processes()
    cluster.kill9("spawner")
    assert cluster.stop() == 0
    poll_until(lambda: not cluster.sandbox_processes(), 10, lambda: f"session {session['id']} gone with nbpool\n{cluster.logs()}")
