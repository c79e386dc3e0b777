"""Messages on the bus: versioned JSON documents, validated on the way in.

A document that does not parse raises :class:`BadMessage`; services log and skip it.
Times are Unix seconds (float) on the bus; the HTTP API renders them as ISO 8601.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "Activity",
    "AdminSession",
    "BadMessage",
    "ClaimReply",
    "ClaimRequest",
    "Drain",
    "Event",
    "HostLoss",
    "PoolCounts",
    "Route",
    "SandboxRecord",
    "ServiceBeat",
    "Snapshot",
    "SnapshotRefs",
    "SpawnerBeat",
    "State",
    "decode",
    "encode",
]

SCHEMA_VERSION = 1


class BadMessage(ValueError):
    """A message on the bus is not the document it should be."""


class State(StrEnum):
    """A sandbox's life: starting -> warm -> claimed -> ending -> gone; starting -> failed -> gone."""

    STARTING = "starting"
    WARM = "warm"
    CLAIMED = "claimed"
    ENDING = "ending"
    FAILED = "failed"


#: States in which the proxy must route to the sandbox.
ROUTED_STATES = frozenset({State.STARTING, State.WARM, State.CLAIMED})


class _Doc(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    v: int = SCHEMA_VERSION


class SandboxRecord(_Doc):
    """The record of one sandbox (KV ``<instance>_sandboxes``, key = id).

    Writers: the spawner creates it and moves starting -> warm -> claimed (or failed) and deletes it;
    the gateway and the culler move it to ending. Every state change is a compare-and-set.
    """

    id: str
    host: str
    pool: str
    state: State
    target: str
    path: str
    token: str
    created_at: float
    warm_at: float | None = None
    claimed_at: float | None = None
    owner: str | None = None
    ending_reason: str | None = None
    kernel_id: str | None = None

    def moved(self, state: State, **changes: Any) -> SandboxRecord:
        """A copy in ``state``, with ``changes`` applied."""
        return self.model_copy(update={"state": state, **changes})


class Activity(_Doc):
    """What a claimed sandbox was last seen doing (KV ``<instance>_activity``; the spawner writes)."""

    id: str
    last_activity: float
    connections: int = 0
    kernels: int = 0
    busy_kernels: int = 0
    at: float = Field(default_factory=time.time)


class Route(_Doc):
    """A route the router has given Traefik (KV ``<instance>_routes``; the router writes)."""

    id: str
    path: str
    target: str
    ready_at: float | None = None


class PoolCounts(BaseModel):
    """Sandboxes of one profile on one spawner."""

    target: int = 0
    warm: int = 0
    starting: int = 0
    claimed: int = 0
    #: Why this spawner does not start sandboxes of the profile ("" when it does), e.g. its image is missing.
    problem: str = ""


class SpawnerBeat(_Doc):
    """A spawner replica's heartbeat (KV ``<instance>_spawners`` with a TTL, key = spawner id)."""

    id: str
    runtime: str
    healthy: bool
    reason: str = ""
    capacity: int
    total: int
    pools: dict[str, PoolCounts]
    waiting: int = 0
    draining: bool = False
    at: float = Field(default_factory=time.time)

    def headroom(self) -> int:
        return max(0, self.capacity - self.total)


class ServiceBeat(_Doc):
    """Any service process's presence (KV ``<instance>_services`` with a TTL), for ``nbpool status``."""

    kind: str
    host: str
    pid: int
    started_at: float
    at: float = Field(default_factory=time.time)


class Drain(_Doc):
    """Whether nbpool is draining (KV ``<instance>_control``, key ``drain``; the admin writes).

    While draining, spawners end their warm sandboxes, start no new ones and refuse claims;
    claimed sessions go on until they end.
    """

    draining: bool
    by: str = ""
    at: float = Field(default_factory=time.time)


class HostLoss(_Doc):
    """A sandbox host declared lost (KV ``<instance>_hosts``, key = spawner id; the culler writes).

    Created once per loss by whichever culler replica gets there first (so ``host.lost`` is said
    once), deleted when the host's heartbeat comes back (``host.returned``).
    """

    host: str
    at: float = Field(default_factory=time.time)
    silent_s: float = 0.0


class AdminSession(_Doc):
    """A signed-in admin (KV ``<instance>_admin_sessions``, key: SHA-256 of the session id).

    The session id lives only in the admin's cookie; the bus holds its hash, so reading the
    bucket does not sign anyone in. ``csrf`` is what the admin page sends with every change.
    """

    csrf: str
    created_at: float
    expires_at: float


class Snapshot(_Doc):
    """A published notebook (KV ``<instance>_snapshot_index``, key ``s.<id>``; the gateway writes).

    The notebook itself is the object ``sha256`` of the snapshot store; several snapshots of the
    same notebook share it. Only the SHA-256 of the delete token is kept, so reading the bucket
    does not let anyone delete.
    """

    id: str
    name: str
    sha256: str
    size: int
    created: float
    expires_at: float
    delete_hash: str
    session: str = ""
    owner: str = ""


class SnapshotRefs(_Doc):
    """The snapshots that hold one notebook (KV ``<instance>_snapshot_index``, key ``c.<sha256>``).

    ``deleting`` (a Unix time) marks the notebook's object being deleted after its last snapshot
    went: a new snapshot of the same notebook waits for that to finish (or for the mark to go stale).
    """

    ids: list[str] = Field(default_factory=list)
    deleting: float | None = None


class ClaimRequest(_Doc):
    """Gateway -> spawner: give me a warm sandbox of ``profile``; wait up to ``wait`` seconds for one."""

    profile: str
    wait: float = Field(default=0.0, ge=0, le=300)
    owner: str | None = None


class ClaimReply(_Doc):
    """Spawner -> gateway: the claimed sandbox, or why there is none."""

    ok: bool
    record: SandboxRecord | None = None
    reason: str = ""


class Event(_Doc):
    """A lifecycle event on the stream (subject ``<instance>.events.<type>``)."""

    type: str
    time: float = Field(default_factory=time.time)
    source: str = ""
    sandbox_id: str | None = None
    host: str | None = None
    cause: str = ""
    data: dict[str, Any] = Field(default_factory=dict)


_D = TypeVar("_D", bound=BaseModel)


def encode(doc: BaseModel) -> bytes:
    """Serialize a document for the bus."""
    return doc.model_dump_json(exclude_none=True).encode()


def decode(cls: type[_D], data: bytes) -> _D:
    """Parse a document from the bus, raising :class:`BadMessage` with what was wrong."""
    try:
        doc = cls.model_validate_json(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise BadMessage(f"bad {cls.__name__}: {where}: {first['msg']}") from None
    if getattr(doc, "v", SCHEMA_VERSION) > SCHEMA_VERSION:
        # Written by a newer nbpool, in a form this one cannot be sure to read right.
        raise BadMessage(f"bad {cls.__name__}: schema version {doc.v}; this nbpool reads up to {SCHEMA_VERSION}")  # type: ignore[attr-defined]
    return doc
