"""Names of the buckets, stream and subjects on the bus, per nbpool instance.

Two instances (``NBPOOL_INSTANCE``) can share one NATS server without seeing each other.

=====================  ===========================  =========================================
what                   name (instance ``nbpool``)   contents
=====================  ===========================  =========================================
KV bucket              ``nbpool_sandboxes``         key sandbox id -> SandboxRecord
KV bucket              ``nbpool_activity``          key sandbox id -> Activity (spawner writes)
KV bucket              ``nbpool_routes``            key sandbox id -> Route (router writes)
KV bucket (TTL)        ``nbpool_spawners``          key spawner id -> SpawnerBeat
KV bucket (TTL)        ``nbpool_services``          key <kind>-<host>-<pid> -> ServiceBeat
KV bucket              ``nbpool_control``           key ``drain`` -> Drain (the admin writes)
KV bucket              ``nbpool_hosts``             key spawner id -> HostLoss (a lost host; the culler writes)
KV bucket (TTL)        ``nbpool_admin_sessions``    key SHA-256 of a session id -> AdminSession
object store (TTL)     ``nbpool_snapshots``         object SHA-256 of a notebook -> the notebook (snapshots)
KV bucket (TTL)        ``nbpool_snapshot_index``    key ``s.<id>`` -> Snapshot, ``c.<sha256>`` -> SnapshotRefs
stream                 ``NBPOOL_EVENTS``            subjects ``nbpool.events.>``
request/reply          ``nbpool.claim.<spawner>``   ClaimRequest -> ClaimReply
=====================  ===========================  =========================================
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Names"]


@dataclass(frozen=True)
class Names:
    """Bus names for one nbpool instance."""

    instance: str

    @property
    def sandboxes(self) -> str:
        return f"{self.instance}_sandboxes"

    @property
    def activity(self) -> str:
        return f"{self.instance}_activity"

    @property
    def routes(self) -> str:
        return f"{self.instance}_routes"

    @property
    def spawners(self) -> str:
        return f"{self.instance}_spawners"

    @property
    def services(self) -> str:
        return f"{self.instance}_services"

    @property
    def control(self) -> str:
        return f"{self.instance}_control"

    @property
    def hosts(self) -> str:
        return f"{self.instance}_hosts"

    @property
    def admin_sessions(self) -> str:
        return f"{self.instance}_admin_sessions"

    @property
    def snapshots(self) -> str:
        return f"{self.instance}_snapshots"

    @property
    def snapshot_index(self) -> str:
        return f"{self.instance}_snapshot_index"

    @property
    def events_stream(self) -> str:
        return f"{self.instance.upper()}_EVENTS"

    @property
    def events_prefix(self) -> str:
        return f"{self.instance}.events"

    def event_subject(self, event_type: str) -> str:
        return f"{self.events_prefix}.{event_type}"

    def claim_subject(self, spawner_id: str) -> str:
        return f"{self.instance}.claim.{spawner_id}"
