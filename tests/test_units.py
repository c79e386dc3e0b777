"""Pure decision logic, no network: cull policy, pool sizing and order, route table, rate limit, settings."""

from __future__ import annotations

import asyncio
import json
import re
import time
from types import SimpleNamespace
from typing import Any

import pytest

from nbpool.aio import cancel_and_wait
from nbpool.clients import sandbox_client
from nbpool.culler.policy import CullPolicy, Verdict, decide, expires_at
from nbpool.gateway.claims import NoCapacity
from nbpool.gateway.links import BadLink, lab_path, spawn_link, tree_page, ui_page
from nbpool.gateway.queue import LaunchQueue, Ticket
from nbpool.gateway.ratelimit import RateLimiter
from nbpool.gateway.sandbox_files import NOTEBOOK_PATH, BadNotebook, notebook_path
from nbpool.gateway.state import RenderedViews
from nbpool.models import (
    Activity,
    BadMessage,
    ClaimRequest,
    PoolCounts,
    Route,
    SandboxRecord,
    State,
    decode,
    encode,
)
from nbpool.origins import Origins, OriginsError
from nbpool.router.router import Router
from nbpool.router.routes import desired_routes, dynamic_config
from nbpool.sandbox_config import EmbedOriginsError, frame_ancestors, origin_pattern, parse_embed_origins
from nbpool.settings import GatewaySettings, RouterSettings, SettingsError, SpawnerSettings, load
from nbpool.spawner.pool import RefillGate, WarmPool, spawn_plan

POLICY = CullPolicy(idle_timeout=600, max_age=7200, pool_max_age=3600)
HOST = Origins.from_settings("host", "http://127.0.0.1:8000")
PATH = Origins.from_settings("path", "http://127.0.0.1:8000")


def record(state: State = State.CLAIMED, sid: str = "abc123", **kw: object) -> SandboxRecord:
    base: dict[str, object] = dict(
        id=sid, host="h", pool="default", state=state, target="http://127.0.0.1:9000", path="/",
        token="t", created_at=1000.0, warm_at=1010.0, claimed_at=2000.0,
    )
    base.update(kw)
    return SandboxRecord.model_validate(base)


class TestUnopened:
    POLICY = CullPolicy(idle_timeout=600, max_age=7200, pool_max_age=3600, unopened_timeout=120)

    def test_a_claim_nobody_opens_ends_after_the_timeout(self) -> None:
        rec = record(claimed_at=2000.0)
        assert decide(rec, None, 2100.0, self.POLICY).end is False
        assert decide(rec, None, 2121.0, self.POLICY) == Verdict(True, "unopened")
        # Activity from before the claim (the pooled kernel's warm-up) does not open it.
        before = Activity(id="abc123", last_activity=1500.0, at=2100.0)
        assert decide(rec, before, 2121.0, self.POLICY) == Verdict(True, "unopened")

    def test_any_use_after_the_claim_opens_it(self) -> None:
        rec = record(claimed_at=2000.0)
        used = Activity(id="abc123", last_activity=2001.0, at=2100.0)
        connected = Activity(id="abc123", last_activity=1500.0, connections=1, at=2100.0)
        assert decide(rec, used, 2500.0, self.POLICY).end is False
        assert decide(rec, connected, 2500.0, self.POLICY).end is False


class TestLaunchQueue:
    """Only a visitor whose page watches the ticket gets a sandbox from the line."""

    async def test_unwatched_ticket_keeps_its_place_but_gets_nothing(self) -> None:
        claims: list[str] = []
        free = asyncio.Event()

        class Claimer:
            async def claim(self, profile: str, owner: str, wait: float = 0) -> SandboxRecord:
                if not free.is_set():
                    raise NoCapacity("starting", 1)
                claims.append(owner)
                return record(sid=f"sb{len(claims):04d}")

        queue = LaunchQueue(Claimer(), lambda rec, page: rec.id, watch_window=0.3, grace=0.3)  # type: ignore[arg-type]
        unwatched = queue.join("default", "lab", "crawler")  # nothing free while its request waits
        await asyncio.sleep(0.4)
        free.set()
        await asyncio.sleep(1.5)  # the line tries again, but nobody watches that ticket any more
        assert claims == [] and queue.waiting("default") == 1
        watched = queue.join("default", "lab", "visitor")
        for _ in range(20):
            watched.touch()
            if watched.state == "ready":
                break
            await watched.changed(timeout=0.1, since=watched.version)
        assert claims == ["visitor"] and watched.url == "sb0001"
        assert unwatched.url is None and queue.waiting("default") == 1
        await queue.close()


    async def test_a_visitor_who_leaves_mid_claim_passes_the_sandbox_on_or_it_is_ended(self) -> None:
        """A claim under way when its visitor leaves: the sandbox goes to the next watching
        visitor in line; with nobody left, it is ended, never kept for the one who left."""
        arrive = asyncio.Event()
        served: list[str] = []
        discarded: list[str] = []

        class Claimer:
            async def claim(self, profile: str, owner: str, wait: float = 0) -> SandboxRecord:
                await arrive.wait()  # a sandbox turns warm while the claim waits at the spawner
                arrive.clear()
                served.append(owner)
                return record(sid=f"sb{len(served):04d}")

        async def discard(rec: SandboxRecord) -> None:
            discarded.append(rec.id)

        queue = LaunchQueue(Claimer(), lambda rec, page: rec.id, discard=discard, watch_window=5)  # type: ignore[arg-type]
        first, second = queue.join("default", "lab", "a"), queue.join("default", "lab", "b")
        first.touch(), second.touch()
        await asyncio.sleep(0.1)
        queue.leave(first)  # its claim is under way: it keeps nothing
        seen = second.version
        arrive.set()
        assert await second.changed(timeout=2, since=seen) and second.state == "ready" and second.url == "sb0001"
        assert first.state != "ready" and queue.waiting("default") == 0 and discarded == []
        third = queue.join("default", "lab", "c")
        third.touch()
        await asyncio.sleep(0.1)
        queue.leave(third)
        arrive.set()
        for _ in range(20):
            if discarded:
                break
            await asyncio.sleep(0.05)
        assert discarded == ["sb0002"] and third.state != "ready" and queue.waiting("default") == 0
        # A visitor who leaves while nothing is under way for them leaves the line at once.
        fourth, fifth = queue.join("default", "lab", "d"), queue.join("default", "lab", "e")
        queue.leave(fifth)
        assert queue.waiting("default") == 1 and fourth.position == 1
        await queue.close()

    async def test_the_sandbox_goes_to_whoever_is_first_when_it_comes(self) -> None:
        """A claim under way for one visitor, and an earlier arrival joins meanwhile (its own try
        for a warm sandbox was slower): the sandbox is the earlier one's, under its owner; the
        one it was claimed for is served next."""
        arrive = asyncio.Event()
        asked: list[str] = []
        reowned: list[tuple[str, str]] = []

        class Claimer:
            async def claim(self, profile: str, owner: str, wait: float = 0) -> SandboxRecord:
                asked.append(owner)
                await arrive.wait()
                arrive.clear()
                return record(sid=f"sb{len(asked):04d}", owner=owner)  # as the spawner claims: for that owner

        async def reown(rec: SandboxRecord, owner: str) -> SandboxRecord:
            reowned.append((rec.id, owner))
            return rec.model_copy(update={"owner": owner})

        queue = LaunchQueue(Claimer(), lambda rec, page: rec.id, reown=reown)  # type: ignore[arg-type]
        came = time.monotonic()
        later = queue.join("default", "lab", "later")
        later.touch()
        await asyncio.sleep(0.1)  # the claim for "later" is under way
        earlier = queue.join("default", "lab", "earlier", arrived=came)
        earlier.touch()
        assert (earlier.position, later.position) == (1, 2)
        arrive.set()
        assert await earlier.changed(timeout=2, since=earlier.version)
        while earlier.state != "ready":
            assert await earlier.changed(timeout=2, since=earlier.version)
        assert earlier.url == "sb0001" and earlier.record is not None and earlier.record.owner == "earlier"
        assert reowned == [("sb0001", "earlier")] and later.state != "ready" and later.position == 1
        arrive.set()
        while later.state != "ready":
            later.touch()
            assert await later.changed(timeout=2, since=later.version)
        assert later.url == "sb0002" and asked == ["later", "later"] and len(reowned) == 1
        await queue.close()

    async def test_a_visitor_who_leaves_while_the_sandbox_changes_hands_passes_it_on(self) -> None:
        """The sandbox is being made an earlier arrival's (another client's) when that visitor
        leaves: it goes to the next in line, and the line goes on."""
        arrive, handing = asyncio.Event(), asyncio.Event()
        reowned: list[str] = []

        class Claimer:
            async def claim(self, profile: str, owner: str, wait: float = 0) -> SandboxRecord:
                await arrive.wait()
                arrive.clear()
                return record(sid=f"sb-for-{owner}", owner=owner)

        async def reown(rec: SandboxRecord, owner: str) -> SandboxRecord:
            reowned.append(owner)
            if owner == "earlier":
                handing.set()
                await asyncio.sleep(0.2)  # the bus write is under way
            return rec.model_copy(update={"owner": owner})

        queue = LaunchQueue(Claimer(), lambda rec, page: rec.id, reown=reown)  # type: ignore[arg-type]
        came = time.monotonic()
        later = queue.join("default", "lab", "later")
        later.touch()
        await asyncio.sleep(0.1)  # the claim for "later" is under way
        earlier = queue.join("default", "lab", "earlier", arrived=came)
        earlier.touch()
        arrive.set()
        await asyncio.wait_for(handing.wait(), 2)
        queue.leave(earlier)
        while later.state != "ready":
            later.touch()
            assert await later.changed(timeout=2, since=later.version)
        assert later.url == "sb-for-later" and later.record is not None and later.record.owner == "later"
        assert reowned == ["earlier", "later"] and earlier.state != "ready" and queue.waiting("default") == 0
        last = queue.join("default", "lab", "last")  # the line goes on
        last.touch()
        arrive.set()
        while last.state != "ready":
            last.touch()
            assert await last.changed(timeout=2, since=last.version)
        await queue.close()

    async def test_a_new_visitor_whose_page_is_still_connecting_is_not_passed_over(self) -> None:
        """A sandbox comes before the first visitor's waiting page has connected: it waits for that
        page (within the grace), rather than go to the visitor behind, whose page watches."""
        class Claimer:
            async def claim(self, profile: str, owner: str, wait: float = 0) -> SandboxRecord:
                return record(sid=f"sb-{owner}")

        queue = LaunchQueue(Claimer(), lambda rec, page: rec.id, grace=3.0)  # type: ignore[arg-type]
        first, second = queue.join("default", "lab", "a"), queue.join("default", "lab", "b")
        second.touch()
        await asyncio.sleep(1.3)  # the first's page connects, later than the request's own moment
        assert first.state != "ready" and second.state != "ready"
        first.touch()
        for ticket in (first, second):
            while ticket.state != "ready":
                ticket.touch()
                assert await ticket.changed(timeout=2, since=ticket.version)
        assert (first.url, second.url) == ("sb-a", "sb-b")
        await queue.close()


class TestEmbedding:
    def test_embed_origins(self) -> None:
        assert parse_embed_origins(None) is None and parse_embed_origins(" * ") is None
        assert parse_embed_origins("none") == ()
        assert parse_embed_origins("https://Book.example.org, http://127.0.0.1:8080 https://book.example.org") == (
            "https://book.example.org", "http://127.0.0.1:8080")
        for bad in ("https://a.org/", "ftp://a.org", "https://a.org:0", "https://a.org:70000", "* https://a.org",
                    "javascript:alert(1)", "https://a.org/x", "https://*.*.a.org", "null"):
            with pytest.raises(EmbedOriginsError):
                parse_embed_origins(bad)
        pattern = re.compile(origin_pattern(("https://*.docs.org", "http://127.0.0.1:8080")))
        assert pattern.match("https://a.docs.org") and pattern.match("https://a.b.docs.org")
        assert pattern.match("http://127.0.0.1:8080")
        for other in ("https://docs.org", "https://a.docs.org.evil.net", "https://adocs.org", "http://127.0.0.1:80801",
                      "http://127.0.0.1:8080/x", "https://a.docs.org:443"):
            assert not pattern.match(other), other
        assert frame_ancestors(None) == "frame-ancestors 'self' *"
        assert frame_ancestors(()) == "frame-ancestors 'self'"

    def test_settings_normalise_and_refuse(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("NBPOOL_EMBED_ORIGINS", "https://B.org,https://a.org")
        settings = load(GatewaySettings)
        assert settings.embed_origins == "https://b.org https://a.org"
        assert settings.embed_origin_list == ("https://b.org", "https://a.org")
        monkeypatch.setenv("NBPOOL_EMBED_ORIGINS", "https://a.org/path")
        with pytest.raises(SettingsError, match="NBPOOL_EMBED_ORIGINS"):
            load(GatewaySettings)
        monkeypatch.delenv("NBPOOL_EMBED_ORIGINS")
        monkeypatch.setenv("NBPOOL_BINDER_SPECS", '{"gh/org/*": "missing"}')
        with pytest.raises(SettingsError, match="NBPOOL_BINDER_SPECS"):
            load(GatewaySettings)

    def test_binder_specs_choose_the_first_matching_profile(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from fastapi import HTTPException

        from nbpool.gateway.binder import binder_profile

        monkeypatch.setenv("NBPOOL_PROFILES", '{"default": {}, "course": {}, "data": {}}')
        monkeypatch.setenv("NBPOOL_BINDER_SPECS", '{"gh/org/course/*": "course", "gh/org/*": "data"}')

        class Gw:
            settings = load(GatewaySettings)

        gw: Any = Gw()
        assert binder_profile(gw, "gh", "org/course/main") == "course"
        assert binder_profile(gw, "gh", "org/other/HEAD") == "data"
        assert binder_profile(gw, "gl", "org/course/main") == "default"  # unmatched: the default profile
        for provider, spec, status in (("xx", "org/r/HEAD", 404), ("gh", "a\\b", 422), ("gh", "a\x01b", 422),
                                       ("gh", "x" * 1025, 422)):
            with pytest.raises(HTTPException) as refused:
                binder_profile(gw, provider, spec)
            assert refused.value.status_code == status
        monkeypatch.setenv("NBPOOL_BINDER_REFUSE_UNKNOWN", "true")
        Gw.settings = load(GatewaySettings)
        with pytest.raises(HTTPException) as refused:
            binder_profile(gw, "gl", "org/course/main")
        assert refused.value.status_code == 404


class TestCullPolicy:
    def test_fresh_claim_is_not_idle_even_if_server_sat_in_pool(self) -> None:
        act = Activity(id="abc123", last_activity=1010.0, at=2100.0)  # server's own clock: start-up
        assert not decide(record(), act, 2100.0, POLICY).end

    def test_idle_after_timeout(self) -> None:
        act = Activity(id="abc123", last_activity=2500.0, at=3200.0)
        assert decide(record(), act, 3101.0, POLICY).reason == "idle"
        assert not decide(record(), act, 3099.0, POLICY).end

    def test_busy_kernel_counts_as_activity(self) -> None:
        act = Activity(id="abc123", last_activity=2000.0, busy_kernels=1, at=4000.0)
        assert not decide(record(), act, 4100.0, POLICY).end

    def test_max_age_even_when_busy(self) -> None:
        act = Activity(id="abc123", last_activity=9000.0, busy_kernels=1, at=9200.0)
        assert decide(record(), act, 2000.0 + 7201, POLICY).reason == "max_age"

    def test_pool_recycle(self) -> None:
        warm = record(State.WARM, claimed_at=None)
        assert decide(warm, None, 1010.0 + 3601, POLICY).reason == "recycle"
        assert not decide(warm, None, 1010.0 + 3599, POLICY).end

    def test_other_states_are_left_alone(self) -> None:
        for state in (State.STARTING, State.ENDING, State.FAILED):
            assert not decide(record(state), None, 10**9, POLICY).end

    def test_expires_at_is_the_earlier_deadline(self) -> None:
        assert expires_at(record(), None, POLICY) == 2600.0
        act = Activity(id="abc123", last_activity=9000.0)
        assert expires_at(record(), act, POLICY) == 2000.0 + 7200


class TestRefillGate:
    def test_without_claims_everything_starts(self) -> None:
        gate = RefillGate(1.0)
        assert gate.split({"default": 2}, {"default": PoolCounts(target=5, warm=3)}, {}, now=10.0) == ({"default": 2}, None)

    def test_after_a_claim_refills_wait_unless_urgent(self) -> None:
        gate = RefillGate(1.0)
        gate.claimed(10.0)
        counts = {"a": PoolCounts(target=5, warm=3), "b": PoolCounts(target=5, warm=0), "c": PoolCounts(target=5, warm=2)}
        plan = {"a": 2, "b": 1, "c": 1}
        now, again = gate.split(plan, counts, {"c": 1}, now=10.25)
        assert now == {"b": 1, "c": 1}  # b has none warm, c has a claim waiting
        assert again == pytest.approx(0.75)

    def test_later_claims_do_not_extend_the_wait(self) -> None:
        gate = RefillGate(1.0)
        gate.claimed(10.0)
        gate.claimed(10.9)
        counts = {"default": PoolCounts(target=5, warm=3)}
        assert gate.split({"default": 2}, counts, {}, now=10.95)[0] == {}
        assert gate.split({"default": 2}, counts, {}, now=11.0) == ({"default": 2}, None)
        # The next burst opens a new wait.
        gate.claimed(12.0)
        assert gate.split({"default": 2}, counts, {}, now=12.1)[0] == {}

    def test_no_delay_holds_nothing(self) -> None:
        gate = RefillGate(0.0)
        gate.claimed(10.0)
        assert gate.split({"default": 2}, {"default": PoolCounts(target=5, warm=3)}, {}, now=10.0) == ({"default": 2}, None)


class TestSpawnPlan:
    def test_fills_to_target_within_concurrency(self) -> None:
        plan = spawn_plan({"default": PoolCounts(target=5)}, {}, capacity=20, total=0, starting=0, concurrency=2)
        assert plan == {"default": 2}

    def test_capacity_counts_every_sandbox(self) -> None:
        counts = {"default": PoolCounts(target=5, warm=0, claimed=9)}
        assert spawn_plan(counts, {}, capacity=10, total=9, starting=0, concurrency=4) == {"default": 1}
        assert spawn_plan(counts, {}, capacity=10, total=10, starting=0, concurrency=4) == {}

    def test_waiting_claims_raise_the_want(self) -> None:
        counts = {"default": PoolCounts(target=1, warm=1)}
        assert spawn_plan(counts, {"default": 2}, capacity=10, total=1, starting=0, concurrency=4) == {"default": 2}

    def test_starting_counts_towards_target(self) -> None:
        counts = {"default": PoolCounts(target=3, warm=1, starting=2)}
        assert spawn_plan(counts, {}, capacity=10, total=3, starting=2, concurrency=4) == {}

    def test_short_room_goes_to_the_largest_deficit(self) -> None:
        counts = {"a": PoolCounts(target=1), "b": PoolCounts(target=4)}
        assert spawn_plan(counts, {}, capacity=10, total=0, starting=0, concurrency=2) == {"b": 2}


class TestWarmPool:
    async def test_oldest_first(self) -> None:
        pool = WarmPool()
        pool.put("p", "one")
        pool.put("p", "two")
        assert await pool.take("p", 0) == "one"
        assert pool.discard("two") and pool.warm("p") == 0
        assert await pool.take("p", 0) is None

    async def test_waiters_are_served_in_order(self) -> None:
        pool = WarmPool()
        first = asyncio.ensure_future(pool.take("p", 5))
        second = asyncio.ensure_future(pool.take("p", 5))
        await asyncio.sleep(0)
        assert pool.waiting("p") == 2
        pool.put("p", "a")
        pool.put("p", "b")
        assert (await first, await second) == ("a", "b")

    async def test_timed_out_waiter_does_not_swallow_a_sandbox(self) -> None:
        pool = WarmPool()
        assert await pool.take("p", 0.01) is None
        pool.put("p", "a")
        assert pool.warm("p") == 1 and pool.waiting("p") == 0


class TestRoutes:
    def test_routable_states_only(self) -> None:
        recs = [record(State.WARM, "aaaa11"), record(State.ENDING, "bbbb22"), record(State.STARTING, "cccc33")]
        assert set(desired_routes(recs, HOST)) == {"aaaa11", "cccc33"}

    def test_records_that_could_inject_rules_are_refused(self) -> None:
        bad = [
            record(sid="abcd12", path="/user/abcd12/`) || PathPrefix(`/"),
            record(sid="abcd12`) || Host(`x", path="/"),
            record(sid="abcd13", path="/user/other1/"),
            record(sid="abcd14", target="http://127.0.0.1:9000/x?y"),
            record(sid="abcd15", target="file:///etc/passwd"),
        ]
        assert desired_routes(bad, HOST) == {}
        assert desired_routes(bad, PATH) == {}

    def test_a_sandbox_of_the_other_routing_is_not_routed(self) -> None:
        # With host routing, a server at /user/<id>/ would be served on the gateway's origin.
        assert desired_routes([record(sid="abcd16", path="/user/abcd16/")], HOST) == {}
        assert desired_routes([record(sid="abcd17", path="/")], PATH) == {}
        assert set(desired_routes([record(sid="abcd18", path="/user/abcd18/")], PATH)) == {"abcd18"}

    def test_each_sandbox_is_routed_by_its_own_host(self) -> None:
        cfg = dynamic_config({"abcd12": ("/", "http://10.0.0.2:8888")}, ["http://a:1"], HOST)
        assert cfg["http"]["routers"]["sandbox-abcd12"]["rule"] == "Host(`abcd12.sb.localhost`)"
        path = dynamic_config({"abcd12": ("/user/abcd12/", "http://10.0.0.2:8888")}, ["http://a:1"], PATH)
        assert path["http"]["routers"]["sandbox-abcd12"]["rule"] == "PathPrefix(`/user/abcd12/`)"
        # Routes serve Traefik's default entry points, never the health check's.
        assert all("entryPoints" not in r for r in cfg["http"]["routers"].values())

    async def test_only_a_stray_route_wakes_the_router(self) -> None:
        # A sync is O(routes): the router's own route writes (a thousand new sandboxes) must not
        # each wake one; a route for a sandbox no longer routed must, so that it is forgotten.
        bus: Any = SimpleNamespace(names=SimpleNamespace(sandboxes="sandboxes", routes="routes"))
        router = Router(RouterSettings(), bus)
        try:
            router.applied = {"abcd12": ("/", "http://10.0.0.2:8888")}
            assert router.routes.on_change is not None
            router.routes.on_change("abcd12", Route(id="abcd12", path="/", target="http://10.0.0.2:8888", ready_at=1.0))
            router.routes.on_change("gone12", None)
            assert not router._dirty.is_set()
            router.routes.on_change("gone12", Route(id="gone12", path="/", target="http://10.0.0.3:8888", ready_at=1.0))
            assert router._dirty.is_set()
        finally:
            await router._http.aclose()

    def test_config_has_catch_all_to_every_gateway(self) -> None:
        cfg = dynamic_config({"abcd12": ("/", "http://10.0.0.2:8888")}, ["http://a:1", "http://b:2"], HOST)
        routers, services = cfg["http"]["routers"], cfg["http"]["services"]
        assert routers["nbpool-gateway"]["priority"] < routers["sandbox-abcd12"]["priority"]
        assert [s["url"] for s in services["nbpool-gateway"]["loadBalancer"]["servers"]] == ["http://a:1", "http://b:2"]
        assert services["sandbox-abcd12"]["loadBalancer"]["servers"] == [{"url": "http://10.0.0.2:8888"}]


def test_rate_limiter_burst_then_rate() -> None:
    limiter = RateLimiter(per_minute=60, burst=2)
    assert limiter.take("c", now=0) == 0 and limiter.take("c", now=0) == 0
    assert limiter.take("c", now=0) == pytest.approx(1.0)
    assert limiter.take("c", now=1.01) == 0
    assert limiter.take("other", now=0) == 0


def test_settings_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBPOOL_POOL_SIZE", "lots")
    with pytest.raises(SettingsError, match="NBPOOL_POOL_SIZE"):
        load(SpawnerSettings)
    monkeypatch.delenv("NBPOOL_POOL_SIZE")
    monkeypatch.setenv("NBPOOL_ENVIRONMENT", "production")
    with pytest.raises(SettingsError, match="NBPOOL_ADMIN_TOKEN"):
        load(GatewaySettings)
    monkeypatch.setenv("NBPOOL_ENVIRONMENT", "development")
    monkeypatch.setenv("NBPOOL_PROFILES", '{"small": {"pool_size": 1}}')
    with pytest.raises(SettingsError, match="NBPOOL_DEFAULT_PROFILE"):
        load(SpawnerSettings)
    monkeypatch.setenv("NBPOOL_DEFAULT_PROFILE", "small")
    assert load(SpawnerSettings).pool_target("small") == 1


def test_content_profiles_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NBPOOL_PROFILES", json.dumps({
        "default": {}, "course": {"content": "/srv/course", "start": "notebooks/Intro.ipynb"},
        "plain": {"image": "nbpool/notebook:x", "start": "Tour.ipynb"}}))
    profiles = load(SpawnerSettings).profiles
    assert profiles["course"].image_of("course") == "nbpool/profile-course:latest"
    assert profiles["plain"].image_of("plain") == "nbpool/notebook:x" and profiles["default"].image_of("default") is None
    # The kernel pre-started: the start notebook; else Welcome.ipynb unless content replaces the home.
    assert profiles["course"].prestart_of("Welcome.ipynb") == "notebooks/Intro.ipynb"
    assert profiles["default"].prestart_of("Welcome.ipynb") == "Welcome.ipynb"
    assert load(SpawnerSettings).model_copy().profiles["plain"].prestart_of("Welcome.ipynb") == "Tour.ipynb"
    monkeypatch.setenv("NBPOOL_PROFILES", json.dumps({"default": {}, "x": {"content": "/c", "ui": "notebook"}}))
    assert load(SpawnerSettings).profiles["x"].prestart_of("Welcome.ipynb") is None
    assert load(SpawnerSettings).profiles["x"].ui == "notebook" and load(SpawnerSettings).profiles["default"].ui == "lab"
    for profiles_json, named in (
        ({"default": {}, "Course": {"content": "/c"}}, "lower case"),
        ({"default": {}, "c": {"content": "/c", "start": "../x.ipynb"}}, "without '..'"),
        ({"default": {}, "c": {"content": "/c", "start": "notes.md"}}, r"\.ipynb"),
        ({"default": {}, "c": {"content": "", "start": "a.ipynb"}}, "CONTENT"),
        ({"default": {"ui": "classic"}}, "NBPOOL_PROFILES_DEFAULT_UI: Input should be 'lab' or 'notebook'"),
    ):
        monkeypatch.setenv("NBPOOL_PROFILES", json.dumps(profiles_json))
        with pytest.raises(SettingsError, match=named):
            load(SpawnerSettings)


def test_bad_messages_are_refused_with_what_was_wrong() -> None:
    with pytest.raises(BadMessage, match="profile"):
        decode(ClaimRequest, b'{"wait": 1}')
    with pytest.raises(BadMessage):
        decode(ClaimRequest, b"not json")
    req = ClaimRequest(profile="default", wait=2)
    assert decode(ClaimRequest, encode(req)) == req
    # A document of a newer schema (a newer nbpool on the same bus) is refused, not half read.
    with pytest.raises(BadMessage, match="schema version 2"):
        decode(ClaimRequest, b'{"v": 2, "profile": "default"}')
    assert decode(ClaimRequest, b'{"v": 1, "profile": "default", "added_later": true}').profile == "default"


class TestLinks:
    @pytest.mark.parametrize(
        ("path", "urlpath", "page"),
        [
            ("", None, "lab"),
            ("lab/tree/Welcome.ipynb", None, "lab/tree/Welcome.ipynb"),
            ("notebooks/a/b.ipynb", None, "lab/tree/a/b.ipynb"),
            ("tree/data", None, "lab/tree/data"),
            ("Welcome.ipynb", None, "lab/tree/Welcome.ipynb"),
            ("", "notebooks/x.ipynb", "lab/tree/x.ipynb"),
            ("", "lab/tree/my%20file.ipynb", "lab/tree/my%20file.ipynb"),
            ("edit/src/main.py", None, "lab/tree/src/main.py"),  # Notebook 7's editor links
            ("edit", None, "lab"),
        ],
    )
    def test_pages(self, path: str, urlpath: str | None, page: str) -> None:
        assert lab_path(path, urlpath) == page

    @pytest.mark.parametrize("bad", ["../etc/passwd", "lab/tree/../../x", "http://evil/x", "//evil", "a\\b"])
    def test_refused(self, bad: str) -> None:
        with pytest.raises(BadLink):
            lab_path(bad)

    def test_ended_link_keeps_the_page(self) -> None:
        assert spawn_link("lab/tree/Welcome.ipynb") == "/spawn/lab/tree/Welcome.ipynb"
        assert spawn_link("notebooks/x.ipynb?x=1") == "/spawn/lab/tree/x.ipynb"
        assert spawn_link("api/kernels") == "/spawn"
        assert spawn_link("edit/a.py") == "/spawn/lab/tree/a.py" and spawn_link("tree") == "/spawn"

    @pytest.mark.parametrize(
        ("page", "notebook"),
        [
            ("lab", "tree"),
            ("lab/tree/Welcome.ipynb", "notebooks/Welcome.ipynb"),
            ("lab/tree/a/my%20file.ipynb", "notebooks/a/my%20file.ipynb"),
            ("lab/tree/notes/todo.txt", "edit/notes/todo.txt"),
            ("lab/tree/data", "tree/data"),
            ("lab/tree/v1.2/.env", "tree/v1.2/.env"),  # no suffix: Notebook's tree sends a file on
        ],
    )
    def test_the_same_page_in_notebook_7(self, page: str, notebook: str) -> None:
        assert ui_page(page, "lab") == page
        assert ui_page(page, "notebook") == notebook

    def test_a_start_notebook_opens_in_the_profiles_ui(self) -> None:
        # What the gateway's lab_url does with a profile's start notebook.
        assert ui_page(tree_page("course/Intro 1.ipynb"), "notebook") == "notebooks/course/Intro%201.ipynb"
        with pytest.raises(ValueError, match="lab or notebook"):
            ui_page("lab", "classic")


def test_static_offload_route() -> None:
    cfg = dynamic_config({}, ["http://g:1"], PATH, static_offload=True)
    router = cfg["http"]["routers"]["nbpool-static"]
    assert router["service"] == "nbpool-gateway" and router["priority"] > 100
    rewrite = cfg["http"]["middlewares"]["nbpool-static-path"]["replacePathRegex"]
    assert rewrite["replacement"] == "/static/lab/$1"
    assert "nbpool-static" not in dynamic_config({}, ["http://g:1"], PATH)["http"]["routers"]
    by_host = dynamic_config({}, ["http://g:1"], HOST, static_offload=True)["http"]["routers"]["nbpool-static"]
    assert by_host["rule"] == "HostRegexp(`^[a-z0-9]+\\.sb\\.localhost$`) && PathPrefix(`/static/lab/`)"


async def test_the_client_to_sandboxes_keeps_no_cookie() -> None:
    # A sandbox's server sets its login cookie on each token request; kept, one per sandbox ever
    # asked piled up in the spawner's client and was walked on every request.
    import http.server
    import threading

    seen: list[str | None] = []

    class Server(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Cookie"))
            self.send_response(200)
            self.send_header("Set-Cookie", "username-10-0-0-2-8888=signed; Path=/; HttpOnly")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api/status"
        async with sandbox_client(timeout=5, trust_env=False) as client:
            for _ in range(2):
                assert (await client.get(url)).status_code == 200
            assert len(client.cookies.jar) == 0
        assert seen == [None, None]
    finally:
        server.shutdown()
        server.server_close()


def test_what_sandboxes_serve_is_compressed() -> None:
    routes = {"abcd12": ("/", "http://10.0.0.2:8888")}
    cfg = dynamic_config(routes, ["http://g:1"], HOST, static_offload=True, compress=True)
    routers, middlewares = cfg["http"]["routers"], cfg["http"]["middlewares"]
    assert middlewares["nbpool-compress"]["compress"]["encodings"] == ["zstd", "gzip"]
    included = middlewares["nbpool-compress"]["compress"]["includedContentTypes"]
    assert "application/javascript" in included and "text/event-stream" not in included and "video/mp4" not in included
    assert routers["sandbox-abcd12"]["middlewares"] == ["nbpool-compress"]
    assert routers["nbpool-static"]["middlewares"] == ["nbpool-compress"]
    # The gateway's own pages (its event streams among them) pass as they are.
    assert "middlewares" not in routers["nbpool-gateway"]
    by_path = dynamic_config(routes, ["http://g:1"], PATH, static_offload=True, compress=True)["http"]["routers"]
    assert by_path["nbpool-static"]["middlewares"] == ["nbpool-static-path", "nbpool-compress"]
    plain = dynamic_config(routes, ["http://g:1"], HOST)["http"]
    assert "middlewares" not in plain and "middlewares" not in plain["routers"]["sandbox-abcd12"]


class TestOrigins:
    def test_defaults_on_one_machine(self) -> None:
        assert HOST.sandbox_url("abcd12") == "http://abcd12.sb.localhost:8000/"
        assert HOST.admin_url == "http://admin.localhost:8000"
        assert HOST.base_path("abcd12") == "/" and PATH.base_path("abcd12") == "/user/abcd12/"
        assert PATH.sandbox_url("abcd12") == "http://127.0.0.1:8000/user/abcd12/"

    def test_requests_are_told_apart_by_host(self) -> None:
        assert HOST.kind("127.0.0.1:8000") == "public"
        assert HOST.kind("admin.localhost:8000") == "admin"
        assert HOST.kind("abcd12.sb.localhost:8000") == "sandbox"
        assert HOST.kind("sb.localhost") == "public"
        assert HOST.kind("abcd12.SB.localhost:8000") == "sandbox"
        assert PATH.kind("admin.localhost:8000") == "public"

    def test_production(self) -> None:
        o = Origins.from_settings("host", "https://nb.example.net", "https://{id}.nb-user.example.net",
                                  "https://admin.nb.example.net")
        assert o.sandbox_url("abcd12") == "https://abcd12.nb-user.example.net/"
        assert o.sandbox_source() == "https://*.nb-user.example.net"

    @pytest.mark.parametrize(
        ("public", "sandbox", "admin", "variable"),
        [
            ("https://nb.example.net", "", "https://admin.example.net", "NBPOOL_SANDBOX_URL"),
            ("https://nb.example.net", "https://{id}.u.example.net", "", "NBPOOL_ADMIN_URL"),
            ("http://127.0.0.1:8000", "http://sb.localhost:8000", "", "NBPOOL_SANDBOX_URL"),
            ("http://127.0.0.1:8000", "http://x{id}.sb.localhost:8000", "", "NBPOOL_SANDBOX_URL"),
            ("http://127.0.0.1:8000", "http://{id}.sb.localhost:8000/path", "", "NBPOOL_SANDBOX_URL"),
            ("https://nb.example.net", "https://{id}.nb.example.net", "https://admin.example.net", "NBPOOL_PUBLIC_URL"),
            ("https://u.example.net", "https://{id}.example.net", "https://admin.x.net", "NBPOOL_PUBLIC_URL"),
            ("http://127.0.0.1:8000", "", "http://a.sb.localhost:8000", "NBPOOL_ADMIN_URL"),
            ("http://127.0.0.1:8000", "", "http://127.0.0.1:8000", "NBPOOL_ADMIN_URL"),
            ("ftp://127.0.0.1", "", "", "NBPOOL_PUBLIC_URL"),
        ],
    )
    def test_bad_settings_name_the_variable(self, public: str, sandbox: str, admin: str, variable: str) -> None:
        with pytest.raises(OriginsError, match=variable):
            Origins.from_settings("host", public, sandbox, admin)

    def test_snapshot_views_have_an_origin_of_their_own(self) -> None:
        assert HOST.snapshot_url == "http://snapshots.localhost:8000"
        assert HOST.kind("snapshots.localhost:8000") == "snapshot" and PATH.kind("snapshots.localhost:8000") == "public"
        assert PATH.snapshot_url == "http://127.0.0.1:8000"
        production = Origins.from_settings("host", "https://nb.example.net", "https://{id}.nb-user.example.net",
                                           "https://admin.nb.example.net")
        assert production.snapshot_url == "", "off unless set when the public URL is elsewhere"
        pattern = re.compile(HOST.sandbox_origin_pattern())
        assert pattern.match("http://abcd12.sb.localhost:8000")
        for other in ("http://abcd12.sb.localhost:8001", "https://abcd12.sb.localhost:8000", "http://sb.localhost:8000",
                      "http://a.b.sb.localhost:8000", "http://admin.localhost:8000", "http://abcd12.sb.localhost:8000.evil"):
            assert not pattern.match(other), other
        for bad in ("http://127.0.0.1:8000", "http://admin.localhost:8000", "http://view.sb.localhost:8000",
                    "http://snapshots.localhost:8000/s"):
            with pytest.raises(OriginsError, match="NBPOOL_SNAPSHOT_URL"):
                Origins.from_settings("host", "http://127.0.0.1:8000", "", "", bad)

    def test_settings_stop_start_up(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("NBPOOL_SANDBOX_URL", "http://sandboxes.localhost:8000")
        with pytest.raises(SettingsError, match="NBPOOL_SANDBOX_URL.*{id}"):
            load(GatewaySettings)
        monkeypatch.setenv("NBPOOL_SANDBOX_URL", "http://{id}.localhost:8000")
        monkeypatch.setenv("NBPOOL_PUBLIC_URL", "http://localhost:8000")
        with pytest.raises(SettingsError, match="NBPOOL_PUBLIC_URL"):
            load(GatewaySettings)


class TestSnapshotPaths:
    @pytest.mark.parametrize(("given", "plain"), [("Welcome.ipynb", "Welcome.ipynb"), ("a/./b//c.ipynb", "a/b/c.ipynb"),
                                                  ("x y.ipynb", "x y.ipynb")])
    def test_plain_paths(self, given: str, plain: str) -> None:
        assert notebook_path(given) == plain

    @pytest.mark.parametrize(("given", "words"), [
        ("../x.ipynb", "'..'"), ("a/../../x.ipynb", "'..'"), ("/etc/x.ipynb", "relative"), ("x.py", ".ipynb"),
        (".ipynb", ".ipynb"), ("a/.ipynb", ".ipynb"), ("x.ipynb ", ".ipynb"), ("", ".ipynb"), ("a\\b.ipynb", "backslash"), ("a\nb.ipynb", "control"),
        ("http://x/y.ipynb", "relative"), ("x" * 1030 + ".ipynb", "1024"),
    ])
    def test_bad_paths_say_why(self, given: str, words: str) -> None:
        with pytest.raises(BadNotebook, match=re.escape(words)):
            notebook_path(given)
        if len(given) <= 1024:  # beyond, the document's maxLength refuses it
            assert not re.match(NOTEBOOK_PATH, given), "the OpenAPI pattern refuses it too"


def test_rendered_views_keep_the_most_recent_within_their_budget() -> None:
    views = RenderedViews(budget=10)
    views.put("a", b"1234")
    views.put("b", b"1234")
    assert views.get("a") == b"1234"  # a is now the most recent
    views.put("c", b"1234")
    assert views.get("b") is None and views.get("a") and views.get("c")
    views.put("huge", b"x" * 11)
    assert views.get("huge") is None and views.get("a")
    views.drop("a")
    assert views.get("a") is None


async def test_a_ticket_change_between_reading_and_waiting_is_not_missed() -> None:
    """A watcher reads the ticket, the line changes it before the watcher waits: the wait ends at once."""
    ticket = Ticket(id="t", profile="default", page="lab", owner="a")
    seen = ticket.version
    ticket.notify()  # e.g. the ticket turned ready while the watcher sent an event
    # True: the change was seen (a wait that timed out would answer False).
    assert await ticket.changed(timeout=5, since=seen)
    assert not await ticket.changed(timeout=0.05, since=ticket.version)


async def test_a_launch_that_tried_for_a_warm_sandbox_keeps_its_place_of_arrival() -> None:
    """A launch that came in first but joins the line after others (its try for a warm sandbox
    took a while) is still ahead of them."""

    class Claimer:
        async def claim(self, profile: str, owner: str, wait: float = 0) -> SandboxRecord:
            await asyncio.sleep(wait)
            raise NoCapacity("starting", 1, coming=True)

    queue = LaunchQueue(Claimer(), lambda rec, page: rec.id)  # type: ignore[arg-type]
    first_came = time.monotonic()
    later = [queue.join("default", "lab", name) for name in ("b", "c")]
    first = queue.join("default", "lab", "a", arrived=first_came)
    assert [t.position for t in (first, *later)] == [1, 2, 3]
    last = queue.join("default", "lab", "d")
    assert last.position == 4
    await queue.close()


async def test_a_task_that_swallowed_its_cancellation_is_cancelled_again() -> None:
    """Python 3.11's wait_for (inside nats-py) can swallow a cancellation; the owner's shutdown still ends."""
    cancels = 0

    async def loop_that_swallows_once() -> None:
        nonlocal cancels
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancels += 1
                if cancels > 1:
                    raise

    async def fails() -> None:
        raise RuntimeError("dropped on the way out")

    tasks = [asyncio.ensure_future(loop_that_swallows_once()), asyncio.ensure_future(fails())]
    await asyncio.sleep(0)
    async with asyncio.timeout(10):  # (not wait_for: see nbpool.aio)
        await cancel_and_wait(*tasks, again_after=0.05)
    assert cancels == 2 and all(t.done() for t in tasks)
