"""No sandbox is ever handed out twice, even with replicas of the gateway and the spawner racing."""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from cluster import Cluster, NatsServer
from waiting import poll_until


def _servers(cluster: Cluster) -> int:
    """Jupyter server processes (not kernels) of this cluster."""
    return len(cluster.server_processes())


async def test_fifty_claims_against_a_pool_of_ten(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster(
        {
            "NBPOOL_POOL_SIZE": "5",
            "NBPOOL_MAX_SANDBOXES": "5",
            # Six starts at once on 2 cores: ten at once (each server's start costs 4-6 s of CPU
            # on a slow day) ran past the 30 s start deadline together, and again on every retry.
            "NBPOOL_SPAWN_CONCURRENCY": "3",
            "NBPOOL_RATE_BURST": "100",
        },
        spawners=2,
        gateways=2,
        warm=10,
    )
    gateways = [f"http://127.0.0.1:{cluster.gateway_port + i}" for i in range(2)]
    # Every gateway has both spawners' heartbeats before the race starts.
    for url in gateways:
        poll_until(lambda url=url: httpx.get(f"{url}/api/stats").json()["available"] >= 10, 30, f"{url} sees 10 warm",
                   errors=(httpx.HTTPError,))  # the second gateway may still be starting

    async with httpx.AsyncClient(timeout=30) as client:
        # Half the claims through Traefik (which balances over both gateways), half straight to each gateway.
        targets = [cluster.url if i % 2 else gateways[(i // 2) % 2] for i in range(50)]
        responses = await asyncio.gather(*(client.post(f"{url}/sessions") for url in targets))

        codes = [r.status_code for r in responses]
        won = [r.json() for r in responses if r.status_code == 201]
        assert codes.count(201) == 10, codes
        assert codes.count(503) == 40, codes
        assert len({s["id"] for s in won}) == 10
        assert len({s["token"] for s in won}) == 10
        for r in responses:
            if r.status_code == 503:
                assert r.headers["Retry-After"] and r.json()["reason"] == "full"

        records = {r["id"]: r for r in cluster.status()["sandboxes"]}
        assert {s["id"] for s in won} <= records.keys()
        assert {records[s["id"]]["state"] for s in won} == {"claimed"}
        assert {records[s["id"]]["host"] for s in won} == {"spawner-1", "spawner-2"}

        # Each winner's server is its own: its token opens it, through the proxy.
        for s in won:
            status = await client.get(f"{cluster.base(s)}api/status", headers={"Authorization": f"token {s['token']}"})
            assert status.status_code == 200

        for s in won:
            resp = await client.delete(f"{cluster.url}/sessions/{s['id']}", params={"token": s["token"]})
            assert resp.status_code == 204

    # Nothing leaks: the pool refills to 10, and there are exactly as many servers as records.
    cluster.wait_warm(10)

    def settled() -> dict[str, Any] | None:
        records = {r["id"]: r for r in cluster.status()["sandboxes"]}
        return records if len(records) == 10 and _servers(cluster) == 10 and len(cluster.routes()) == 10 else None

    records = poll_until(settled, 20, "10 records, servers and routes")
    assert len(records) == 10 and {r["state"] for r in records.values()} == {"warm"}
    assert _servers(cluster) == 10
    assert cluster.routes() == set(records)


def test_launch_waits_for_a_starting_sandbox(make_cluster: Any) -> None:
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_CLAIM_TIMEOUT": "30"}, warm=1)
    first = cluster.new_session()
    # The pool is empty now; the next launch waits in line for the sandbox being started.
    second = cluster.new_session()
    assert second["id"] != first["id"]
    # It was started only after the first claim emptied the pool, and handed out once warm: the
    # second launch waited in line for it rather than being refused.
    events = {(e["type"], e.get("sandbox_id")): e["time"] for e in cluster.events()}
    assert events[("sandbox.claimed", first["id"])] <= events[("sandbox.starting", second["id"])]
    assert events[("sandbox.starting", second["id"])] <= events[("sandbox.warm", second["id"])]
    assert events[("sandbox.warm", second["id"])] <= events[("sandbox.claimed", second["id"])]
    assert httpx.get(f"{cluster.base(second)}api/status", params={"token": second["token"]}).status_code == 200


def test_up_with_an_existing_nats_server(nats_server: NatsServer, make_cluster: Any) -> None:
    # (nats_server first: it must outlive the cluster, which is torn down before it)
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1"}, warm=1, nats=nats_server)
    assert "nats" not in cluster.children()
    session = cluster.new_session()
    assert httpx.get(f"{cluster.base(session)}api/status", params={"token": session["token"]}).status_code == 200
    records = cluster.status()["sandboxes"]  # read from the given server
    assert session["id"] in {r["id"] for r in records}


def test_api_clients_wait_in_line_with_browsers(make_cluster: Any) -> None:
    """``POST /sessions {"wait"}`` waits in the browsers' line, first come first served; a client
    that goes away or runs out of wait leaves it; nobody is overtaken and nothing is handed out twice."""
    # Room for two sandboxes: the one taken, the one starting; the rest come as sessions end.
    cluster: Cluster = make_cluster({"NBPOOL_POOL_SIZE": "1", "NBPOOL_MAX_SANDBOXES": "2", "NBPOOL_MAX_WAIT": "90"})
    taken = cluster.new_session()
    # The next sandbox is held stopped while the line forms (its start deadline is 60 s), so the
    # pool stays empty and the order of arrival alone decides.
    starting = poll_until(lambda: next((p for sid, p in cluster.server_processes().items() if sid != taken["id"]), None),
                          60, "the next sandbox's server")
    starting.suspend()
    served: dict[str, float] = {}
    with ThreadPoolExecutor(4) as pool:
        try:
            # 1: a browser, whose waiting page watches its ticket.
            page = httpx.get(f"{cluster.url}/spawn", follow_redirects=False)
            assert page.status_code == 200, page.text
            ticket = re.search(r'href="/queue/([^"]+)"', page.text)
            assert ticket is not None

            def browser() -> str:
                resp = poll_until(lambda: (r := httpx.get(f"{cluster.url}/queue/{ticket.group(1)}", follow_redirects=False))
                                  .status_code == 302 and r, 90, "the browser's turn", interval=0.3)
                served["browser"] = time.monotonic()
                return str(resp.headers["location"])

            def program(name: str, wait: float) -> httpx.Response:
                resp = httpx.post(f"{cluster.url}/sessions", json={"wait": wait}, timeout=wait + 30)
                served[name] = time.monotonic()
                return resp

            first = pool.submit(browser)
            time.sleep(0.5)
            second = pool.submit(program, "second", 90)
            time.sleep(0.5)
            # 2b: a program that goes away after a second leaves the line and gets nothing.
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{cluster.url}/sessions", json={"wait": 60}, timeout=1)
            third = pool.submit(program, "third", 90)
            time.sleep(0.5)
            # One that will not wait long: 503 with its place (4th: the gone client left), and it leaves.
            short = httpx.post(f"{cluster.url}/sessions", json={"wait": 1})
            assert short.status_code == 503, short.text
            assert short.json()["reason"] == "waiting" and short.json()["position"] == 4, short.json()
            assert int(short.headers["Retry-After"]) >= 1
            # More than NBPOOL_MAX_WAIT: refused, saying the bound.
            too_long = httpx.post(f"{cluster.url}/sessions", json={"wait": 91})
            assert too_long.status_code == 422 and "at most 90" in too_long.json()["detail"]
            assert not (first.done() or second.done() or third.done())
        finally:
            starting.resume()
        assert ".sb.localhost:" in first.result(timeout=120)
        # Every sandbox in use: the next in line gets one when a session ends, and only then.
        time.sleep(2)
        assert not second.done()
        httpx.delete(f"{cluster.url}/sessions/{taken['id']}", params={"token": taken["token"]})
        second_answer = second.result(timeout=120)
        assert second_answer.status_code == 201, second_answer.text
        assert not third.done()
        httpx.delete(f"{cluster.url}/sessions/{second_answer.json()['id']}", params={"token": second_answer.json()["token"]})
        third_answer = third.result(timeout=120)
        assert third_answer.status_code == 201, third_answer.text
    assert served["browser"] < served["second"] < served["third"], served
    claimed = [r for r in cluster.status()["sandboxes"] if r["state"] == "claimed"]
    # The browser's and the third's; nothing for the ones that left.
    assert len(claimed) == 2 and third_answer.json()["id"] in {r["id"] for r in claimed}, claimed
