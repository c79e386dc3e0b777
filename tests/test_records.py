"""The record state machine (nbpool.records) against a real nats-server: legal moves only, each once."""

from __future__ import annotations

import asyncio
import time

import pytest
from cluster import NatsServer

from nbpool.bus import Bus
from nbpool.busauth import OPERATOR, load
from nbpool.models import SandboxRecord, State, decode, encode
from nbpool.names import Names
from nbpool.records import LEGAL, IllegalMove, create_record, read_record, transition


def _record(sid: str, state: State = State.STARTING) -> SandboxRecord:
    return SandboxRecord(id=sid, host="s1", pool="default", state=state, target="http://127.0.0.1:9", path="/",
                         token="t", created_at=time.time())


async def _bucket(nats_server: NatsServer) -> tuple[Bus, object]:
    bus = await Bus.connect(nats_server.url, Names("records"), "test", credentials=load(nats_server.credentials, OPERATOR))
    await bus.ensure()
    return bus, await bus.kv(bus.names.sandboxes)


def test_the_table_has_one_way_in_and_no_way_back() -> None:
    # Every state but starting is reached from another; ending and failed lead nowhere (deleted).
    reached = set().union(*LEGAL.values())
    assert reached == set(State) - {State.STARTING}
    assert not LEGAL[State.ENDING] and not LEGAL[State.FAILED]
    assert State.WARM not in LEGAL[State.CLAIMED] and State.STARTING not in reached


async def test_a_warm_sandbox_is_claimed_once_by_racing_claims(nats_server: NatsServer) -> None:
    bus, kv = await _bucket(nats_server)
    try:
        rev = await create_record(kv, _record("a"))
        warm = await transition(kv, "a", State.WARM, from_={State.STARTING}, known=(_record("a"), rev))
        assert warm is not None and warm.record.state == State.WARM
        # Twenty claims at once, all from the same (now stale) copy: one wins, the others re-read and see claimed.
        tries = [transition(kv, "a", State.CLAIMED, from_={State.WARM}, known=tuple(warm), owner=f"c{i}")
                 for i in range(20)]
        won = [m for m in await asyncio.gather(*tries) if m is not None]
        assert len(won) == 1
        stored = await read_record(kv, "a")
        assert stored is not None and stored.record.state == State.CLAIMED and stored.record.owner == won[0].record.owner
    finally:
        await bus.close()


async def test_moves_the_table_forbids_are_refused(nats_server: NatsServer) -> None:
    bus, kv = await _bucket(nats_server)
    try:
        rev = await create_record(kv, _record("b"))
        # A decision about a warm sandbox does not touch a starting one.
        assert await transition(kv, "b", State.ENDING, from_={State.WARM}) is None
        ended = await transition(kv, "b", State.ENDING, known=(_record("b"), rev), ending_reason="test")
        assert ended is not None and ended.record.ending_reason == "test"
        # Nothing leaves ending; a claim of an ending record is refused, as is a record that is not there.
        assert await transition(kv, "b", State.CLAIMED) is None
        assert await transition(kv, "nothing", State.ENDING) is None
        with pytest.raises(IllegalMove):
            await transition(kv, "b", State.WARM, from_={State.CLAIMED})
        with pytest.raises(IllegalMove):
            await create_record(kv, _record("c", State.WARM))
        assert decode(SandboxRecord, encode(ended.record)).state == State.ENDING
    finally:
        await bus.close()


async def test_a_claimed_sandbox_changes_hands_while_it_is_claimed_only(nats_server: NatsServer) -> None:
    """The line hands a sandbox claimed for one visitor to an earlier one (nbpool.gateway.queue):
    the owner changes and the claim stays; a record that has moved on to ending keeps its owner."""
    bus, kv = await _bucket(nats_server)
    try:
        rev = await create_record(kv, _record("d"))
        warm = await transition(kv, "d", State.WARM, known=(_record("d"), rev))
        assert warm is not None
        claimed = await transition(kv, "d", State.CLAIMED, from_={State.WARM}, known=tuple(warm), owner="later")
        assert claimed is not None
        handed = await transition(kv, "d", State.CLAIMED, from_={State.CLAIMED}, owner="earlier")
        assert handed is not None and handed.record.owner == "earlier" and handed.record.state == State.CLAIMED
        assert handed.record.claimed_at == claimed.record.claimed_at
        assert await transition(kv, "d", State.ENDING, from_={State.CLAIMED}, ending_reason="test") is not None
        assert await transition(kv, "d", State.CLAIMED, from_={State.CLAIMED}, owner="another") is None
        stored = await read_record(kv, "d")
        assert stored is not None and stored.record.owner == "earlier" and stored.record.state == State.ENDING
    finally:
        await bus.close()
