"""The Runtime contract (nbpool.runtime.base.Runtime), one suite run against every runtime: the
process runtime (real Jupyter servers), the Docker runtime (real containers on a real engine) and
the fake that the spawner's own tests use, so the fake cannot drift from what it stands for."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import end_docker_leftovers
from fakes import FakeRuntime
from waiting import poll_until_async

from nbpool.runtime import Runtime, SandboxSpec, SpawnFailed

Make = Callable[[str], Runtime]


@pytest.fixture(params=["process", "docker", "fake"])
async def make_runtime(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Make]:
    """Runtimes of one kind for a fresh nbpool instance; ``make(spawner_id)``. Everything they made is removed after."""
    kind: str = request.param
    instance = f"rt{uuid.uuid4().hex[:8]}"
    made: list[Runtime] = []
    image = request.getfixturevalue("docker_image") if kind == "docker" else None
    engine: dict[str, Any] = {}  # the fakes' one "engine", as the real ones share one host

    def make(spawner_id: str, other_instance: bool = False) -> Runtime:
        owner = f"{instance}x" if other_instance else instance
        runtime: Runtime
        if kind == "process":
            from nbpool.runtime.process import ProcessRuntime

            runtime = ProcessRuntime(tmp_path, owner, spawner_id, f"{sys.executable} -m nbpool.sandbox_server")
        elif kind == "docker":
            from nbpool.runtime.docker import DockerRuntime

            runtime = DockerRuntime(instance=owner, spawner_id=spawner_id, image=image or "", network=f"{instance}-sandboxes")
        else:
            runtime = FakeRuntime(engine=engine, owner=(owner, spawner_id))
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        for sandbox in await runtime.list():
            await runtime.remove(sandbox.id)
        await runtime.close()
    if kind == "docker":
        for owner in (instance, f"{instance}x"):
            assert not end_docker_leftovers(owner, f"{instance}-sandboxes")


def _spec(sid: str, **kw: Any) -> SandboxSpec:
    return SandboxSpec(id=sid, token="contract-token", base_path="/", profile="default", **kw)


async def test_create_list_inspect_remove(make_runtime: Make) -> None:
    runtime = make_runtime("s1")
    made = await runtime.create(_spec("c0ffee000001"))
    assert (made.id, made.profile) == ("c0ffee000001", "default") and made.target.startswith("http://")
    # create returns once the address is known; the server answers soon after, with the token.
    async with httpx.AsyncClient(timeout=5) as client:
        async def answers() -> bool:
            return (await client.get(f"{made.target}/api/status", params={"token": "contract-token"})).status_code == 200

        await poll_until_async(answers, 60, "the server answers", errors=(httpx.HTTPError,))
    listed = {sb.id: sb for sb in await runtime.list()}
    assert listed["c0ffee000001"].alive and listed["c0ffee000001"].target == made.target
    inspected = await runtime.inspect("c0ffee000001")
    assert inspected is not None and inspected.alive
    assert isinstance(await runtime.logs("c0ffee000001"), str)
    await runtime.remove("c0ffee000001")
    assert await runtime.inspect("c0ffee000001") is None
    assert "c0ffee000001" not in {sb.id for sb in await runtime.list()}
    await runtime.remove("c0ffee000001")  # idempotent
    await runtime.remove("neverexisted")


@pytest.mark.parametrize(("ui", "page"), [("lab", "/lab"), ("notebook", "/tree")])
async def test_the_server_root_opens_the_profiles_ui(make_runtime: Make, ui: str, page: str) -> None:
    runtime = make_runtime("s1")
    made = await runtime.create(_spec("c0ffee000004", ui=ui))
    async with httpx.AsyncClient(timeout=5) as client:
        async def root() -> str | None:
            answer = await client.get(f"{made.target}/", params={"token": "contract-token"})
            return answer.headers["location"] if answer.status_code == 302 else None

        location = await poll_until_async(root, 60, "the server answers", errors=(httpx.HTTPError,))
    assert location.split("?", 1)[0] == page  # Jupyter keeps the query on the way


async def test_each_runtime_lists_only_its_own(make_runtime: Make) -> None:
    mine, neighbour, stranger = make_runtime("s1"), make_runtime("s2"), make_runtime("s1", other_instance=True)
    await mine.create(_spec("c0ffee000002"))
    assert [sb.id for sb in await mine.list()] == ["c0ffee000002"]
    assert await neighbour.list() == [] and await stranger.list() == []
    assert await neighbour.inspect("c0ffee000002") is None and await stranger.inspect("c0ffee000002") is None


async def test_a_container_runtime_it_cannot_honour_is_refused_and_leaves_nothing(make_runtime: Make) -> None:
    runtime = make_runtime("s1")
    with pytest.raises(SpawnFailed):
        await runtime.create(_spec("c0ffee000003", runtime="no-such-runtime"))
    assert await runtime.list() == []
