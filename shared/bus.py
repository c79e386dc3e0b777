"""The bus: a NATS connection with JetStream, the instance's buckets and stream, and live KV mirrors.

Reconnects are normal: the connection retries forever, and every :class:`KVMirror` re-reads its
bucket after the bus comes back, so watchers never silently go stale.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.kv import KV_DEL, KV_PURGE, KeyValue
from pydantic import BaseModel

from nbpool import logs
from nbpool.busauth import ROLES, Credentials
from nbpool.metrics import BUS_ERRORS
from nbpool.models import BadMessage, Event, ServiceBeat, decode, encode
from nbpool.names import Names
from nbpool.transient import retrying

__all__ = ["ADMIN_SESSION_MAX_TTL", "SPAWNER_TTL", "Bus", "KVMirror"]

log = logs.get("nbpool.bus")

#: A spawner whose heartbeat is older than this is gone (the bucket's TTL).
SPAWNER_TTL = 10.0
# Admin sessions end by themselves after a day at the most (NBPOOL_ADMIN_SESSION_TTL is shorter).
ADMIN_SESSION_MAX_TTL = 24 * 3600.0

_M = TypeVar("_M", bound=BaseModel)
#: How long closing waits for the subscriptions to drain (nats-py's own limit), a second less than
#: :meth:`Bus.close` waits in all: cancelling nats-py's drain from outside leaves its gathered
#: subscription drains with an exception nobody reads ("_GatheringFuture exception was never
#: retrieved" in the log, seen when a bus node had died); its own timeout reads it.
_DRAIN_S = 4

#: JetStream's "stream name already in use with a different configuration".
_EXISTS = 10058


class Bus:
    """One service's connection to the bus."""

    def __init__(self, nc: Client, names: Names, source: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=5.0)
        self.names = names
        self.source = source
        #: Incremented on every reconnect; mirrors compare it to know when to re-read.
        self.generation = 0
        self.closing = False
        self._kv: dict[str, KeyValue] = {}

    @classmethod
    async def connect(
        cls, url: str, names: Names, source: str, stop: asyncio.Event | None = None, credentials: Credentials | None = None,
    ) -> Bus:
        """Connect, retrying until a server answers (or ``stop`` is set), then keep reconnecting forever.

        ``url`` may name several servers of one cluster, comma-separated: the client moves to
        another when its server goes away. With ``credentials`` (see :mod:`nbpool.busauth`) as
        that user, with inboxes under its prefix, and with TLS checked against their CA if they
        have one.
        """
        holder: list[Bus] = []

        async def reconnected() -> None:
            if holder:
                holder[0].generation += 1
            log.info("bus reconnected", extra={"url": url})

        async def disconnected() -> None:
            if holder and not holder[0].closing:
                BUS_ERRORS.labels("disconnect").inc()
                log.warning("bus disconnected", extra={"url": url})

        async def error(err: Exception) -> None:
            if "violation" in str(err).lower():
                # A subject outside this service's permissions, or refused credentials: a bug or
                # a misconfiguration, never routine.
                BUS_ERRORS.labels("refused").inc()
                log.error("bus refused", extra={"error": str(err)})
            else:
                BUS_ERRORS.labels("error").inc()
                log.debug("bus error", extra={"error": repr(err)})

        login: dict[str, Any] = {}
        if credentials is not None:
            login = {"user": credentials.user, "password": credentials.password, "inbox_prefix": credentials.inbox_prefix}
            if credentials.ca is not None:
                login["tls"] = ssl.create_default_context(cafile=str(credentials.ca))
        servers = [part.strip() for part in url.split(",") if part.strip()]

        delay = 0.2
        while True:
            try:
                nc = await nats.connect(
                    servers,
                    name=source,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    drain_timeout=_DRAIN_S,
                    reconnected_cb=reconnected,
                    disconnected_cb=disconnected,
                    error_cb=error,
                    **login,
                )
                break
            except (OSError, nats.errors.Error) as err:
                if stop is not None and stop.is_set():
                    raise
                log.warning("bus not reachable yet, retrying", extra={"url": url, "error": repr(err)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        bus = cls(nc, names, source)
        holder.append(bus)
        return bus

    async def ensure(self, role: str | None = None, replicas: int = 1) -> None:
        """Create the buckets ``role`` uses (all without one) and the events stream if they are missing.

        Each is kept by ``replicas`` servers (``NBPOOL_BUS_REPLICAS``: 3 in a cluster; 1 for one
        server). Idempotent, and retried through a bus election. Only without a role (the
        operator) is an events stream of other settings updated.
        """
        n = self.names
        ttls = {"spawners": SPAWNER_TTL, "services": SPAWNER_TTL, "admin_sessions": ADMIN_SESSION_MAX_TTL}
        used = ROLES[role].buckets if role is not None else ["sandboxes", "activity", "routes", "spawners", "services", "control", "hosts", "admin_sessions"]
        for attr in used:
            await retrying(functools.partial(self.ensure_bucket, getattr(n, attr), ttls.get(attr), replicas), "create bucket")
        config = StreamConfig(
            name=n.events_stream,
            subjects=[f"{n.events_prefix}.>"],
            storage=StorageType.FILE,
            max_age=24 * 3600,
            max_msgs=200_000,
            num_replicas=replicas,
        )

        async def stream() -> None:
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError as err:
                if err.err_code != _EXISTS:
                    raise  # not "exists": "no suitable peers" while a cluster forms is retried
                if role is None:
                    await self.js.update_stream(config)

        await retrying(stream, "create stream")

    async def ensure_bucket(self, bucket: str, ttl: float | None, replicas: int) -> KeyValue:
        """The KV bucket ``bucket``, created (history 1, on disk) if it is missing."""
        try:
            self._kv[bucket] = await self.js.key_value(bucket)
        except nats.js.errors.BucketNotFoundError:
            config = KeyValueConfig(bucket=bucket, history=1, ttl=ttl, storage=StorageType.FILE, replicas=replicas)
            try:
                self._kv[bucket] = await self.js.create_key_value(config)
            except nats.js.errors.BadRequestError as err:
                if err.err_code != _EXISTS:
                    raise
                # Another service created it between our two calls (with other settings).
                self._kv[bucket] = await self.js.key_value(bucket)
        return self._kv[bucket]

    async def kv(self, bucket: str) -> KeyValue:
        """The key-value bucket ``bucket`` (see :class:`nbpool.names.Names`)."""
        if bucket not in self._kv:
            self._kv[bucket] = await self.js.key_value(bucket)
        return self._kv[bucket]

    async def event(self, event_type: str, sandbox_id: str | None = None, **fields: Any) -> None:
        """Publish a lifecycle event, retried through a bus election; an outage is logged, never raised.

        A retry after a timeout may repeat a publish that was stored: the message id makes the
        stream store it once (JetStream's duplicate window).
        """
        doc = Event(type=event_type, source=self.source, sandbox_id=sandbox_id, **fields)
        subject, data = self.names.event_subject(event_type), encode(doc)
        headers = {"Nats-Msg-Id": uuid.uuid4().hex}
        try:
            await retrying(lambda: self.js.publish(subject, data, headers=headers), "publish event")
        except (TimeoutError, nats.errors.Error) as err:
            log.warning("event not published", extra={"type": event_type, "sandbox": sandbox_id, "error": repr(err)})

    async def follow_events(self, since: float | None = None, everything: bool = False) -> Any:
        """A subscription to the lifecycle events: new ones only, or from ``since`` (Unix time), or all stored."""
        if everything:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        elif since is not None:
            start = datetime.fromtimestamp(since, UTC)
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
        else:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        return await self.js.subscribe(
            f"{self.names.events_prefix}.>", stream=self.names.events_stream, ordered_consumer=True, config=config)

    async def presence(self, kind: str, interval: float = 3.0) -> None:
        """Announce this process in the services bucket until cancelled (``nbpool status`` lists it)."""
        host = socket.gethostname()
        key = f"{kind}-{host}-{os.getpid()}".replace(".", "-")
        doc = ServiceBeat(kind=kind, host=host, pid=os.getpid(), started_at=time.time())
        kv = await self.kv(self.names.services)
        try:
            while True:
                try:
                    await kv.put(key, encode(doc.model_copy(update={"at": time.time()})))
                except (TimeoutError, nats.errors.Error) as err:
                    log.debug("presence not written", extra={"error": repr(err)})
                await asyncio.sleep(interval)
        finally:
            try:
                await kv.delete(key)
            except (TimeoutError, nats.errors.Error) as err:
                log.debug("presence not deleted; it expires", extra={"error": repr(err)})

    async def close(self) -> None:
        """Stop taking work from the bus and flush what is pending."""
        self.closing = True
        if self.nc.is_closed:
            return
        try:
            if self.nc.is_connected:
                async with asyncio.timeout(_DRAIN_S + 1):
                    await self.nc.drain()
        except (TimeoutError, nats.errors.Error, OSError) as err:
            log.warning("bus not drained", extra={"error": repr(err)})
        finally:
            if not self.nc.is_closed:
                try:
                    await self.nc.close()
                except (nats.errors.Error, OSError):
                    pass


#: Seconds without news after which a mirror checks that its watcher is not stalled (see _follow).
STALL_CHECK = 2.0


class KVMirror(Generic[_M]):
    """A live local copy of one KV bucket, decoded into ``model``.

    ``items`` maps key -> (document, revision). ``on_change(key, doc_or_None)`` is called for every
    change after the first full read, and for every difference found when the mirror re-reads the
    bucket after a reconnect. ``ready`` is set once the first full read is done.
    """

    def __init__(
        self,
        bus: Bus,
        bucket: str,
        model: type[_M],
        on_change: Callable[[str, _M | None], None] | None = None,
    ) -> None:
        self._bus = bus
        self._bucket = bucket
        self._model = model
        self.on_change = on_change
        self.items: dict[str, tuple[_M, int]] = {}
        self.ready = asyncio.Event()

    def get(self, key: str) -> _M | None:
        item = self.items.get(key)
        return item[0] if item else None

    def values(self) -> list[_M]:
        return [doc for doc, _ in self.items.values()]

    async def run(self) -> None:
        """Follow the bucket until cancelled."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the bus went away mid-read: read again once it is back
                log.warning("mirror restarting", extra={"bucket": self._bucket, "error": repr(err)})
                await asyncio.sleep(0.5)

    async def _follow(self) -> None:
        generation = self._bus.generation
        kv = await self._bus.kv(self._bucket)
        watcher = await kv.watchall()
        pending: asyncio.Future[Any] | None = None
        try:
            snapshot: dict[str, tuple[_M, int]] = {}
            initial = True
            # The first read ends with the entry after which nothing is pending (delta 0).
            # nats-py also signals the end (None), but can do so before handing anything over,
            # when the server pushed every value before answering its consumer-info request;
            # trusted, a restarting spawner would see no records and remove every sandbox as an
            # orphan. So its signal ends the first read only if the bucket holds nothing, and
            # otherwise at a deadline, and then only if everything up to the bucket's last entry
            # arrived (values that expired meanwhile never come; the last one cannot have
            # expired while others are left). A read that stalled (its consumer lost to a bus
            # node that died) is started again rather than taken for the whole bucket.
            give_up_at: float | None = None
            seen = 0  # the stream sequence of the last entry handed over
            # After the first read, a watcher whose server-side consumer died with its bus node
            # can stay silent without any error (nats-py recreates it only later, if at all).
            # So while nothing arrives, every STALL_CHECK seconds the bucket's last sequence is
            # read: an entry that was already written at one check and has still not arrived
            # at the next means the watcher is stalled, and the bucket is read afresh.
            idle_since = time.monotonic()
            owed = 0  # a sequence the bucket had at the last check that had not arrived then
            while True:
                # Not watcher.updates(timeout): its wait_for can swallow our cancellation (3.11).
                if pending is None:
                    pending = asyncio.ensure_future(watcher.__anext__())  # type: ignore[no-untyped-call]
                done, _ = await asyncio.wait({pending}, timeout=1.0)
                if not done:
                    if self._bus.generation != generation:
                        return  # reconnected: the watcher may have missed changes, read afresh
                    if initial and give_up_at is not None and time.monotonic() > give_up_at:
                        last = await self._last_sequence()
                        if last is None or last > seen:
                            log.warning("first read incomplete, reading again", extra={"bucket": self._bucket})
                            return
                        self._replace(snapshot)
                        initial = False
                    elif not initial and time.monotonic() - idle_since >= STALL_CHECK:
                        if owed > seen:
                            log.warning("mirror stalled, reading again", extra={"bucket": self._bucket,
                                                                                 "arrived": seen, "written": owed})
                            return
                        last = await self._last_sequence()
                        owed = last if last is not None and last > seen else 0
                        idle_since = time.monotonic()
                    continue
                entry, pending = pending.result(), None
                idle_since = time.monotonic()
                if entry is not None:
                    seen = max(seen, entry.revision or 0)
                if entry is None:
                    if initial:
                        if await self._holds_messages():
                            give_up_at = time.monotonic() + 5.0
                        else:
                            self._replace(snapshot)
                            initial = False
                    continue
                doc, bad = None, False
                if entry.operation not in (KV_DEL, KV_PURGE):
                    try:
                        doc = decode(self._model, entry.value or b"")
                    except BadMessage as err:
                        log.warning("bad message skipped", extra={"bucket": self._bucket, "key": entry.key, "error": str(err)})
                        bad = True
                if not initial:
                    if not bad:
                        self._apply(entry.key, doc, entry.revision or 0)
                    continue
                if not bad:
                    if doc is None:
                        snapshot.pop(entry.key, None)
                    else:
                        snapshot[entry.key] = (doc, entry.revision or 0)
                if not entry.delta:
                    self._replace(snapshot)
                    initial = False
        finally:
            if pending is not None:
                pending.cancel()
            try:
                await watcher.stop()  # type: ignore[no-untyped-call]
            except Exception:  # the subscription may already be gone with the connection
                pass

    async def _last_sequence(self) -> int | None:
        """The bucket's last stream sequence, or None when the bus does not say within a second."""
        try:
            async with asyncio.timeout(1.0):
                info = await self._bus.js.stream_info(f"KV_{self._bucket}")
        except (TimeoutError, nats.errors.Error):
            return None
        return int(info.state.last_seq)

    async def _holds_messages(self) -> bool:
        info = await self._bus.js.stream_info(f"KV_{self._bucket}")
        return bool(info.state.messages)

    def _replace(self, snapshot: dict[str, tuple[_M, int]]) -> None:
        old = self.items
        self.items = dict(snapshot)
        first = not self.ready.is_set()
        self.ready.set()
        if self.on_change is None:
            return
        for key in old.keys() - snapshot.keys():
            self.on_change(key, None)
        for key, (doc, rev) in snapshot.items():
            if first or key not in old or old[key][1] != rev:
                self.on_change(key, doc)

    def _apply(self, key: str, doc: _M | None, revision: int) -> None:
        if doc is None:
            if self.items.pop(key, None) is None:
                return
        else:
            self.items[key] = (doc, revision)
        if self.on_change is not None:
            self.on_change(key, doc)
