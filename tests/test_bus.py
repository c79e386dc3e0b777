"""The bus's KV mirror against a real nats-server: its first read is complete."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import nats.js.kv
import pytest
from cluster import NatsServer

from nbpool.bus import Bus, KVMirror
from nbpool.busauth import OPERATOR, load
from nbpool.models import SandboxRecord, State, encode
from nbpool.names import Names


async def _mirror_sizes(bus: Bus, count: int) -> list[int]:
    mirrors = [KVMirror(bus, bus.names.sandboxes, SandboxRecord) for _ in range(count)]
    tasks = [asyncio.ensure_future(m.run()) for m in mirrors]
    try:
        await asyncio.wait_for(asyncio.gather(*(m.ready.wait() for m in mirrors)), timeout=30)
        return [len(m.items) for m in mirrors]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.mark.parametrize("early_signal", [False, True])
async def test_mirrors_start_with_every_record(nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch,
                                              early_signal: bool) -> None:
    """A mirror is ready only with all the records there are.

    nats-py can say "no more initial values" (a None) before it hands any over, when the server
    pushed them all before answering its consumer-info request (seen once in CI). A spawner that
    believed it would take every sandbox for an orphan on restart. ``early_signal`` puts that
    None first, as it happens then."""
    if early_signal:
        watchall = nats.js.kv.KeyValue.watchall

        async def early(self: Any, **kwargs: Any) -> Any:
            watcher = await watchall(self, **kwargs)
            await asyncio.sleep(0.2)  # let the initial values arrive
            queued = []
            while not watcher._updates.empty():
                queued.append(watcher._updates.get_nowait())
            for item in [None, *queued]:
                watcher._updates.put_nowait(item)
            return watcher

        monkeypatch.setattr(nats.js.kv.KeyValue, "watchall", early)
    bus = await Bus.connect(nats_server.url, Names("mirror"), "test", credentials=load(nats_server.credentials, OPERATOR))
    try:
        await bus.ensure()
        kv = await bus.kv(bus.names.sandboxes)
        for i in range(40):
            rec = SandboxRecord(id=f"sb{i:04d}", host="h", pool="default", state=State.CLAIMED,
                                target="http://127.0.0.1:9", path=f"/user/sb{i:04d}/", token="t", created_at=1.0)
            await kv.put(rec.id, encode(rec))
        assert await _mirror_sizes(bus, 10) == [40] * 10
    finally:
        await bus.close()


async def test_closing_while_a_subscription_cannot_drain_leaves_no_exception_unread(
        nats_server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    """A subscription whose handler is still busy cannot drain. Closing gives up on it by nats-py's
    own drain limit, which reads what the given-up drains raised; cancelling the drain from outside
    left that unread, and asyncio logged "_GatheringFuture exception was never retrieved"."""
    bus = await Bus.connect(nats_server.url, Names("drain"), "test", credentials=load(nats_server.credentials, OPERATOR))
    busy, release = asyncio.Event(), asyncio.Event()

    async def handler(msg: Any) -> None:
        busy.set()
        await release.wait()

    try:
        await bus.nc.subscribe("drain.test", cb=handler)
        for _ in range(2):  # one in the handler, one waiting behind it
            await bus.nc.publish("drain.test", b"x")
        async with asyncio.timeout(10):
            await busy.wait()
        with caplog.at_level(logging.ERROR, logger="asyncio"):
            await bus.close()
            gc.collect()
            await asyncio.sleep(0)
        assert bus.nc.is_closed
        assert not [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    finally:
        release.set()
        await bus.close()
