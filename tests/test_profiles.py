"""Content profiles against a real engine: a folder's notebooks, data and packages become a profile.

The profiles' requirements come from wheels made here (tests/wheels.py), which the build's
``pip download`` finds through PIP_NO_INDEX and PIP_FIND_LINKS: no test reaches a package index.
Each test's profile has a name of its own, and its images are removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
from cluster import Cluster
from kernel import execute
from waiting import poll_until
from workshop import make_wheel, notebook, profile_build, remove_profile_images, workshop


@pytest.fixture
def profile(tmp_path: Path, docker_image: str) -> Iterator[dict[str, Any]]:
    """A profile name of this test's own, a folder of wheels, and the settings that go with them.

    Its images are removed at the end; a test that also starts clusters asks for this fixture
    first, so that its clusters (their containers use the images) are stopped before.
    """
    name = f"w{uuid.uuid4().hex[:8]}"
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "nbpool-demo-greet", "1.0", "def hello():\n    return 'hello from a wheel'\n")
    env = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "NBPOOL_DOCKER_IMAGE": docker_image}
    yield {"name": name, "wheels": wheels, "env": env}
    remove_profile_images(name)


def profiles_setting(name: str, **profile: Any) -> str:
    return json.dumps({"default": {"pool_size": 0}, name: {"pool_size": 1, **profile}})


def image_id(ref: str) -> str | None:
    try:
        return str(docker.from_env().images.get(ref).id)
    except docker.errors.ImageNotFound:
        return None


def layers(ref: str) -> list[str]:
    return list(docker.from_env().images.get(ref).attrs["RootFS"]["Layers"])


async def test_a_profile_from_a_folder_then_a_change_of_content(profile: dict[str, Any], docker_cluster: Any,
                                                                tmp_path: Path) -> None:
    name = profile["name"]
    content = workshop(tmp_path / "workshop")
    settings = {**profile["env"], "NBPOOL_PROFILES": profiles_setting(name, content=str(content), start="Intro.ipynb"),
                "NBPOOL_DEFAULT_PROFILE": name}
    cluster: Cluster = docker_cluster(settings, warm=1)  # nbpool up builds the profile's image first
    session = cluster.new_session()
    base, token = cluster.base(session), session["token"]
    auth = {"Authorization": f"token {token}"}
    assert session["profile"] == name and session["url"].split("?")[0].endswith("/lab/tree/Intro.ipynb"), session
    listing = httpx.get(f"{base}api/contents", headers=auth).json()
    assert {item["name"] for item in listing["content"]} == {"Intro.ipynb", "Exercises.ipynb", "data", "requirements.txt"}
    csv = httpx.get(f"{base}api/contents/data/cities.csv", headers=auth).json()
    assert "Ghent,265086" in csv["content"]
    # The pre-started kernel is the start notebook's, and it has the profile's package.
    sessions = httpx.get(f"{base}api/sessions", headers=auth).json()
    assert [(s["path"], s["kernel"]["id"]) for s in sessions] == [("Intro.ipynb", session["kernel_id"])]
    assert await execute(base, token, session["kernel_id"], "from nbpool_demo_greet import hello\nhello()") == \
        "'hello from a wheel'"
    assert await execute(base, token, session["kernel_id"], "1+1") == "2"

    # A new exercise: only the content layer is built again, and new sessions get it.
    packages = [i for i in docker.from_env().images.list(name=f"nbpool/profile-{name}-packages")]
    assert len(packages) == 1
    before = image_id(f"nbpool/profile-{name}:latest")
    assert before is not None
    workshop(content, exercise="print('exercise 2')")
    rebuilt = profile_build(cluster.env, name)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "requirements.txt and apt.txt unchanged" in rebuilt.stderr and "resolving" not in rebuilt.stderr
    after = image_id(f"nbpool/profile-{name}:latest")
    assert after is not None and after != before
    assert [i.id for i in docker.from_env().images.list(name=f"nbpool/profile-{name}-packages")] == [packages[0].id]
    under = layers(packages[0].id)
    assert layers(after)[:len(under)] == under and len(layers(after)) == len(under) + 1  # one COPY on the same layers

    # The warm sandbox of the old image is recycled; the session in use is left alone.
    def warm_on_the_new_image() -> bool:
        warm = [r["id"] for r in cluster.status()["sandboxes"] if r["state"] == "warm"]
        return any(c.image.id == after for c in cluster.containers() if c.labels.get("nbpool.sandbox") in warm)

    poll_until(warm_on_the_new_image, 90, lambda: f"a warm sandbox of the new image\n{cluster.logs()}")
    assert any(e["type"] == "sandbox.ended" and e.get("cause") == "image replaced" for e in cluster.events())
    assert httpx.get(f"{base}api/status", headers=auth).status_code == 200
    second = cluster.new_session()
    exercises = httpx.get(f"{cluster.base(second)}api/contents/Exercises.ipynb",
                          headers={"Authorization": f"token {second['token']}"}).json()
    assert exercises["content"]["cells"][0]["source"] == "print('exercise 2')"


def test_bad_content_is_refused_by_name_and_changes_nothing(profile: dict[str, Any], tmp_path: Path) -> None:
    name, wheels = profile["name"], profile["wheels"]
    content = workshop(tmp_path / "workshop")
    good = {**profile["env"], "NBPOOL_PROFILES": profiles_setting(name, content=str(content), start="Intro.ipynb")}
    built = profile_build(good, name)
    assert built.returncode == 0, built.stderr
    serving = image_id(f"nbpool/profile-{name}:latest")
    assert serving is not None

    make_wheel(wheels, "nbpool-demo-b", "1.0", "")
    make_wheel(wheels, "nbpool-demo-b", "2.0", "")
    make_wheel(wheels, "nbpool-demo-a", "1.0", "", requires=("nbpool-demo-b>=2",))
    big = workshop(tmp_path / "big")
    (big / "data" / "measurements.bin").write_bytes(os.urandom(3_000_000))
    cases: list[tuple[str, dict[str, Any], dict[str, str], str]] = [
        ("a missing folder", {"content": str(tmp_path / "nowhere")}, {}, "no such folder"),
        ("a start notebook that is not there", {"content": str(content), "start": "Missing.ipynb"}, {},
         "'Missing.ipynb' is not in the content"),
        ("a requirement that does not exist", {"content": str(content)}, {"requirements": "nbpool-no-such-thing\n"},
         "nbpool-no-such-thing"),
        ("requirements that conflict", {"content": str(content)}, {"requirements": "nbpool-demo-a\nnbpool-demo-b==1.0\n"},
         "nbpool-demo-b"),
        ("a requirement given as a URL", {"content": str(content)}, {"requirements": "git+https://example.invalid/x\n"},
         "URLs and paths are not supported"),
        ("files over the size limit", {"content": str(big)}, {"NBPOOL_CONTENT_MAX_MB": "2"}, "measurements.bin"),
    ]
    for what, given, extra, named in cases:
        if "requirements" in extra:
            bad = workshop(tmp_path / f"bad{len(what)}")
            (bad / "requirements.txt").write_text(extra.pop("requirements"))
            given = {**given, "content": str(bad)}
        result = profile_build({**profile["env"], **extra, "NBPOOL_PROFILES": profiles_setting(name, **given)}, name)
        assert result.returncode != 0, (what, result.stderr)
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith(f"nbpool: profile {name}: not built:") and named in last, (what, last)
        assert image_id(f"nbpool/profile-{name}:latest") == serving, what


def test_a_git_commit_as_content(profile: dict[str, Any], tmp_path: Path) -> None:
    name = profile["name"]
    repo = workshop(tmp_path / "repo")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t.invalid"]
    subprocess.run([*git[:3], "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], check=True)
    subprocess.run([*git, "tag", "v1"], check=True)
    workshop(repo, exercise="print('not yet')")
    (repo / "draft.ipynb").write_text(notebook("1"))  # in the working tree only
    subprocess.run([*git, "commit", "-qam", "v2"], check=True)

    built = profile_build({**profile["env"], "NBPOOL_PROFILES": profiles_setting(name, content=f"{repo}@v1", start="Intro.ipynb")},
                  name)
    assert built.returncode == 0, built.stderr
    # The docker client rather than the SDK's logs: those could miss the last line (no newline at
    # its end) when read right after the container exited.
    listed = subprocess.run(
        [shutil.which("docker") or "docker", "run", "--rm", "--network=none", "--entrypoint", "sh",
         f"nbpool/profile-{name}:latest", "-c", "cd /opt/nbpool/content && find . -type f | sort && cat Exercises.ipynb"],
        capture_output=True, text=True, timeout=120, check=True).stdout
    assert "./Intro.ipynb\n./data/cities.csv\n./requirements.txt" in listed and "draft" not in listed
    assert "exercise 1" in listed and "not yet" not in listed
    unknown = profile_build({**profile["env"], "NBPOOL_PROFILES": profiles_setting(name, content=f"{repo}@v9")}, name)
    assert unknown.returncode != 0 and "no branch, tag or commit 'v9'" in unknown.stderr


def test_up_says_when_a_profile_has_no_image_and_does_not_pool_it(profile: dict[str, Any], docker_cluster: Any,
                                                                  tmp_path: Path) -> None:
    name = profile["name"]
    settings = {**profile["env"], "NBPOOL_PROFILES": json.dumps({
        "default": {"pool_size": 1}, name: {"pool_size": 1, "content": str(tmp_path / "nowhere")}})}
    cluster: Cluster = docker_cluster(settings, warm=1)  # the default profile still serves
    assert f"profile {name}: its image did not build: content: no such folder" in cluster.logs(tail=400)
    refused = httpx.post(f"{cluster.url}/sessions", json={"profile": name}, timeout=30)
    assert refused.status_code == 503 and f"nbpool profile build {name}" in refused.json()["detail"], refused.text
    beat = poll_until(lambda: cluster.status().get("spawners"), 10, "a spawner's heartbeat")
    assert "is not on this host" in json.dumps(beat)
    assert cluster.new_session()["profile"] == "default"
