"""Who may do what on the bus: a NATS user per kind of service, allowed only the subjects it needs.

A credentials folder (``nbpool up`` makes ``<state>/bus``; ``nbpool bus-credentials DIR`` makes one
for compose or a NATS server of your own) holds, each file 0600 in a 0700 folder:

- ``<role>.password``: one random password per role (``gateway``, ``spawner``, ``router``,
  ``culler``, and ``operator`` for the ``nbpool`` command, tests and benchmarks). Kept when the
  folder is made again, so running services keep connecting.
- ``nats.conf``: the ``authorization`` block for nats-server: bcrypt hashes of those passwords,
  and each user's permissions. No anonymous user: a client without credentials is refused.
- ``ca.pem`` (only in a cluster's folders, see :mod:`nbpool.cluster`): the CA of the NATS
  servers' TLS certificates; a client finding it connects with TLS and checks the server against it.

A service given ``NBPOOL_NATS_CREDENTIALS=<folder>`` connects as the user named after its role,
with the password from its file, and with inboxes under ``_INBOX.<role>.`` (the only replies it can
receive). What each role may do (bucket names are per instance, see :mod:`nbpool.names`;
r: watch and get, w: put and delete; every role may look up and create the buckets it uses and the
events stream, never update, purge or delete one; only the gateway's snapshot store is different,
below):

========  ==========================================================  =======================  ==========
role      buckets                                                     events it publishes      claims
========  ==========================================================  =======================  ==========
gateway   sandboxes rw, activity r, spawners r, control rw,           sandbox.ending, pool.*,  asks
          admin_sessions rw, services w                               snapshot.*; reads the
                                                                      stream
spawner   sandboxes rw, activity w, routes r, control r,              sandbox.*, spawner.*     answers
          spawners w, services w
router    sandboxes r, routes rw, services w                          route.*                  -
culler    sandboxes rw, activity r, spawners r, hosts rw, services w  cull.*, host.*           -
operator  everything (``nbpool status``/``events``, tests, benchmarks)
========  ==========================================================  =======================  ==========

The gateway also keeps the snapshots (:mod:`nbpool.snapshots`): the ``snapshots`` object store
and the ``snapshot_index`` bucket, read and written, and, for these two alone, updating their
configuration (a changed ``NBPOOL_SNAPSHOT_TTL`` or budget) and purging the object store's
subjects (replacing or deleting an object purges its old chunks), and listing stream names
(nats-py finds an object's stream by its subject).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bcrypt

from nbpool.names import Names

__all__ = ["OPERATOR", "ROLES", "Credentials", "CredentialsError", "Role", "load", "permissions", "provision", "write_private"]

OPERATOR = "operator"
_API = "$JS.API"


class CredentialsError(Exception):
    """A credentials folder lacks what a role needs."""


@dataclass(frozen=True)
class Role:
    """What one kind of service does on the bus."""

    #: Bucket (an attribute of :class:`Names`) -> "r", "w" or "rw".
    buckets: dict[str, str] = field(default_factory=dict)
    #: Event types it publishes (NATS wildcards allowed).
    events: tuple[str, ...] = ()
    reads_events: bool = False
    claims: Literal["asks", "answers", ""] = ""
    #: Keeps the snapshot store (object store ``snapshots`` and bucket ``snapshot_index``).
    snapshots: bool = False


ROLES: dict[str, Role] = {
    "gateway": Role(
        buckets={"sandboxes": "rw", "activity": "r", "spawners": "r", "control": "rw", "admin_sessions": "rw", "services": "w"},
        events=("sandbox.ending", "pool.*", "snapshot.*"), reads_events=True, claims="asks", snapshots=True,
    ),
    "spawner": Role(
        buckets={"sandboxes": "rw", "activity": "w", "routes": "r", "control": "r", "spawners": "w", "services": "w"},
        events=("sandbox.*", "spawner.*"), claims="answers",
    ),
    "router": Role(buckets={"sandboxes": "r", "routes": "rw", "services": "w"}, events=("route.*",)),
    "culler": Role(
        buckets={"sandboxes": "rw", "activity": "r", "spawners": "r", "hosts": "rw", "services": "w"}, events=("cull.*", "host.*"),
    ),
}


@dataclass(frozen=True)
class Credentials:
    """How one service logs in to NATS (and, for a cluster's servers, the CA their TLS certificates are from)."""

    user: str
    password: str
    ca: Path | None = None

    @property
    def inbox_prefix(self) -> str:
        return f"_INBOX.{self.user}"

    def __repr__(self) -> str:  # never print the password
        return f"Credentials(user={self.user!r})"


def _reading(stream: str) -> list[str]:
    """Subjects a client publishes to follow (ordered consumers) and get from a stream."""
    return [
        f"{_API}.CONSUMER.CREATE.{stream}", f"{_API}.CONSUMER.CREATE.{stream}.>",
        f"{_API}.CONSUMER.INFO.{stream}.>",
        f"{_API}.DIRECT.GET.{stream}", f"{_API}.DIRECT.GET.{stream}.>", f"{_API}.STREAM.MSG.GET.{stream}",
        f"$JS.FC.{stream}.>",  # flow-control answers of push consumers
    ]


def permissions(names: Names, role: str) -> dict[str, Any]:
    """The nats-server ``permissions`` of ``role`` for the instance ``names``."""
    spec = ROLES[role]
    inbox = f"_INBOX.{role}.>"
    publish: list[str] = []
    for attr, mode in spec.buckets.items():
        bucket = getattr(names, attr)
        stream = f"KV_{bucket}"
        publish += [f"{_API}.STREAM.INFO.{stream}", f"{_API}.STREAM.CREATE.{stream}"]
        if "r" in mode:
            publish += _reading(stream)
        if "w" in mode:
            publish.append(f"$KV.{bucket}.>")
    if spec.snapshots:
        objects, index = f"OBJ_{names.snapshots}", f"KV_{names.snapshot_index}"
        for stream in (objects, index):
            publish += [f"{_API}.STREAM.{op}.{stream}" for op in ("INFO", "CREATE", "UPDATE")]
            publish += _reading(stream)
        publish += [f"$O.{names.snapshots}.>", f"{_API}.STREAM.PURGE.{objects}", f"$KV.{names.snapshot_index}.>"]
        # nats-py's object reads look their stream up by subject (it lists only names, no contents).
        publish.append(f"{_API}.STREAM.NAMES")
    events = names.events_stream
    publish += [f"{_API}.STREAM.INFO.{events}", f"{_API}.STREAM.CREATE.{events}"]
    publish += [names.event_subject(kind) for kind in spec.events]
    if spec.reads_events:
        publish += _reading(events)
    subscribe = [inbox]
    if spec.claims == "asks":
        publish.append(names.claim_subject("*"))
    elif spec.claims == "answers":
        subscribe.append(names.claim_subject("*"))
    perms: dict[str, Any] = {"publish": {"allow": publish}, "subscribe": {"allow": subscribe}}
    if spec.claims == "answers":
        # A claim may wait in line up to 300 s (ClaimRequest.wait): the reply must still be allowed then.
        perms["allow_responses"] = {"max": 1, "expires": "6m"}
    return perms


def write_private(path: Path, text: str) -> None:
    """Write ``path`` readable by its owner only (made 0600 before any byte is in it)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def provision(folder: Path, names: Names, split: bool = False, owners: Mapping[str, tuple[int, int]] | None = None) -> Path:
    """Make (or refresh) a credentials folder for the instance ``names``; the nats.conf path.

    ``split`` puts each role's file in a folder of its own (``<role>/<role>.password``, and
    ``nats/nats.conf``), for containers that each mount only theirs; the folder itself is left as
    it is (in compose it holds the mounts). ``owners`` maps a role, or ``nats``, or ``*`` for all
    the others, to the (uid, gid) given its folder and file: a service in a container runs as
    another user than this command, and without capabilities even root reads only its own files.
    """
    owners = dict(owners or {})

    def own(path: Path, part: str) -> None:
        owner = owners.get(part, owners.get("*"))
        if owner is not None:
            os.chown(path, *owner)

    def place(part: str) -> Path:
        where = folder / part if split else folder
        where.mkdir(parents=True, exist_ok=True)
        where.chmod(0o700)
        own(where, part if split else "*")
        return where

    if not split:
        place("*")
    users = []
    for role in [*ROLES, OPERATOR]:
        path = place(role) / f"{role}.password"
        if not path.exists() or not path.read_text().strip():
            write_private(path, secrets.token_urlsafe(32) + "\n")
        path.chmod(0o600)
        own(path, role if split else "*")
        hashed = bcrypt.hashpw(path.read_text().strip().encode(), bcrypt.gensalt(rounds=10, prefix=b"2a")).decode()
        user: dict[str, Any] = {"user": role, "password": hashed}
        if role != OPERATOR:
            user["permissions"] = permissions(names, role)
        users.append(user)
    conf = place("nats") / "nats.conf"
    # nats-server reads JSON as configuration; the hashes are quoted, so their "$" is no variable.
    write_private(conf, json.dumps({"authorization": {"users": users}}, indent=1) + "\n")
    own(conf, "nats" if split else "*")
    return conf


def load(folder: Path, role: str) -> Credentials:
    """The credentials of ``role`` from ``folder``."""
    path = folder / f"{role}.password"
    try:
        password = path.read_text().strip()
    except OSError as err:
        raise CredentialsError(f"NBPOOL_NATS_CREDENTIALS: cannot read {path} ({err.strerror})") from None
    if not password:
        raise CredentialsError(f"NBPOOL_NATS_CREDENTIALS: {path} is empty")
    # A cluster's folders (nbpool cluster init) also hold the CA that signed the servers' certificates.
    ca = folder / "ca.pem"
    return Credentials(role, password, ca if ca.exists() else None)
