"""A workshop's content for content profiles (tests and bench): notebooks, a CSV file, and tiny
pure-Python wheels made on the spot for its requirements.txt.

A profile build downloads its requirements with the host's pip; the tests and the bench point
that pip at a folder of these wheels (PIP_NO_INDEX, PIP_FIND_LINKS): nothing reaches a package index.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import docker
import nbformat
from nbformat.v4 import new_code_cell, new_notebook

__all__ = ["make_wheel", "notebook", "profile_build", "remove_profile_images", "workshop"]


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(folder: Path, name: str, version: str, code: str, requires: tuple[str, ...] = ()) -> Path:
    """``<name>-<version>-py3-none-any.whl`` in ``folder``: a module ``name`` (``-`` as ``_``) holding
    ``code``, depending on ``requires`` (requirement specifiers)."""
    module = name.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": code.encode(),
        f"{info}/METADATA": "\n".join(
            ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *(f"Requires-Dist: {r}" for r in requires)]).encode() + b"\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: nbpool-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = [_record_line(path, data) for path, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


def notebook(*cells: str) -> str:
    """A notebook (nbformat 4) of code cells."""
    nb = new_notebook(cells=[new_code_cell(source) for source in cells], metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}})
    return str(nbformat.writes(nb))  # type: ignore[no-untyped-call]


def workshop(folder: Path, exercise: str = "print('exercise 1')", requirements: str = "nbpool-demo-greet>=1.0\n") -> Path:
    """The README's worked example: two notebooks, a CSV file and a requirements.txt (for the
    wheel ``nbpool-demo-greet``: :func:`make_wheel`)."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "Intro.ipynb").write_text(notebook("from nbpool_demo_greet import hello\nhello()"))
    (folder / "Exercises.ipynb").write_text(notebook(exercise))
    (folder / "data" / "cities.csv").write_text("city,population\nLyon,522250\nGhent,265086\n")
    (folder / "requirements.txt").write_text("# what the notebooks import\n" + requirements)
    return folder


def profile_build(settings: dict[str, str], *names: str) -> subprocess.CompletedProcess[str]:
    """``nbpool profile build NAME...`` with these settings (and no other NBPOOL_*), as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NBPOOL_")} | settings
    nbpool = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nbpool"
    return subprocess.run([str(nbpool), "profile", "build", *names], env=env, capture_output=True, text=True, timeout=900)


def remove_profile_images(name: str) -> None:
    """Every tag of profile ``name``'s images (content and packages)."""
    client = docker.from_env(timeout=60)
    for repo in (f"nbpool/profile-{name}", f"nbpool/profile-{name}-packages"):
        for image in client.images.list(name=repo):
            for tag in image.tags:
                client.images.remove(tag)
