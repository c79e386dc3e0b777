"""NATS with credentials and least privilege (nbpool.busauth), against a real nats-server.

Every cluster test also checks, at teardown, that nats-server refused no service anything: the
permission table is wide enough for all the work the suite does. Here: it is no wider.
"""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
from cluster import Cluster, NatsServer

from nbpool.bus import Bus
from nbpool.busauth import OPERATOR, load
from nbpool.models import Event, decode
from nbpool.names import Names

NAMES = Names("nbpool")


async def _login(server: NatsServer, role: str) -> tuple[Any, list[str]]:
    """A raw connection as ``role``, and the errors the server sends it."""
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    creds = load(server.credentials, role)
    nc = await nats.connect(
        server.url, user=creds.user, password=creds.password, inbox_prefix=creds.inbox_prefix,
        error_cb=on_error, allow_reconnect=False, connect_timeout=2,
    )
    return nc, errors


async def _refused(nc: Any, errors: list[str], what: str) -> bool:
    await nc.flush(timeout=2)
    for _ in range(20):
        if any("permissions violation" in e.lower() and what.lower() in e.lower() for e in errors):
            return True
        await asyncio.sleep(0.05)
    return False


async def _answer_to(url: str, connect: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The server's INFO, and its answer to CONNECT + PING, in NATS's own text protocol (a client
    library that is refused may leave its socket for the garbage collector; this closes it)."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        info = json.loads((await reader.readline()).decode().removeprefix("INFO "))
        writer.write(f"CONNECT {json.dumps({'verbose': False, **connect})}\r\nPING\r\n".encode())
        await writer.drain()
        return info, (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
    finally:
        writer.close()
        await writer.wait_closed()


async def test_anonymous_and_wrong_password_are_refused(nats_server: NatsServer) -> None:
    good = load(nats_server.credentials, "gateway")
    info, answer = await _answer_to(nats_server.url, {"user": good.user, "pass": good.password})
    assert info["auth_required"] is True
    assert answer == "PONG"
    for login in ({}, {"user": "gateway", "pass": "not-the-password"}, {"user": "nobody", "pass": good.password}):
        _, answer = await _answer_to(nats_server.url, login)
        assert answer == "-ERR 'Authorization Violation'", login


@pytest.mark.parametrize(("role", "verb", "subject", "why"), [
    ("gateway", "pub", f"$KV.{NAMES.spawners}.fake", "a spawner's heartbeat, to draw claims"),
    ("gateway", "pub", f"$KV.{NAMES.routes}.fake", "a route to anywhere"),
    ("gateway", "pub", f"$JS.API.STREAM.DELETE.KV_{NAMES.sandboxes}", "every session"),
    ("gateway", "pub", f"$JS.API.STREAM.PURGE.{NAMES.events_stream}", "the event history"),
    ("gateway", "pub", NAMES.event_subject("sandbox.ended"), "a spawner's event"),
    ("router", "pub", f"$KV.{NAMES.sandboxes}.fake", "a session record"),
    ("router", "pub", f"$JS.API.DIRECT.GET.KV_{NAMES.admin_sessions}", "admin sessions"),
    ("culler", "sub", NAMES.claim_subject("*"), "claims, to answer them"),
    ("culler", "pub", f"$KV.{NAMES.routes}.fake", "a route"),
    ("spawner", "pub", f"$JS.API.CONSUMER.CREATE.KV_{NAMES.admin_sessions}", "admin sessions"),
    ("spawner", "pub", f"$KV.{NAMES.control}.drain", "the admin's drain switch"),
    ("spawner", "sub", "_INBOX.gateway.>", "the gateway's replies"),
    ("spawner", "pub", NAMES.claim_subject("other"), "claims to another spawner"),
    ("router", "sub", ">", "everything"),
    ("gateway", "pub", "$KV.other_sandboxes.x", "another instance's records"),
])
async def test_each_service_is_held_to_its_subjects(nats_server: NatsServer, role: str, verb: str, subject: str,
                                                     why: str) -> None:
    nc, errors = await _login(nats_server, role)
    try:
        if verb == "pub":
            await nc.publish(subject, b"{}")
        else:
            await nc.subscribe(subject)
        kind = "publish" if verb == "pub" else "subscription"
        assert await _refused(nc, errors, subject), f"{role} could {kind} {subject} ({why}); errors: {errors}"
    finally:
        await nc.close()


async def test_each_service_does_its_own_work(nats_server: NatsServer) -> None:
    """Within its permissions a service creates what it uses, writes its records, publishes its events."""
    buses: dict[str, Bus] = {}
    try:
        for role in ("router", "culler", "spawner", "gateway"):
            bus = await Bus.connect(nats_server.url, NAMES, role, credentials=load(nats_server.credentials, role))
            await asyncio.wait_for(bus.ensure(role), 20)  # in this order, each creates what is missing
            buses[role] = bus
        operator = await Bus.connect(nats_server.url, NAMES, "test", credentials=load(nats_server.credentials, OPERATOR))
        buses[OPERATOR] = operator
        events = await buses["gateway"].follow_events(everything=True)
        await (await buses["spawner"].kv(NAMES.spawners)).put("s1", b"{}")
        await (await buses["router"].kv(NAMES.routes)).put("r1", b"{}")
        await (await buses["gateway"].kv(NAMES.control)).put("drain", b"{}")
        for role, kind in (("spawner", "sandbox.warm"), ("router", "route.ready"), ("culler", "cull.decision"),
                           ("gateway", "pool.drain")):
            await buses[role].event(kind, "abc")
        seen = [decode(Event, (await events.next_msg(timeout=5)).data) for _ in range(4)]
        assert [(e.source, e.type) for e in seen] == [
            ("spawner", "sandbox.warm"), ("router", "route.ready"), ("culler", "cull.decision"), ("gateway", "pool.drain")]
        assert (await (await operator.kv(NAMES.routes)).get("r1")).value == b"{}"
    finally:
        for bus in buses.values():
            await bus.close()


def test_nbpool_up_starts_nats_with_users_only(cluster: Cluster) -> None:
    folder = cluster.state_dir / "bus"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["culler.password", "gateway.password", "nats.conf", "operator.password", "router.password",
                     "spawner.password"]
    for path in folder.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert "$2a$" in (folder / "nats.conf").read_text()
    assert load(folder, "gateway").password not in (folder / "nats.conf").read_text()

    _, answer = asyncio.run(_answer_to(cluster.nats_url, {}))
    assert answer == "-ERR 'Authorization Violation'"


def test_split_credentials_give_each_role_only_its_own_folder(tmp_path: Path) -> None:
    """What compose's bus-setup writes: a folder per role (each a volume), owned by the user the
    service runs as; the folder holding them is left alone (in a container it is read-only)."""
    import os
    import subprocess

    from cluster import BIN

    top = tmp_path / "bus"
    top.mkdir(mode=0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBPOOL_")}
    subprocess.run([str(BIN / "nbpool"), "bus-credentials", "--split", "--owner", "10001:10001", "--owner", "spawner=0:0",
                    str(top)], env=env, check=True, capture_output=True)
    assert stat.S_IMODE(top.stat().st_mode) == 0o755
    assert sorted(p.name for p in top.iterdir()) == ["culler", "gateway", "nats", "operator", "router", "spawner"]
    for folder in top.iterdir():
        (only,) = list(folder.iterdir())
        assert only.name == ("nats.conf" if folder.name == "nats" else f"{folder.name}.password")
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(only.stat().st_mode) == 0o600
        assert only.stat().st_uid == (0 if folder.name == "spawner" else 10001)
    refused = subprocess.run([str(BIN / "nbpool"), "bus-credentials", "--owner", "nobody=1:1", str(top)], env=env,
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "'nobody' is not one of" in refused.stderr
