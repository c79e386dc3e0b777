"""The ``nbpool`` command: ``up``, ``events``, ``status``, ``bus-credentials``, ``cluster init``, ``profile build``."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats.errors

from nbpool import __version__, busauth, cluster, logs
from nbpool.aio import cancel_and_wait
from nbpool.bus import SPAWNER_TTL, Bus, KVMirror
from nbpool.busauth import OPERATOR
from nbpool.embedded import Supervisor, UpSettings
from nbpool.models import BadMessage, Event, HostLoss, SandboxRecord, ServiceBeat, SpawnerBeat, decode
from nbpool.names import Names
from nbpool.profiles import BuildFailed, build_profile, content_profiles
from nbpool.settings import CommonSettings, SettingsError, load

__all__ = ["main", "operator_settings"]


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells)


def format_event(event: Event) -> str:
    """One line per event, for people."""
    parts = [_stamp(event.time), event.type.ljust(18), (event.sandbox_id or "-").ljust(12)]
    if event.host:
        parts.append(f"host={event.host}")
    if event.cause:
        parts.append(f"cause={json.dumps(event.cause) if ' ' in event.cause else event.cause}")
    parts += [f"{k}={v}" for k, v in event.data.items()]
    parts.append(f"by={event.source}")
    return " ".join(parts)


def operator_settings() -> CommonSettings:
    """The settings of ``status`` and ``events``. In a cluster, the operator's folder of ``cluster
    init`` (NBPOOL_NATS_CREDENTIALS) names the bus nodes and the instance: they are taken from it
    unless NBPOOL_NATS_URL or NBPOOL_INSTANCE say otherwise (another instance is refused: its
    users could not read it, and asking would make empty buckets of that name)."""
    settings = load(CommonSettings)
    folder = settings.nats_credentials
    if folder is None or not (folder / cluster.SPEC).exists():
        return settings
    spec = cluster.read_spec(folder)
    if "NBPOOL_INSTANCE" in os.environ and settings.instance != spec.instance:
        raise SettingsError(f"NBPOOL_INSTANCE is {settings.instance!r} but the cluster folder {folder} is of instance "
                            f"{spec.instance!r}; unset NBPOOL_INSTANCE")
    updates: dict[str, str] = {"instance": spec.instance}
    if "NBPOOL_NATS_URL" not in os.environ:
        updates["nats_url"] = spec.nats_url
    return settings.model_copy(update=updates)


async def _events(args: argparse.Namespace, settings: CommonSettings) -> int:
    names = Names(settings.instance)
    bus = await Bus.connect(settings.nats_url, names, "nbpool-events", credentials=settings.bus_credentials(OPERATOR))
    try:
        await bus.ensure()
        since = time.time() - args.since if args.since else None
        sub = await bus.follow_events(since=since, everything=args.all)
        seen = 0
        deadline = time.monotonic() + args.timeout if args.timeout else None
        while args.count is None or seen < args.count:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            try:
                msg = await sub.next_msg(timeout=min(remaining or 3600, 3600))
            except nats.errors.TimeoutError:
                continue
            try:
                event = decode(Event, msg.data)
            except BadMessage as err:
                print(f"# skipped a bad event on {msg.subject}: {err}", file=sys.stderr)
                continue
            print(msg.data.decode() if args.json else format_event(event), flush=True)
            seen += 1
        return 0
    finally:
        await bus.close()


async def _status(args: argparse.Namespace, settings: CommonSettings) -> int:
    names = Names(settings.instance)
    bus = await Bus.connect(settings.nats_url, names, "nbpool-status", credentials=settings.bus_credentials(OPERATOR))
    try:
        await bus.ensure()
        mirrors: list[KVMirror[Any]] = [
            KVMirror(bus, names.spawners, SpawnerBeat),
            KVMirror(bus, names.sandboxes, SandboxRecord),
            KVMirror(bus, names.services, ServiceBeat),
            KVMirror(bus, names.hosts, HostLoss),
        ]
        tasks = [asyncio.ensure_future(m.run()) for m in mirrors]
        try:
            async with asyncio.timeout(10):
                await asyncio.gather(*(m.ready.wait() for m in mirrors))
        finally:
            await cancel_and_wait(*tasks)
    finally:
        await bus.close()
    now = time.time()
    timeout = settings.host_timeout
    spawners = [b for b in mirrors[0].values() if now - b.at < timeout]
    records = sorted(mirrors[1].values(), key=lambda r: r.created_at)
    services = sorted((s for s in mirrors[2].values() if now - s.at < SPAWNER_TTL), key=lambda s: (s.kind, s.host, s.pid))
    # Every host heard of: by its heartbeat (while the bucket keeps it), its records, or its loss.
    beats = {b.id: b for b in mirrors[0].values()}
    lost = {loss.host: loss for loss in mirrors[3].values()}
    hosts = []
    for host in sorted(beats.keys() | lost.keys() | {r.host for r in records}):
        beat = beats.get(host)
        state = "live" if beat is not None and now - beat.at < timeout else "lost" if host in lost else "silent"
        hosts.append({
            "id": host, "state": state, "beat_age_s": None if beat is None else round(now - beat.at, 1),
            "sandboxes": sum(1 for r in records if r.host == host),
            "claimed": sum(1 for r in records if r.host == host and r.state == "claimed"),
            "warm": sum(c.warm for c in beat.pools.values()) if beat and state == "live" else 0,
            "capacity": beat.capacity if beat else None, "lost_at": lost[host].at if host in lost else None,
        })
    if args.json:
        print(json.dumps({
            "hosts": hosts,
            "spawners": [b.model_dump() for b in spawners],
            "sandboxes": [r.model_dump(exclude={"token"}) for r in records],
            "services": [s.model_dump() for s in services],
        }, indent=1))
        return 0
    print("HOSTS")
    rows = [[h["id"], h["state"].upper() if h["state"] != "live" else "live", h["warm"], h["claimed"], h["sandboxes"],
             "-" if h["beat_age_s"] is None else _ago(h["beat_age_s"]),
             "" if h["lost_at"] is None else f"lost {_ago(now - h['lost_at'])} ago"] for h in hosts]
    print(_table(["HOST", "STATE", "WARM", "CLAIMED", "RECORDS", "BEAT", ""], rows) if rows else "(none)")
    print("\nPOOL")
    rows = []
    for beat in spawners:
        for name, c in beat.pools.items():
            health = ("yes" if not c.problem else f"NO ({c.problem})") if beat.healthy else f"NO ({beat.reason})"
            rows.append([beat.id, name, beat.runtime, health,
                         c.warm, c.starting, c.claimed, f"{c.target}", f"{beat.total}/{beat.capacity}", _ago(now - beat.at)])
    print(_table(["SPAWNER", "PROFILE", "RUNTIME", "HEALTHY", "WARM", "STARTING", "CLAIMED", "TARGET", "TOTAL", "BEAT"], rows))
    print("\nSESSIONS")
    rows = [[r.id, r.state, r.pool, r.host, _ago(now - (r.claimed_at or r.created_at)), r.owner or "-", r.ending_reason or ""]
            for r in records if r.state != "warm" or args.all]
    print(_table(["ID", "STATE", "PROFILE", "HOST", "AGE", "CLIENT", "REASON"], rows) if rows else "(none)")
    print("\nSERVICES")
    rows = [[s.kind, s.host, s.pid, _ago(now - s.started_at), _ago(now - s.at)] for s in services]
    print(_table(["SERVICE", "HOST", "PID", "UP", "BEAT"], rows) if rows else "(none: is nbpool running?)")
    return 0


def _up(args: argparse.Namespace) -> int:
    settings = load(UpSettings)
    node = args.node
    if args.role != "all":
        if args.cluster is None:
            raise SettingsError(f"--role {args.role} needs --cluster FOLDER (a folder of `nbpool cluster init`)")
        if args.nats_url:
            raise SettingsError("--nats-url and --cluster do not go together: the cluster folder names the bus nodes")
        spec = cluster.read_spec(args.cluster)
        if args.role == "bus":
            node = node or args.cluster.resolve().name.removeprefix("bus-")
            spec.node(node)  # a clear error if it is not one
            if not (args.cluster / "node.pem").exists():
                raise SettingsError(f"{args.cluster}: no node.pem; a bus node needs its bus-<name> folder")
    elif args.cluster is not None:
        raise SettingsError("--cluster needs --role bus, host or proxy")
    supervisor = Supervisor(
        settings,
        nats_url=args.nats_url,
        spawners=args.spawners,
        gateways=args.gateways,
        verbose=args.verbose,
        keep_sandboxes=args.keep_sandboxes,
        role=args.role,
        cluster=args.cluster,
        node=node,
    )
    return asyncio.run(supervisor.run())


def _profile_build(args: argparse.Namespace, settings: CommonSettings) -> int:
    """Build the images of the named content profiles (all of them when none is named)."""
    content = content_profiles(settings.profiles)
    for name in args.names:
        if name not in settings.profiles:
            raise SettingsError(f"no profile {name!r} in NBPOOL_PROFILES (there are: {', '.join(sorted(settings.profiles))})")
        if name not in content:
            raise SettingsError(f"profile {name!r} has no content: nothing to build (give it \"content\" in NBPOOL_PROFILES)")
    names = args.names or sorted(content)
    if not names:
        raise SettingsError('no profile in NBPOOL_PROFILES has content: nothing to build')
    failed = 0
    for name in names:
        print(f"profile {name}: building from {content[name].content} ...", file=sys.stderr)
        try:
            tag = build_profile(name, content[name], base=os.environ.get("NBPOOL_DOCKER_IMAGE") or None)
        except BuildFailed as err:
            print(f"nbpool: profile {name}: not built: {err}", file=sys.stderr)
            failed += 1
            continue
        print(f"profile {name}: {tag}; running spawners recycle their warm sandboxes of the previous image")
    return 1 if failed else 0


def _cluster_init(args: argparse.Namespace) -> int:
    nodes = [cluster.parse_node(text) for text in args.bus]
    spec = cluster.init(args.folder, nodes, instance=args.instance, replicas=args.replicas, sync=args.sync)
    print(f"{args.folder}: a cluster of {len(nodes)} bus nodes, {spec.replicas} replicas, sync {spec.sync}")
    for node in spec.bus:
        print(f"  bus-{node.name}/  -> the machine at {node.host}: nbpool up --role bus --cluster <its copy>")
    print("  host/       -> every sandbox host: nbpool up --role host --cluster <its copy>")
    print("  proxy/      -> every proxy machine: nbpool up --role proxy --cluster <its copy>")
    print("  operator/   -> NBPOOL_NATS_CREDENTIALS and NBPOOL_NATS_URL for nbpool status/events")
    print(f"  ca/         -> keep it here: the CA's key signs new certificates\nNBPOOL_NATS_URL={spec.nats_url}")
    return 0


def _bus_credentials(args: argparse.Namespace, settings: CommonSettings) -> int:
    owners: dict[str, tuple[int, int]] = {}
    for given in args.owner or []:
        part, _, ids = given.rpartition("=")
        try:
            uid, gid = (int(number) for number in ids.split(":"))
        except ValueError:
            raise SettingsError(f"--owner {given!r}: expected [ROLE=]UID:GID, e.g. 10001:10001 or spawner=0:0") from None
        if part and part not in (*busauth.ROLES, busauth.OPERATOR, "nats"):
            raise SettingsError(f"--owner {given!r}: {part!r} is not one of {', '.join([*busauth.ROLES, busauth.OPERATOR, 'nats'])}")
        owners[part or "*"] = (uid, gid)
    conf = busauth.provision(args.folder, Names(settings.instance), split=args.split, owners=owners)
    where = f"{args.folder}/<role>/" if args.split else f"{args.folder}/"
    print(f"{conf}: nats-server's users and permissions (its -c file, or include it in yours)")
    print(f"{where}<role>.password: give each service NBPOOL_NATS_CREDENTIALS, a folder with its own file")
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nbpool", description="Instant, temporary Jupyter servers from a warm pool.")
    parser.add_argument("--version", action="version", version=f"nbpool {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run nbpool on this machine (NATS, Traefik and the services)")
    up.add_argument("--nats-url", help="use this NATS server (with JetStream) instead of starting one")
    up.add_argument("--spawners", type=int, default=1, help="spawner replicas (default 1)")
    up.add_argument("--gateways", type=int, default=1, help="gateway replicas, on consecutive ports (default 1)")
    up.add_argument("--keep-sandboxes", action="store_true", help="leave sandboxes running on stop, for the next up to adopt")
    up.add_argument("-v", "--verbose", action="store_true", help="echo every log line, not only warnings")
    up.add_argument("--role", choices=["all", "bus", "host", "proxy"], default="all",
                    help="all: everything on this machine (default); in a cluster: a bus node, a sandbox host, or the proxy tier")
    up.add_argument("--cluster", type=Path, metavar="FOLDER", help="this machine's folder of `nbpool cluster init`")
    up.add_argument("--node", help="--role bus: which node (default: from the folder's name, bus-<node>)")

    cl = sub.add_parser("cluster", help="several machines: make a cluster's certificates and credentials")
    cl_sub = cl.add_subparsers(dest="cluster_command", required=True)
    ci = cl_sub.add_parser("init", help="write a folder per kind of machine (kept on a second run: delete a file to renew it)")
    ci.add_argument("folder", type=Path)
    ci.add_argument("--bus", action="append", required=True, metavar="NAME=HOST[:CLIENT_PORT[:ROUTE_PORT]]",
                    help="a NATS node (3 or 5 of them; ports default to 4222 and 6222)")
    ci.add_argument("--instance", default="nbpool", help="NBPOOL_INSTANCE of the cluster")
    ci.add_argument("--replicas", type=int, default=3, help="servers keeping each bucket and stream (default 3)")
    ci.add_argument("--sync", default="default", help="JetStream's flush to disk: default (every 2 min), always, or a duration")

    pr = sub.add_parser("profile", help="content profiles: build their images")
    pr_sub = pr.add_subparsers(dest="profile_command", required=True)
    pb = pr_sub.add_parser("build", help="build the images of content profiles whose inputs changed (shows progress)")
    pb.add_argument("names", nargs="*", metavar="NAME", help="profiles of NBPOOL_PROFILES (default: every one with content)")

    ev = sub.add_parser("events", help="print lifecycle events live, one line each")
    ev.add_argument("--json", action="store_true", help="print the raw JSON documents")
    ev.add_argument("--all", action="store_true", help="start from the oldest stored event")
    ev.add_argument("--since", type=float, metavar="SECONDS", help="start this many seconds ago")
    ev.add_argument("--count", type=int, help="exit after this many events")
    ev.add_argument("--timeout", type=float, help="exit after this many seconds")

    st = sub.add_parser("status", help="pool, sessions and services as a table")
    st.add_argument("--json", action="store_true")
    st.add_argument("--all", action="store_true", help="list warm sandboxes too")

    cr = sub.add_parser("bus-credentials", help="write NATS users and permissions for the services into a folder")
    cr.add_argument("folder", type=Path, help="made if missing; existing passwords are kept")
    cr.add_argument("--split", action="store_true", help="each role's file in a folder of its own (<role>/, nats/), for containers")
    cr.add_argument("--owner", metavar="[ROLE=]UID:GID", action="append",
                    help="owner of what is written, for all or for one role (the services' users in their containers)")

    args = parser.parse_args(argv)
    logs.hush_tls_eof()
    try:
        if args.command == "up":
            code = _up(args)
        elif args.command == "bus-credentials":
            code = _bus_credentials(args, load(CommonSettings))
        elif args.command == "cluster":
            code = _cluster_init(args)
        elif args.command == "profile":
            code = _profile_build(args, load(CommonSettings))
        else:
            runner = _events if args.command == "events" else _status
            code = asyncio.run(runner(args, operator_settings()))
    except (SettingsError, cluster.ClusterError) as err:
        print(f"nbpool: {err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 0
    raise SystemExit(code)
