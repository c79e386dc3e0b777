"""kill -9 any service while sessions are live: it is restarted, sessions keep working, nothing leaks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from cluster import Cluster
from kernel import execute, start_kernel


def _consistent(cluster: Cluster) -> tuple[bool, str]:
    """Servers, records and routes agree: no orphan process, no stale route, no record without a server."""
    records = {r["id"]: r["state"] for r in cluster.status()["sandboxes"]}
    commands = [" ".join(p.cmdline()) for p in cluster.sandbox_processes()]
    server_commands = [cmd for cmd in commands if "jupyter_server" in cmd]
    servers = {sid for sid in records if any(f"/servers/{sid}/" in cmd for cmd in server_commands)}
    all_servers = len(server_commands)
    routes = cluster.routes()
    ok = servers == set(records) and all_servers == len(records) and routes == set(records)
    return ok, f"records={records} servers={servers} ({all_servers}) routes={routes}"


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
            deadline = time.monotonic() + 20
            while True:
                try:
                    result = await execute(cluster.base(session), session["token"], kernel, f"{n}+40", timeout=10)
                    break
                except Exception as err:
                    if time.monotonic() > deadline:
                        raise AssertionError(f"session {session['id']} broken after killing {victim}\n{cluster.logs()}") from err
                    await asyncio.sleep(0.3)
            assert result == str(n + 40)
        # And the service is back: launches work again.
        cluster.wait_warm(1, timeout=60)
        fresh = cluster.new_session()
        gone = httpx.delete(f"{cluster.url}/sessions/{fresh['id']}", params={"token": fresh["token"]})
        assert gone.status_code == 204, f"after killing {victim}: {gone.text}"
        cluster.wait_warm(2, timeout=60)
        deadline = time.monotonic() + 20
        while not (state := _consistent(cluster))[0] and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
        assert state[0], f"after killing {victim}: {state[1]}"
    assert "restarting spawner" in cluster.log_path.read_text()


def test_stop_while_the_spawner_restarts_leaves_no_sandbox(make_cluster: Any) -> None:
    """Ctrl-C right after a spawner died: the restarted one is still starting and cannot end the
    sandboxes itself, so ``nbpool up`` sweeps them."""
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "2", "NBPOOL_SPAWN_CONCURRENCY": "2"}, warm=2)
    session = cluster.new_session()
    assert cluster.sandbox_processes()
    cluster.kill9("spawner")
    assert cluster.stop() == 0
    deadline = time.monotonic() + 10
    while cluster.sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not cluster.sandbox_processes(), f"session {session['id']} outlived nbpool\n{cluster.logs()}"
