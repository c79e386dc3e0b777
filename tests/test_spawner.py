"""The spawner's claims, capacity, removal, health and reconcile, against a real nats-server and a
fake runtime (tests/fakes.py): no Jupyter, no Docker, no Traefik. Each service logs in with its
own credentials, so the permission table is held here too. A stand-in for the router marks each
new sandbox's route ready, as the real router does once Traefik answers for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from cluster import NatsServer
from fakes import FakeRuntime, route_everything
from waiting import poll_until_async

from nbpool.bus import Bus, KVMirror
from nbpool.busauth import OPERATOR, load
from nbpool.models import (
    ClaimReply,
    ClaimRequest,
    Event,
    SandboxRecord,
    SpawnerBeat,
    State,
    decode,
    encode,
)
from nbpool.names import Names
from nbpool.records import transition
from nbpool.settings import SpawnerSettings
from nbpool.spawner.spawner import Spawner

NAMES = Names("nbpool")


class Rig:
    """A spawner on a fake runtime, a stand-in router, and the operator's view of the bus."""

    def __init__(self, nats: NatsServer, runtime: FakeRuntime, **settings: Any) -> None:
        self.nats = nats
        self.runtime = runtime
        self.settings = SpawnerSettings(
            spawner_id="s1", runtime="process", prestart_kernel=False, heartbeat_interval=0.3,
            activity_interval=0.5, refill_delay=0, **settings,
        )
        self.tasks: list[asyncio.Task[Any]] = []
        self.stop = asyncio.Event()

    async def _bus(self, role: str) -> Bus:
        bus = await Bus.connect(self.nats.url, NAMES, role, credentials=load(self.nats.credentials, role))
        await bus.ensure(None if role == OPERATOR else role)
        return bus

    async def start(self) -> Rig:
        self.operator = await self._bus(OPERATOR)
        self.records: KVMirror[SandboxRecord] = KVMirror(self.operator, NAMES.sandboxes, SandboxRecord)
        self.beats: KVMirror[SpawnerBeat] = KVMirror(self.operator, NAMES.spawners, SpawnerBeat)
        self.events = await self.operator.follow_events(everything=True)
        self.router = await self._bus("router")
        self.gateway = await self._bus("gateway")
        self.tasks += [asyncio.ensure_future(self.records.run()), asyncio.ensure_future(self.beats.run()),
                       asyncio.ensure_future(route_everything(self.records, await self.router.kv(NAMES.routes)))]
        await self.start_spawner()
        return self

    async def start_spawner(self) -> None:
        self.stop = asyncio.Event()
        self.spawner_bus = await self._bus("spawner")
        self.serving = asyncio.ensure_future(Spawner(self.settings, self.spawner_bus, self.runtime).serve(self.stop))

    async def stop_spawner(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.serving, 30)
        await self.spawner_bus.close()

    async def claim(self, wait: float = 0.0, owner: str = "test") -> ClaimReply:
        request = ClaimRequest(profile="default", wait=wait, owner=owner)
        msg = await self.gateway.nc.request(NAMES.claim_subject("s1"), encode(request), timeout=wait + 10)
        return decode(ClaimReply, msg.data)

    def in_state(self, state: State) -> list[SandboxRecord]:
        return [r for r in self.records.values() if r.state == state]

    async def until(self, check: Callable[[], Any], what: str, timeout: float = 20) -> Any:
        async def ask() -> Any:
            return check()
        return await poll_until_async(ask, timeout, what, interval=0.05)

    async def seen_events(self) -> list[Event]:
        found = []
        while True:
            try:
                found.append(decode(Event, (await self.events.next_msg(timeout=0.3)).data))
            except Exception:
                return found

    async def close(self) -> None:
        if not self.serving.done():
            await self.stop_spawner()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for bus in (self.gateway, self.router, self.operator):
            await bus.close()
        await self.runtime.close_all()


@pytest.fixture
async def rig(nats_server: NatsServer) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    made: list[Rig] = []

    async def make(runtime: FakeRuntime | None = None, **settings: Any) -> Rig:
        made.append(await Rig(nats_server, runtime or FakeRuntime(), **settings).start())
        return made[-1]

    yield make
    for one in made:
        await one.close()


async def test_each_warm_sandbox_is_claimed_once(rig: Any) -> None:
    r: Rig = await rig(pool_size=3, max_sandboxes=3, spawn_concurrency=3)
    await r.until(lambda: len(r.in_state(State.WARM)) == 3, "3 warm")
    replies = await asyncio.gather(*(r.claim(owner=f"c{i}") for i in range(10)))
    won = [reply.record for reply in replies if reply.ok and reply.record]
    assert len(won) == 3 and len({rec.id for rec in won}) == 3
    assert {reply.reason for reply in replies if not reply.ok} == {"full"}
    # At capacity: nothing more starts; the heartbeat counts what exists.
    await r.until(lambda: (b := r.beats.get("s1")) is not None and b.pools["default"].claimed == 3, "3 claimed in the beat")
    assert r.beats.get("s1").total == 3 and r.runtime.created == 3  # type: ignore[union-attr]


async def test_a_claim_waits_in_line_for_a_starting_sandbox(rig: Any) -> None:
    r: Rig = await rig(FakeRuntime(start_delay=0.5), pool_size=1, max_sandboxes=2)
    await r.until(lambda: r.in_state(State.WARM), "1 warm")
    first, second = await asyncio.gather(r.claim(wait=10), r.claim(wait=10))
    assert first.ok and second.ok and first.record and second.record and first.record.id != second.record.id


async def test_engine_gone_keeps_an_ending_sandbox_counted_until_it_is_removed(rig: Any) -> None:
    """Defect 1 of issue 10: the record stayed ending, yet "removed" and sandbox.ended were said."""
    r: Rig = await rig(pool_size=1, max_sandboxes=2)
    await r.until(lambda: r.in_state(State.WARM), "1 warm")
    claimed = (await r.claim()).record
    assert claimed is not None
    await r.until(lambda: len(r.in_state(State.WARM)) == 1, "the pool refilled")
    r.runtime.gone = True
    kv = await r.gateway.kv(NAMES.sandboxes)
    assert await transition(kv, claimed.id, State.ENDING, from_={State.CLAIMED}, ending_reason="deleted") is not None
    await asyncio.sleep(1.5)  # several health rounds with the engine away
    assert [rec.id for rec in r.in_state(State.ENDING)] == [claimed.id]
    assert claimed.id in r.runtime.sandboxes
    assert r.beats.get("s1").total == 2  # type: ignore[union-attr]  # it still takes room
    assert not [e for e in await r.seen_events() if e.type == "sandbox.ended" and e.sandbox_id == claimed.id]
    r.runtime.gone = False
    await r.until(lambda: r.records.get(claimed.id) is None, "the record deleted once the engine is back")
    assert claimed.id not in r.runtime.sandboxes
    ended = [e for e in await r.seen_events() if e.type == "sandbox.ended" and e.sandbox_id == claimed.id]
    assert len(ended) == 1 and ended[0].cause == "deleted"


async def test_a_refusing_runtime_backs_off(rig: Any) -> None:
    r: Rig = await rig(FakeRuntime(refuse=True), pool_size=1)
    await asyncio.sleep(3.5)  # tries at 0, 1 s, 3 s (back-off 1, 2, 4 s)
    failed = [e for e in await r.seen_events() if e.type == "sandbox.failed"]
    assert 2 <= len(failed) <= 4, failed
    assert [e.data["retry_in_s"] for e in failed][:3] == [1.0, 2.0, 4.0][: len(failed[:3])]
    assert not r.records.values() and not r.runtime.sandboxes
    reply = await r.claim()
    assert not reply.ok


async def test_a_server_that_never_answers_is_failed_and_removed(rig: Any) -> None:
    r: Rig = await rig(FakeRuntime(answers=False), pool_size=1, start_timeout=1.0)
    await r.until(lambda: r.runtime.created >= 1, "a start")
    await asyncio.sleep(2.0)
    failed = [e for e in await r.seen_events() if e.type == "sandbox.failed"]
    assert failed and failed[0].cause == "did not answer or was not routed in time"
    assert not r.in_state(State.WARM) and not r.in_state(State.CLAIMED)
    gone = failed[0].sandbox_id
    assert gone is not None
    await r.until(lambda: gone not in r.runtime.sandboxes and r.records.get(gone) is None, "the failed sandbox removed")


async def test_a_dead_sandbox_is_replaced(rig: Any) -> None:
    r: Rig = await rig(pool_size=1)
    await r.until(lambda: r.in_state(State.WARM), "1 warm")
    dead = r.in_state(State.WARM)[0].id
    await r.runtime.kill(dead)
    await r.until(lambda: dead not in r.runtime.sandboxes and r.records.get(dead) is None and r.in_state(State.WARM),
                  "removed and replaced")
    assert r.in_state(State.WARM)[0].id != dead
    assert [e.cause for e in await r.seen_events() if e.type == "sandbox.ended" and e.sandbox_id == dead] == ["died"]


async def test_reconcile_adopts_the_live_and_removes_the_rest(rig: Any) -> None:
    r: Rig = await rig(pool_size=1)
    await r.until(lambda: r.in_state(State.WARM), "1 warm")
    claimed = (await r.claim()).record
    assert claimed is not None
    await r.until(lambda: r.in_state(State.WARM), "refilled")
    await r.stop_spawner()  # remove_on_stop is off: sandboxes stay, as after a crash
    # While it is away: the claimed one's server goes on, the warm one's dies, and an orphan appears.
    warm = r.in_state(State.WARM)[0].id
    await r.runtime.kill(warm)
    orphan = await r.runtime.create(type(r.runtime.sandboxes[claimed.id].spec)(id="orphan", token="t", base_path="/", profile="default"))
    await r.start_spawner()
    await r.until(lambda: "orphan" not in r.runtime.sandboxes and warm not in r.runtime.sandboxes, "orphan and dead removed")
    assert orphan.id == "orphan"
    rec = r.records.get(claimed.id)
    assert rec is not None and rec.state == State.CLAIMED and claimed.id in r.runtime.sandboxes
    events = await r.seen_events()
    reconciled = [e for e in events if e.type == "spawner.reconciled"]
    assert reconciled and reconciled[-1].data == {"adopted": 1, "removed": 2}
