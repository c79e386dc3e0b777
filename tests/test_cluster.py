"""Several hosts on a real 3-node NATS JetStream cluster (``nbpool cluster init`` + ``nbpool up --role
bus``, TLS and a user per role): claims while the bus leader dies, a host lost and back, a bus node
lost and back with live sessions.

The spawners (one per "host", each with its own fake runtime: tests/fakes.py), the gateways'
claim logic and the cullers run in this process, each with its own NATS connection and user, so
that hundreds of claims and kills of bus nodes take seconds. What is under test is the bus
cluster, the claim protocol and the host-loss rules, not Docker or Jupyter (the namespace tests
cover those across hosts).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from buscluster import HOST_TIMEOUT, NAMES, REPLICAS, BusCluster, Deck
from waiting import poll_until_async

from nbpool.gateway.claims import NoCapacity
from nbpool.models import SandboxRecord, State
from nbpool.records import transition


@pytest.fixture
async def deck(tmp_path: Path) -> AsyncIterator[Deck]:
    bc = BusCluster(tmp_path).start()
    made = None
    try:
        made = await Deck(bc).start()
        yield made
    finally:
        try:
            if made is not None:
                await made.close()
        finally:
            codes = bc.stop()  # the bus nodes go, whatever happened to the services
        assert codes == [0, 0, 0], f"bus nodes exited with {codes}"
        refusals = bc.refusals()
        assert not refusals, "a bus node refused a service:\n" + "\n".join(refusals[:20])


async def test_no_double_assignment_while_the_bus_leader_dies(deck: Deck) -> None:
    """500 claims from 2 gateways against pools on 2 hosts, the sandboxes bucket's leader killed
    meanwhile: every claim that succeeds got a sandbox nobody else got, the rest a clean "no
    capacity", and afterwards records, sandboxes and claims agree; claims then go on."""
    for host in ("h1", "h2"):
        await deck.start_spawner(host, pool_size=15, max_sandboxes=15, spawn_concurrency=15)
    await deck.until(lambda: len(deck.in_state(State.WARM)) == 30, "30 warm on 2 hosts")
    gateways = [await deck.claimer(), await deck.claimer()]
    leader = await deck.leader(f"KV_{NAMES.sandboxes}")

    async def claim(i: int) -> SandboxRecord | NoCapacity:
        await asyncio.sleep((i // 100) * 1.0)  # five waves, one a second: the kill falls among them
        try:
            return await gateways[i % 2].claim("default", owner=f"c{i}", wait=0)
        except NoCapacity as refused:
            return refused

    storm = asyncio.ensure_future(asyncio.gather(*(claim(i) for i in range(500))))
    await asyncio.sleep(0.5)
    deck.bc.kill(leader)
    results = await asyncio.wait_for(storm, 120)
    won = [r for r in results if isinstance(r, SandboxRecord)]
    assert all(isinstance(r, (SandboxRecord, NoCapacity)) for r in results)
    assert len({r.id for r in won}) == len(won) > 0, "a sandbox was handed out twice"
    assert len({r.owner for r in won}) == len(won)
    assert {r.host for r in won} == {"h1", "h2"}, "both hosts took claims"
    # The bucket agrees with what the gateways were told, and with the engines.
    await deck.until(lambda: len(deck.in_state(State.CLAIMED)) == len(won), "records show every claim")
    for rec in won:
        stored = deck.records.get(rec.id)
        assert stored is not None and stored.state == State.CLAIMED and stored.owner == rec.owner
    await deck.until(lambda: {r.id for r in deck.records.values()} == {sid for e in deck.engine.values() for sid in e},
                     "one sandbox per record, and no sandbox without one")
    # No service was restarted: ending sessions frees room, and claims succeed again.
    kv = await gateways[0]._bus.kv(NAMES.sandboxes)
    for rec in won[:4]:
        assert await transition(kv, rec.id, State.ENDING, from_={State.CLAIMED}, ending_reason="deleted") is not None
    await deck.until(lambda: len(deck.in_state(State.WARM)) >= 2, "the pools refill")
    # A gateway whose heartbeat mirror lost its server-side consumer with the dead node sees the
    # hosts again once nats-py has recreated it (after two missed idle heartbeats, 10 s).
    again = None
    began = time.monotonic()
    while again is None and time.monotonic() - began < 60:
        try:
            again = await gateways[1].claim("default", owner="after", wait=5)
        except NoCapacity:
            await asyncio.sleep(0.5)
    assert again is not None, "claims did not go on after the election"
    assert again.id not in {r.id for r in won}
    deck.bc.revive(leader)


async def test_a_lost_host_ends_its_sessions_once_and_reconciles_on_return(deck: Deck) -> None:
    """A host's spawner goes silent: within the timeout (+1 s) no claims go there, its sandboxes
    end with reason host.lost (said once, though two cullers run), claims go to the other host;
    when it returns, it removes what ended and nothing is handed out twice."""
    h1 = await deck.start_spawner("h1", pool_size=2, max_sandboxes=4)
    await deck.start_spawner("h2", pool_size=2, max_sandboxes=4)
    await deck.until(lambda: len(deck.in_state(State.WARM)) == 4, "4 warm on 2 hosts")
    gateway = await deck.claimer()
    sessions = [await gateway.claim("default", owner=f"v{i}", wait=5) for i in range(4)]
    assert {s.host for s in sessions} == {"h1", "h2"}
    sessions_on_h1 = {s.id for s in sessions if s.host == "h1"}
    await deck.culler()
    await deck.culler()
    await asyncio.sleep(HOST_TIMEOUT + 1)  # both cullers trust the bus by now
    await deck.stop_spawner("h1")
    silent_since = time.monotonic()
    # Everything h1 held when it went silent: its sessions and the refill it had begun.
    on_h1 = lambda: {r.id for r in deck.records.values() if r.host == "h1"}  # noqa: E731
    await deck.until(lambda: all((r := deck.records.get(sid)) is not None and r.state == State.ENDING
                                 for sid in on_h1() | sessions_on_h1),
                     "h1's sandboxes ending", timeout=HOST_TIMEOUT + 10)
    took = time.monotonic() - silent_since
    assert took < HOST_TIMEOUT + 3, f"host loss noticed after {took:.1f} s"
    lost_ids = on_h1()
    assert {deck.records.get(sid).ending_reason for sid in lost_ids} == {"host.lost"}  # type: ignore[union-attr]
    assert gateway.live_spawners() and {b.id for b in gateway.live_spawners()} == {"h2"}
    # New claims go to the host that is left.
    more = await gateway.claim("default", owner="later", wait=5)
    assert more.host == "h2"
    events = await deck.drain_events()
    assert [e.host for e in events if e.type == "host.lost"] == ["h1"], "host.lost said once"
    decisions = [e.sandbox_id for e in events if e.type == "cull.decision" and e.cause == "host.lost"]
    assert sorted(decisions) == sorted(lost_ids), "each sandbox ended once"
    assert set(h1.sandboxes) >= lost_ids  # the host's sandboxes still run: it only went silent
    # It comes back: its spawner reconciles, removes what ended, and refills; nothing is handed out twice.
    h1 = await deck.start_spawner("h1", pool_size=2, max_sandboxes=4)
    await deck.until(lambda: not lost_ids & set(h1.sandboxes) and not lost_ids & set(deck.records.items),
                     "ended sandboxes removed on return")
    await deck.until(lambda: len(deck.in_state(State.WARM, "h1")) == 2, "h1 refilled")
    events = await deck.drain_events()
    assert [e.host for e in events if e.type == "host.returned"] == ["h1"]
    assert not {r.id for r in deck.in_state(State.CLAIMED)} & lost_ids


async def test_a_bus_node_dies_and_returns_with_live_sessions(deck: Deck) -> None:
    """The node leading the heartbeats and the records dies: no session is lost, no host is
    taken for lost (the cullers do not trust silence while the bus itself is away), claims go on;
    the node comes back and catches up."""
    for host in ("h1", "h2"):
        await deck.start_spawner(host, pool_size=2, max_sandboxes=6)
    await deck.until(lambda: len(deck.in_state(State.WARM)) == 4, "4 warm")
    gateway = await deck.claimer()
    await deck.culler()
    live = [await gateway.claim("default", owner=f"v{i}", wait=5) for i in range(3)]
    await asyncio.sleep(HOST_TIMEOUT + 1)
    victim = await deck.leader(f"KV_{NAMES.spawners}")
    deck.bc.kill(victim)
    began = time.monotonic()
    after = None
    while after is None and time.monotonic() - began < 60:
        try:
            after = await gateway.claim("default", owner="during", wait=2)
        except NoCapacity:
            await asyncio.sleep(0.2)
    assert after is not None, "claims did not resume"
    resumed = time.monotonic() - began
    await asyncio.sleep(HOST_TIMEOUT + 2)  # long enough for a false host loss to show
    for rec in live:
        stored = deck.records.get(rec.id)
        assert stored is not None and stored.state == State.CLAIMED, f"session {rec.id} lost: {stored}"
    events = await deck.drain_events()
    assert not [e for e in events if e.type == "host.lost"], "a host was taken for lost during the election"
    deck.bc.revive(victim)

    async def caught_up() -> bool | None:
        """The revived node holds a current replica of the records."""
        info = await deck.operator.js.stream_info(f"KV_{NAMES.sandboxes}")
        if info.cluster is None:
            return None
        current = {info.cluster.leader} | {p.name for p in info.cluster.replicas or [] if p.current and not p.offline}
        return True if victim in current else None

    await poll_until_async(caught_up, 60, "the revived node current again", interval=0.5)
    print(f"claims resumed {resumed:.1f} s after the kill")



def test_cluster_init_gives_each_machine_only_its_own_and_keeps_it(tmp_path: Path) -> None:
    from cryptography import x509

    from nbpool import cluster

    nodes = [cluster.parse_node(f"b{i}=10.9.0.{i}") for i in (1, 2, 3)]
    spec = cluster.init(tmp_path / "c", nodes)
    assert spec.nats_url == "tls://10.9.0.1:4222,tls://10.9.0.2:4222,tls://10.9.0.3:4222"
    folders = {p.name: sorted(f.name for f in p.iterdir()) for p in (tmp_path / "c").iterdir()}
    assert folders["host"] == ["ca.pem", "cluster.json", "spawner.password"]
    assert folders["proxy"] == ["ca.pem", "cluster.json", "culler.password", "gateway.password", "router.password"]
    assert folders["operator"] == ["ca.pem", "cluster.json", "operator.password"]
    assert folders["bus-b1"] == ["ca.pem", "cluster.json", "nats.conf", "node.key", "node.pem"]
    for path in (tmp_path / "c").rglob("*"):
        assert path.stat().st_mode & 0o777 == (0o700 if path.is_dir() else 0o600), path
    cert = x509.load_pem_x509_certificate((tmp_path / "c" / "bus-b2" / "node.pem").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.9.0.2" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    conf = (tmp_path / "c" / "bus-b1" / "nats.conf").read_text()
    for secret in (tmp_path / "c" / "ca" / "credentials").glob("*.password"):
        assert secret.read_text().strip() not in conf, "a password in clear in a bus node's folder"
    # Run again: the CA, the passwords and the certificates stay (running machines keep working).
    before = {p: p.read_bytes() for p in (tmp_path / "c").rglob("*") if p.is_file() and p.name != "nats.conf"}
    cluster.init(tmp_path / "c", nodes)
    assert {p: p.read_bytes() for p in before} == before
    # A node whose address changed gets a new certificate; the others keep theirs.
    moved = [nodes[0], cluster.BusNode("b2", "10.9.0.22"), nodes[2]]
    cluster.init(tmp_path / "c", moved)
    assert (tmp_path / "c" / "bus-b2" / "node.pem").read_bytes() != before[tmp_path / "c" / "bus-b2" / "node.pem"]
    assert (tmp_path / "c" / "bus-b1" / "node.pem").read_bytes() == before[tmp_path / "c" / "bus-b1" / "node.pem"]


@pytest.mark.parametrize(("args", "says"), [
    (["--bus", "b1=10.0.0.1", "--bus", "b2=10.0.0.2"], "odd number of bus nodes"),
    (["--bus", "b1=10.0.0.1", "--bus", "b1=10.0.0.2", "--bus", "b3=10.0.0.3"], "names must differ"),
    (["--bus", "b1", "--bus", "b2=10.0.0.2", "--bus", "b3=10.0.0.3"], "expected NAME=HOST"),
    (["--bus", "b1=10.0.0.1:99999", "--bus", "b2=10.0.0.2", "--bus", "b3=10.0.0.3"], "1-65535"),
    (["--bus", "b1=10.0.0.1", "--bus", "b2=10.0.0.1", "--bus", "b3=10.0.0.3"], "share an address and port"),
    (["--bus", "b1=10.0.0.1", "--bus", "b2=10.0.0.2", "--bus", "b3=10.0.0.3", "--replicas", "4"], "--replicas"),
    (["--bus", "b1=10.0.0.1", "--bus", "b2=10.0.0.2", "--bus", "b3=10.0.0.3", "--sync", "sometimes"], "--sync"),
])
def test_cluster_init_refuses_what_cannot_work(tmp_path: Path, args: list[str], says: str) -> None:
    import subprocess

    from cluster import BIN

    done = subprocess.run([str(BIN / "nbpool"), "cluster", "init", str(tmp_path / "c"), *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert not (tmp_path / "c").exists()


def test_the_operator_folder_names_the_bus_and_the_instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``nbpool status``/``events`` with NBPOOL_NATS_CREDENTIALS alone reach the cluster's instance;
    an NBPOOL_INSTANCE of another instance is refused, not asked (it would make empty buckets)."""
    from nbpool import cluster
    from nbpool.cli import operator_settings
    from nbpool.settings import SettingsError

    nodes = [cluster.parse_node(f"b{i}=10.9.0.{i}") for i in (1, 2, 3)]
    cluster.init(tmp_path / "c", nodes, instance="workshop")
    for var in ("NBPOOL_INSTANCE", "NBPOOL_NATS_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NBPOOL_NATS_CREDENTIALS", str(tmp_path / "c" / "operator"))
    settings = operator_settings()
    assert (settings.instance, settings.nats_url) == ("workshop", "tls://10.9.0.1:4222,tls://10.9.0.2:4222,tls://10.9.0.3:4222")
    monkeypatch.setenv("NBPOOL_NATS_URL", "tls://10.9.0.2:4222")
    assert operator_settings().nats_url == "tls://10.9.0.2:4222"
    monkeypatch.setenv("NBPOOL_INSTANCE", "nbpool")
    with pytest.raises(SettingsError, match="of instance 'workshop'"):
        operator_settings()


async def test_snapshots_are_replicated_and_outlive_their_leader(deck: Deck) -> None:
    """The snapshot store on three bus nodes: kept by all three; its leader dies and every snapshot
    can still be read, and new ones published, as the gateway does it (as the gateway's user)."""
    from nbpool.snapshots import SnapshotStore

    store = SnapshotStore(await deck.bus("gateway"), ttl=3600, budget=64 * 1024 * 1024, replicas=REPLICAS)
    await store.ensure()
    for stream in (f"OBJ_{NAMES.snapshots}", f"KV_{NAMES.snapshot_index}"):
        info = await deck.operator.js.stream_info(stream)
        assert info.config.num_replicas == REPLICAS, stream
    notebook = b'{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}' + b" " * 300_000  # three chunks
    first = await store.create("big.ipynb", notebook)
    victim = await deck.leader(f"OBJ_{NAMES.snapshots}")
    deck.bc.kill(victim)
    try:
        snap = await store.info(first.snapshot.id)
        assert await store.notebook(snap) == notebook
        second = await store.create("other.ipynb", notebook[:1000])
        assert await store.notebook(await store.info(second.snapshot.id)) == notebook[:1000]
    finally:
        deck.bc.revive(victim)
