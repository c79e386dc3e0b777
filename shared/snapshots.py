"""Snapshots: notebooks copied out of sandboxes, kept on the bus for anyone with the link.

Two parts on JetStream, both kept by ``NBPOOL_BUS_REPLICAS`` servers, on disk:

- the object store ``<instance>_snapshots``: each notebook once, named by the SHA-256 of its
  bytes (the same notebook published twice is stored once). Its stream's ``max_age`` is the
  snapshot TTL and its ``max_bytes`` the budget (``NBPOOL_SNAPSHOT_BUDGET``): a write past the
  budget is refused (:class:`StoreFull`) rather than pushing older snapshots out.
- the KV bucket ``<instance>_snapshot_index``: ``s.<id>`` -> :class:`~nbpool.models.Snapshot`
  (name, size, times, the hash of its delete token), and ``c.<sha256>`` ->
  :class:`~nbpool.models.SnapshotRefs` (which snapshots hold that notebook). Entries live for the
  TTL plus :data:`GONE_GRACE`, so an expired snapshot is told apart from one that never existed
  (410 rather than 404) for a week.

Publishing a notebook that is already stored writes it again: its chunks get a new age, so the
object lives as long as its newest snapshot. Deleting a snapshot deletes the notebook only with its
last snapshot; a ``deleting`` mark on ``c.<sha256>`` makes a publish of the same notebook at that
moment wait until the object is gone, so it is written again rather than lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js.api import ObjectStoreConfig, StorageType
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from nbpool import logs
from nbpool.bus import Bus
from nbpool.models import BadMessage, Snapshot, SnapshotRefs, decode, encode
from nbpool.transient import Backoff, retrying, transient

__all__ = [
    "GONE_GRACE", "SNAPSHOT_ID", "SnapshotError", "SnapshotExpired", "SnapshotNotFound", "SnapshotStore", "StoreFull",
    "WrongDeleteToken",
]

log = logs.get("nbpool.snapshots")

#: Seconds an expired snapshot's record is kept, to answer "expired" (410) rather than "unknown" (404).
GONE_GRACE = 7 * 86400.0
#: A snapshot id: 16 random hex digits (64 bits), as a path parameter.
SNAPSHOT_ID = r"^[0-9a-f]{16}$"
#: Seconds after which a ``deleting`` mark is taken for a deleter that died half-way.
_STALE_MARK = 30.0
#: JetStream's "stream name already in use with a different configuration".
_EXISTS = 10058
#: JetStream's errors for a stream at its max_bytes (discard new) or out of storage.
_FULL_CODES = {10047, 10054, 10077}
#: Another writer changed the key first (compare-and-set lost).
_LOST_RACE = (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError, nats.js.errors.BadRequestError)


class SnapshotError(Exception):
    """What the store cannot do, with the HTTP status that says so."""

    status = 500


class SnapshotNotFound(SnapshotError):
    status = 404


class SnapshotExpired(SnapshotError):
    status = 410


class WrongDeleteToken(SnapshotError):
    status = 403


class StoreFull(SnapshotError):
    status = 507


@dataclass(frozen=True)
class Created:
    """A new snapshot and the token that deletes it (shown once, never stored)."""

    snapshot: Snapshot
    delete_token: str


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


class SnapshotStore:
    """The snapshots of one nbpool instance (see the module docstring). :meth:`ensure` first."""

    def __init__(self, bus: Bus, ttl: float, budget: int, replicas: int = 1) -> None:
        self._bus = bus
        self.ttl = ttl
        self.budget = budget
        self._replicas = replicas
        self._objects: ObjectStore | None = None
        self._index: KeyValue | None = None

    # ---- set-up ----------------------------------------------------------------------------

    async def ensure(self) -> None:
        """Create the object store and the index, or bring their TTL and budget to the settings.

        Idempotent, retried through a bus election.
        """
        names = self._bus.names
        await retrying(self._ensure_objects, "create snapshot store")
        self._index = await retrying(lambda: self._bus.ensure_bucket(names.snapshot_index, self.ttl + GONE_GRACE,
                                                                     self._replicas), "create snapshot index")
        await retrying(lambda: self._keep(f"KV_{names.snapshot_index}", self.ttl + GONE_GRACE, None), "update snapshot index")

    async def _ensure_objects(self) -> None:
        js, bucket = self._bus.js, self._bus.names.snapshots
        try:
            self._objects = await js.object_store(bucket)
        except nats.js.errors.NotFoundError:
            config = ObjectStoreConfig(ttl=self.ttl, max_bytes=self.budget, storage=StorageType.FILE, replicas=self._replicas)
            try:
                self._objects = await js.create_object_store(bucket, config)
            except nats.js.errors.BadRequestError as err:
                if err.err_code != _EXISTS:
                    raise
                self._objects = await js.object_store(bucket)
        await self._keep(f"OBJ_{bucket}", self.ttl, self.budget)

    async def _keep(self, stream: str, max_age: float, max_bytes: int | None) -> None:
        """Update ``stream``'s age and size limits when the settings changed since it was made."""
        info = await self._bus.js.stream_info(stream)
        config = info.config
        same_age = config.max_age is not None and abs(config.max_age - max_age) < 1
        if same_age and (max_bytes is None or config.max_bytes == max_bytes):
            return
        log.info("snapshot limits changed", extra={"stream": stream, "max_age": max_age, "max_bytes": max_bytes})
        config.max_age = max_age
        if max_bytes is not None:
            config.max_bytes = max_bytes
        await self._bus.js.update_stream(config)

    @property
    def objects(self) -> ObjectStore:
        assert self._objects is not None, "SnapshotStore.ensure() first"
        return self._objects

    @property
    def index(self) -> KeyValue:
        assert self._index is not None, "SnapshotStore.ensure() first"
        return self._index

    # ---- publishing ----------------------------------------------------------------------------

    async def create(self, name: str, data: bytes, session: str = "", owner: str = "") -> Created:
        """Store ``data`` (a notebook, already checked) as a new snapshot called ``name``.

        Raises :class:`StoreFull` when the budget has no room for it; then nothing is stored.
        """
        sha = hashlib.sha256(data).hexdigest()
        now = time.time()
        token = secrets.token_urlsafe(24)
        snap = Snapshot(
            id=secrets.token_hex(8), name=name, sha256=sha, size=len(data), created=now, expires_at=now + self.ttl,
            delete_hash=_hash(token), session=session, owner=owner,
        )
        await self._refer(sha, snap.id)
        try:
            await self._write_object(sha, data)
            await self._create_entry(snap)
        except BaseException:
            await self._unrefer(sha, snap.id)  # nothing half-done: the notebook goes if nothing else holds it
            raise
        log.info("snapshot created", extra={"snapshot": snap.id, "sandbox": session, "bytes": len(data), "sha256": sha[:12]})
        return Created(snap, token)

    async def _write_object(self, sha: str, data: bytes) -> None:
        try:
            current = await self.objects.get_info(sha)
            stored = current.size or 0
        except nats.js.errors.ObjectNotFoundError:
            stored = 0
        status = await self.objects.status()
        if status.size - stored + len(data) > self.budget:
            raise StoreFull(f"the snapshot store is full ({status.size} of {self.budget} bytes, NBPOOL_SNAPSHOT_BUDGET); "
                            "try again when older snapshots have expired")
        try:
            await retrying(lambda: self.objects.put(sha, data), "store snapshot")
        except nats.js.errors.APIError as err:
            if getattr(err, "err_code", None) in _FULL_CODES:
                raise StoreFull(f"the snapshot store is full (NBPOOL_SNAPSHOT_BUDGET is {self.budget} bytes): {err.description}") from None
            raise

    async def _create_entry(self, snap: Snapshot) -> None:
        key, doc = f"s.{snap.id}", encode(snap)
        backoff = Backoff(op="create snapshot")
        while True:
            try:
                await self.index.create(key, doc)
                return
            except Exception as err:
                if not transient(err) or not await backoff.pause():
                    raise
            # Timed out: it may have been written. Ours if it reads back as we wrote it.
            try:
                if (await self.index.get(key)).value == doc:
                    return
            except Exception as err:
                if not transient(err) and not isinstance(err, nats.js.errors.KeyNotFoundError):
                    raise

    async def _refer(self, sha: str, snapshot_id: str) -> None:
        """Add ``snapshot_id`` to the holders of notebook ``sha`` (compare-and-set; waits out a delete)."""
        key = f"c.{sha}"
        deadline = time.monotonic() + _STALE_MARK + 5
        backoff = Backoff(op="refer snapshot")
        while True:
            refs, revision = await self._read_refs(key)
            if refs is not None and snapshot_id in refs.ids:
                return  # an update that timed out was applied after all
            if refs is not None and refs.deleting is not None and time.time() - refs.deleting < _STALE_MARK:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"notebook {sha[:12]} is still being deleted")
                await asyncio.sleep(0.2)  # its last snapshot is being deleted: write it again after
                continue
            ids = [] if refs is None or refs.deleting is not None else refs.ids
            doc = encode(SnapshotRefs(ids=[*ids, snapshot_id]))
            try:
                if revision is None:
                    await self.index.create(key, doc)
                else:
                    await self.index.update(key, doc, last=revision)
                return
            except _LOST_RACE:
                continue  # someone else changed it first: read again
            except Exception as err:
                if not transient(err) or not await backoff.pause():
                    raise

    async def _read_refs(self, key: str) -> tuple[SnapshotRefs | None, int | None]:
        try:
            entry = await retrying(lambda: self.index.get(key), "read snapshot refs")
        except nats.js.errors.KeyNotFoundError:
            return None, None
        try:
            return decode(SnapshotRefs, entry.value or b""), entry.revision
        except BadMessage:
            return SnapshotRefs(), entry.revision

    async def _unrefer(self, sha: str, snapshot_id: str) -> None:
        """Remove ``snapshot_id`` from notebook ``sha``'s holders; delete the notebook with its last."""
        key = f"c.{sha}"
        backoff = Backoff(op="unrefer snapshot")
        mark = time.time()
        while True:
            refs, revision = await self._read_refs(key)
            if refs is None or revision is None:
                return
            if refs.deleting == mark:
                break  # our mark, written by an update that timed out
            if refs.deleting is not None or snapshot_id not in refs.ids:
                return  # another deleter is on it, or our update went through
            left = [i for i in refs.ids if i != snapshot_id and await self._alive(i)]
            try:
                if left:
                    await self.index.update(key, encode(SnapshotRefs(ids=left)), last=revision)
                    return
                revision = await self.index.update(key, encode(SnapshotRefs(deleting=mark)), last=revision)
                break
            except _LOST_RACE:
                continue
            except Exception as err:
                if not transient(err) or not await backoff.pause():
                    raise
        try:
            await retrying(lambda: self.objects.delete(sha), "delete snapshot object")
        except nats.js.errors.ObjectNotFoundError:
            pass
        try:
            await self.index.delete(key, last=revision)
        except (*_LOST_RACE, TimeoutError, nats.errors.Error):
            pass  # the mark goes stale by itself

    async def _alive(self, snapshot_id: str) -> bool:
        try:
            await self.info(snapshot_id)
            return True
        except SnapshotError:
            return False

    # ---- reading and deleting ------------------------------------------------------------------

    async def info(self, snapshot_id: str) -> Snapshot:
        """The snapshot ``snapshot_id``: :class:`SnapshotNotFound` if unknown (or deleted),
        :class:`SnapshotExpired` if its time is up."""
        try:
            entry = await retrying(lambda: self.index.get(f"s.{snapshot_id}"), "read snapshot")
            snap = decode(Snapshot, entry.value or b"")
        except (nats.js.errors.KeyNotFoundError, BadMessage):
            raise SnapshotNotFound(f"no snapshot {snapshot_id}: it never existed or was deleted") from None
        if snap.expires_at <= time.time():
            raise SnapshotExpired(f"snapshot {snapshot_id} ({snap.name}) has expired; snapshots live "
                                  f"{self.ttl / 86400:g} days")
        return snap

    async def notebook(self, snap: Snapshot) -> bytes:
        """The notebook's bytes (:class:`SnapshotExpired` if the store let it go already)."""
        try:
            result = await retrying(lambda: self.objects.get(snap.sha256), "read snapshot object")
        except nats.js.errors.ObjectNotFoundError:
            raise SnapshotExpired(f"snapshot {snap.id} ({snap.name}) is no longer stored") from None
        return bytes(result.data or b"")

    async def delete(self, snapshot_id: str, token: str) -> None:
        """Delete a snapshot with its delete token (the notebook too, unless another snapshot holds it)."""
        try:
            entry = await retrying(lambda: self.index.get(f"s.{snapshot_id}"), "read snapshot")
            snap = decode(Snapshot, entry.value or b"")
        except (nats.js.errors.KeyNotFoundError, BadMessage):
            raise SnapshotNotFound(f"no snapshot {snapshot_id}: it never existed or was deleted") from None
        if not hmac.compare_digest(_hash(token), snap.delete_hash):
            raise WrongDeleteToken("wrong delete token for this snapshot")
        try:
            await self.index.delete(f"s.{snapshot_id}", last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise SnapshotNotFound(f"no snapshot {snapshot_id}: it was deleted just now") from None
        await self._unrefer(snap.sha256, snapshot_id)
        log.info("snapshot deleted", extra={"snapshot": snapshot_id})

    async def usage(self) -> int:
        """Bytes the stored notebooks take (against NBPOOL_SNAPSHOT_BUDGET)."""
        return int((await self.objects.status()).size)
