"""A workshop's content for content profiles (tests and bench): notebooks, a CSV file, and tiny
pure-Python wheels made on the spot for its requirements.txt.

A profile build downloads its requirements with the host's pip; the tests and the bench point
that pip at a folder of these wheels (PIP_NO_INDEX, PIP_FIND_LINKS): nothing reaches a package index.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path

__all__ = ["make_wheel", "notebook", "workshop"]


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
    return json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                   "source": source} for i, source in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    })


def workshop(folder: Path, exercise: str = "print('exercise 1')", requirements: str = "nbpool-demo-greet>=1.0\n") -> Path:
    """The README's worked example: two notebooks, a CSV file and a requirements.txt (for the
    wheel ``nbpool-demo-greet``: :func:`make_wheel`)."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "Intro.ipynb").write_text(notebook("from nbpool_demo_greet import hello\nhello()"))
    (folder / "Exercises.ipynb").write_text(notebook(exercise))
    (folder / "data" / "cities.csv").write_text("city,population\nLyon,522250\nGhent,265086\n")
    (folder / "requirements.txt").write_text("# what the notebooks import\n" + requirements)
    return folder
