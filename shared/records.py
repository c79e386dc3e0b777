"""A sandbox record's life in one place: which moves between states are legal, and the one way to make one.

::

    starting ──▶ warm ──▶ claimed ──▶ ending ──▶ (deleted by the owning spawner)
        │          │                    ▲
        │          └────────────────────┤
        ├──────────────────────────────▶┘
        └──▶ failed ──▶ (deleted by the owning spawner)

Every state change in every service goes through :func:`transition`: it reads the record (or
starts from a copy the caller has), checks the move, and writes it compare-and-set on the KV
revision, reading again after a conflict. So a warm sandbox is claimed once however many race for
it, and a service never moves a record its verdict was not about. While the bus elects a leader
(several NATS servers), each call here retries for up to ``nbpool.transient.RETRY_BUDGET`` seconds;
a write that timed out may have been applied, so it is read back before it is tried again.

Deleting a record is not a move: only the owning spawner deletes one, once the runtime has
confirmed its sandbox gone. That is usually from ``ending`` or ``failed``, but a sandbox the
spawner itself finds dead, silent or drained (warm or claimed) is removed and its record deleted
at once, with the reason in the ``sandbox.ended`` event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import nats.js.errors
from nats.js.kv import KeyValue

from nbpool.models import BadMessage, SandboxRecord, State, decode, encode
from nbpool.transient import RETRY_BUDGET, Backoff, retrying, transient

__all__ = ["LEGAL", "IllegalMove", "Moved", "create_record", "read_record", "transition"]

#: state -> the states a record in it may move to.
LEGAL: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.WARM, State.FAILED, State.ENDING}),
    State.WARM: frozenset({State.CLAIMED, State.ENDING}),
    # (claimed -> claimed: a sandbox claimed for a visitor in line changes hands to whoever is
    # first in line when it comes; see nbpool.gateway.queue)
    State.CLAIMED: frozenset({State.CLAIMED, State.ENDING}),
    State.ENDING: frozenset(),
    State.FAILED: frozenset(),
}


#: state -> the states a record may move to it from (LEGAL read the other way).
_SOURCES: dict[State, frozenset[State]] = {to: frozenset(s for s, targets in LEGAL.items() if to in targets) for to in State}


class IllegalMove(ValueError):
    """A caller asked for a move the table does not allow from any state it named."""


class Moved(NamedTuple):
    """A record as written by a move, and its new revision."""

    record: SandboxRecord
    revision: int


async def read_record(kv: KeyValue, sandbox_id: str) -> Moved | None:
    """The record and its revision, or None if there is none (or it cannot be read)."""
    try:
        entry = await retrying(lambda: kv.get(sandbox_id), "read record")
    except nats.js.errors.KeyNotFoundError:
        return None
    if entry.value is None:
        return None
    try:
        return Moved(decode(SandboxRecord, entry.value), entry.revision or 0)
    except BadMessage:
        return None


async def create_record(kv: KeyValue, record: SandboxRecord) -> int:
    """Write a new record (it must not exist yet); its revision."""
    if record.state != State.STARTING:
        raise IllegalMove(f"a record begins as starting, not {record.state}")
    backoff = Backoff(op="create record")
    while True:
        try:
            return int(await kv.create(record.id, encode(record)))
        except Exception as err:
            if not transient(err) or not await backoff.pause():
                raise
        # It timed out: it may have been written. Ours if it reads back as we wrote it.
        found = await read_record(kv, record.id)
        if found is not None:
            if found.record == record:
                return found.revision
            raise nats.js.errors.KeyWrongLastSequenceError(description=f"record {record.id} exists")


async def transition(
    kv: KeyValue,
    sandbox_id: str,
    to: State,
    *,
    from_: Iterable[State] | None = None,
    known: tuple[SandboxRecord, int] | None = None,
    attempts: int = 5,
    budget: float = RETRY_BUDGET,
    **changes: Any,
) -> Moved | None:
    """Move the record to ``to`` (with ``changes``) by compare-and-set.

    ``from_`` narrows the states it may move from (default: every state the table allows); a
    caller whose decision was about one state names it, so a record that changed meanwhile is
    left alone. ``known`` is a (record, revision) the caller already has (a mirror's copy), which
    saves the first read. Returns the record as written, or None when there is no record, or it
    is in a state it may not move from, or it kept changing for ``attempts`` writes. Through a
    bus outage it keeps trying for ``budget`` seconds, then raises what the bus raised.
    """
    allowed = _SOURCES[to]
    if from_ is not None:
        if not (named := frozenset(from_)) <= allowed:
            raise IllegalMove(f"{', '.join(sorted(named - allowed))} -> {to} is not a legal move")
        allowed = named
    current: Moved | None = Moved(*known) if known is not None else None
    backoff = Backoff(budget, op="move record")
    conflicts = 0
    while conflicts < attempts:
        if current is None:
            current = await read_record(kv, sandbox_id)
            if current is None:
                return None
        record, revision = current
        if record.state not in allowed:
            return None
        moved = record.moved(to, **changes)
        try:
            return Moved(moved, int(await kv.update(sandbox_id, encode(moved), last=revision)))
        except nats.js.errors.KeyWrongLastSequenceError:
            conflicts += 1
            current = None  # changed meanwhile: read again and judge anew
            continue
        except Exception as err:
            if not transient(err) or not await backoff.pause():
                raise
        # Timed out: it may have been applied. Read back; ours if it is exactly what we wrote.
        current = await read_record(kv, sandbox_id)
        if current is None:
            return None
        if current.revision != revision and current.record == moved:
            return current
        # Not applied (same revision: try again), or someone else's change: judged anew.
    return None
